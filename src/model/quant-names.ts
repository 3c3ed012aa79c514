/**
 * @module Names of int8-quantized expert tensors (`<base>.qweight` + `<base>.scales`, written by
 * scripts/convert.ts) and a view of a checkpoint in which each `.qweight` answers to its original
 * name (with the original shape, also for int4's two-weights-a-byte `.qweight`), so the architecture
 * adapters find quantized experts without a naming rule of their own.
 */
import type { Checkpoint } from "./safetensors";

/** `<base>.qweight` / `<base>.scales` for a tensor name (a trailing `.weight` is dropped). */
export function quantNames(tensor: string): { qweight: string; scales: string } {
  const base = tensor.endsWith(".weight") ? tensor.slice(0, -".weight".length) : tensor;
  return { qweight: `${base}.qweight`, scales: `${base}.scales` };
}

/**
 * The checkpoint as `expertTensorRefs` should see it: a missing tensor whose `.qweight` exists
 * answers with the `.qweight`'s header (same shape, so the adapter's shape checks apply).
 */
export function quantView(ckpt: Checkpoint): Checkpoint {
  const alias = (name: string) => {
    const q = quantNames(name).qweight;
    return !ckpt.has(name) && ckpt.has(q) ? q : name;
  };
  const view = {
    source: ckpt.source,
    tensors: ckpt.tensors,
    has: (name: string) => ckpt.has(alias(name)),
    info: (name: string) => {
      const real = alias(name);
      const info = ckpt.info(real);
      if (real === name) return info;
      // int4 `.qweight` holds two weights a byte; its scales are BF16 of its rank (per-row int8's have
      // one dimension less, group-wise int8's are F32 of its rank).
      const int4 = scalesKind(ckpt, quantNames(name).scales, info.shape.length) === "int4";
      const shape = int4 ? [...info.shape.slice(0, -1), 2 * info.shape[info.shape.length - 1]] : info.shape;
      return { ...info, shape, name };
    },
  };
  // Only has/info/source are read by expertTensorRefs; reads go to the real checkpoint.
  return view as unknown as Checkpoint;
}

/** What a `.scales` tensor says of its `.qweight` (of rank `rank`): "int8" (one scale a row: one
 * dimension less), "int8-group" (F32 of the weight's rank), "int4" (BF16 of the weight's rank), or
 * "unknown" when the checkpoint has no header for it. */
export function scalesKind(ckpt: Checkpoint, name: string, rank: number): "int8" | "int8-group" | "int4" | "unknown" {
  let info: ReturnType<Checkpoint["info"]>;
  try {
    info = ckpt.info(name);
  } catch {
    return "unknown";
  }
  if (info.shape.length !== rank) return "int8";
  return info.dtype === "BF16" ? "int4" : "int8-group";
}
