/**
 * @module Sliced experts: an expert larger than an ExpertHost is split along its intermediate
 * dimension into S slices. Slice s holds rows [c0, c1) of gate and up and columns [c0, c1) of down,
 * and computes down_s(act(gate_s(x)) · up_s(x)); the expert's output is the sum of its slices'
 * (the SwiGLU nonlinearity is per intermediate unit, so the split is exact up to float rounding).
 *
 * A slice is a placement **unit**: unit u = e · S + s of a layer. The placement, the planner, the
 * load window and the fan-out see units as they saw experts (opaque ids, `Placement.nExperts` =
 * experts · S); only two places know what a unit is: `expandRouting` (before the fan-out: a token
 * routed to expert e with weight w becomes S rows, to units (e, 0..S-1), each with weight w — the
 * fixed-order combine then adds w·y₀ + w·y₁ + … = w·(y₀ + y₁ + …) up to rounding) and the
 * ExpertStore (which loads and runs one slice as an expert with a narrower intermediate size).
 *
 * Boundaries fall on multiples of SLICE_ALIGN intermediate units: the int8-group and int4 formats
 * scale groups of 32 inputs of down along that dimension, so every group of a slice is a group of
 * the whole expert and slicing changes no quantized value.
 */
import type { Routing } from "../gating/router";
import { expertPackedBytes, type ExpertDtype } from "../kernels/packing";
import { intVar, type Vars } from "../platform/env";

/** Intermediate units per alignment step of a slice boundary (the int8-group and int4 group size). */
export const SLICE_ALIGN = 32;

/** Most slices an expert of intermediate size dFf can be cut into (one alignment step each). */
export function maxSlices(dFf: number): number {
  return Math.max(1, Math.ceil(dFf / SLICE_ALIGN));
}

/** Intermediate range [c0, c1) of slice s of S (balanced over alignment steps, the last may be partial). */
export function sliceRange(dFf: number, slices: number, s: number): [number, number] {
  if (slices === 1) return [0, dFf];
  const steps = maxSlices(dFf);
  if (!Number.isInteger(slices) || slices < 1 || slices > steps)
    throw new RangeError(`an expert of intermediate size ${dFf} has 1..${steps} slices, asked for ${slices}`);
  if (!Number.isInteger(s) || s < 0 || s >= slices) throw new RangeError(`slice must be in [0, ${slices}), got ${s}`);
  const at = (k: number) => Math.min(dFf, Math.floor((k * steps) / slices) * SLICE_ALIGN);
  return [at(s), at(s + 1)];
}

/** Real bytes of the largest slice of an expert cut into S, as an ExpertStore holds it. */
export function maxSliceBytes(dtype: ExpertDtype, dModel: number, dFf: number, slices: number): number {
  let most = 0;
  for (let s = 0; s < slices; s++) {
    const [c0, c1] = sliceRange(dFf, slices, s);
    most = Math.max(most, expertPackedBytes(dtype, dModel, c1 - c0));
  }
  return most;
}

/**
 * Slices per expert: `forced` (≥ 1) when given, else the fewest whose largest slice fits
 * `budgetBytes` — 1 when the expert fits, and 1 too when no cut fits (the placement then refuses
 * the model naming the budget). `sliceBytes(S)` is the largest slice's bytes when cut into S.
 */
export function chooseSlices(
  dFf: number,
  budgetBytes: number,
  sliceBytes: (slices: number) => number,
  forced = 0,
): number {
  const most = maxSlices(dFf);
  if (forced > 0) {
    if (forced > most)
      throw new RangeError(
        `EXPERT_SLICES ${forced}: an expert of intermediate size ${dFf} has at most ${most} slices ` +
          `(boundaries on multiples of ${SLICE_ALIGN})`,
      );
    return forced;
  }
  for (let s = 1; s <= most; s++) if (sliceBytes(s) <= budgetBytes) return s;
  return 1;
}

/** EXPERT_SLICES: 0 (the default) chooses from the expert's bytes and the host budget. */
export function forcedSlices(env: Vars): number {
  return intVar(env, "EXPERT_SLICES", 0, { min: 0, max: 4096 });
}

/** Unit id of slice s of expert e. */
export function unitOf(expert: number, slice: number, slices: number): number {
  return expert * slices + slice;
}

/** The expert and slice of unit u. */
export function unitExpert(unit: number, slices: number): { expert: number; slice: number } {
  return { expert: Math.floor(unit / slices), slice: unit % slices };
}

/**
 * One layer's routing over units: each (token, slot k → expert e, weight w) becomes the S slots
 * k·S + s → unit e·S + s, each with weight w (dropped slots stay dropped). Identity when S = 1.
 */
export function expandRouting(routing: Routing, slices: number): Routing {
  if (slices === 1) return routing;
  const { n, topK, ids, weights } = routing;
  const k2 = topK * slices;
  const uIds = new Int32Array(n * k2);
  const uWeights = new Float32Array(n * k2);
  for (let i = 0; i < n * topK; i++) {
    const e = ids[i];
    for (let s = 0; s < slices; s++) {
      uIds[i * slices + s] = e < 0 ? -1 : e * slices + s;
      uWeights[i * slices + s] = weights[i];
    }
  }
  return { ...routing, topK: k2, ids: uIds, weights: uWeights };
}
