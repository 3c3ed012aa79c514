/**
 * @module reference.test — hand-worked cases for the oracle itself, so the contract suite checks the
 * kernels against the intended semantics (HF layouts), not just against each other.
 */
import { describe, expect, it } from "vitest";
import {
  attentionRef,
  expertFfnRef,
  matmulRef,
  rmsnormRef,
  ropeRef,
  siluMulRef,
  softmaxRef,
} from "../../../src/kernels/reference";

const f32 = (...v: number[]) => new Float32Array(v);

describe("reference kernels", () => {
  it("matmulRef uses the nn.Linear layout w[dOut, dIn]", () => {
    const out = new Float32Array(6);
    // x [2, 2], w [3, 2]
    matmulRef(out, f32(1, 2, 3, 4), f32(1, 0, 0, 1, 1, 1), 2, 2, 3);
    expect(Array.from(out)).toEqual([1, 2, 3, 3, 4, 7]);
  });

  it("rmsnormRef normalises by the root mean square, then scales", () => {
    const out = new Float32Array(2);
    rmsnormRef(out, f32(3, 4), f32(1, 2), 1, 2, 0);
    const rms = Math.sqrt(12.5);
    expect(out[0]).toBeCloseTo(3 / rms, 6);
    expect(out[1]).toBeCloseTo(8 / rms, 6);
  });

  it("ropeRef pairs (i, i + rotDim/2) for rotate_half and (2i, 2i + 1) when interleaved", () => {
    // One head of 4, angle table [90°, 0°]: pair 0 turns a quarter, pair 1 stays.
    const cos = f32(0, 1);
    const sin = f32(1, 0);
    const half = f32(1, 2, 3, 4); // pairs (1, 3) and (2, 4)
    ropeRef(half, cos, sin, 1, 1, 4, 0, 4, false);
    expect(Array.from(half)).toEqual([-3, 2, 1, 4]);
    const inter = f32(1, 2, 3, 4); // pairs (1, 2) and (3, 4)
    ropeRef(inter, cos, sin, 1, 1, 4, 0, 4, true);
    expect(Array.from(inter)).toEqual([-2, 1, 3, 4]);
    // Offset slice inside a wider head: only values [1, 3) move.
    const part = f32(9, 1, 2, 9);
    ropeRef(part, f32(0), f32(1), 1, 1, 4, 1, 2, false);
    expect(Array.from(part)).toEqual([9, -2, 1, 9]);
  });

  it("softmaxRef normalises each row", () => {
    const x = f32(0, Math.log(3), 5, 5);
    softmaxRef(x, 2, 2);
    expect(Array.from(x).map((v) => +v.toFixed(6))).toEqual([0.25, 0.75, 0.5, 0.5]);
  });

  it("siluMulRef gates by z·sigmoid(z)", () => {
    const out = new Float32Array(2);
    siluMulRef(out, f32(0, 2), f32(5, 3), 2);
    expect(out[0]).toBe(0);
    expect(out[1]).toBeCloseTo((2 / (1 + Math.exp(-2))) * 3, 6);
  });

  it("expertFfnRef with identity weights is silu(x)·x", () => {
    const eye = f32(1, 0, 0, 1);
    const out = new Float32Array(2);
    expertFfnRef(out, f32(1, -2), eye, eye, eye, 1, 2, 2, new Float32Array(4));
    expect(out[0]).toBeCloseTo(1 / (1 + Math.exp(-1)), 6);
    expect(out[1]).toBeCloseTo((-2 / (1 + Math.exp(2))) * -2, 6);
  });

  it("attentionRef maps query heads to kv heads like repeat_kv and is causal", () => {
    // 4 query heads over 2 kv heads, headDim 1: heads 0–1 read kv head 0, heads 2–3 kv head 1.
    const v = f32(10, 20, 30, 40); // [kvLen 2, nKvHeads 2, 1]
    const k = f32(0, 0, 0, 0);
    const q = f32(1, 1, 1, 1, 1, 1, 1, 1); // [nQ 2, 4, 1]
    const out = new Float32Array(8);
    attentionRef(out, q, k, v, 2, 0, 4, 2, 1, 1, 1, new Float32Array(2));
    // Query 0 sees position 0 only; query 1 averages positions 0 and 1 (equal scores).
    expect(Array.from(out)).toEqual([10, 10, 20, 20, 20, 20, 30, 30]);
  });
});
