/**
 * @module bench-onnx — the onnxruntime peers of bench:kernels: one SwiGLU expert as an ONNX graph
 * (built here with a minimal protobuf writer, no extra dependency), run by onnxruntime-node
 * (native, MLAS kernels) and onnxruntime-web (its wasm backend, SIMD, one thread).
 *
 * f32 graph: g = x·W1ᵀ, u = x·W3ᵀ, h = g·sigmoid(g)·u, y = h·W2ᵀ (MatMul, Sigmoid, Mul).
 * int8 graph: the same with each MatMul a com.microsoft DynamicQuantizeMatMul — what
 * onnxruntime's quantize_dynamic produces after graph fusion: activations quantized per call to
 * uint8 inside the op, int8 weights with per-output-channel scales (the weights and scales are
 * the ones our int8 kernels use). int4 graph: each MatMul a com.microsoft MatMulNBits (4-bit
 * blocks of 32 with one f32 scale, zero point 8: the weights and scales our int4 kernel uses),
 * accuracy_level 4 (activations quantized to int8 inside the op: MLAS's fastest 4-bit path).
 * Peers run with one intra-op thread, like a Wasm isolate.
 */
import type { Q8Expert } from "../../src/kernels/packing";
import { bf16ToF32 } from "../../src/kernels/dense-format";
import type { Q4gExpert, Q4gMatrix } from "../../src/kernels/q4g-format";

// ---------------------------------------------------------------------------------------------
// Protobuf (proto3 wire format): just enough of onnx.proto to write a model.

class Pb {
  readonly parts: Uint8Array[] = [];
  #len = 0;
  get length(): number {
    return this.#len;
  }
  #push(b: Uint8Array): void {
    this.parts.push(b);
    this.#len += b.length;
  }
  #varint(v: number | bigint): void {
    let x = BigInt(v);
    if (x < 0n) x += 1n << 64n;
    const out: number[] = [];
    while (x >= 0x80n) {
      out.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    out.push(Number(x));
    this.#push(Uint8Array.from(out));
  }
  int(field: number, v: number): this {
    this.#varint((field << 3) | 0);
    this.#varint(v);
    return this;
  }
  bytes(field: number, b: Uint8Array): this {
    this.#varint((field << 3) | 2);
    this.#varint(b.length);
    this.#push(b);
    return this;
  }
  str(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  msg(field: number, m: Pb): this {
    return this.bytes(field, m.finish());
  }
  finish(): Uint8Array {
    const out = new Uint8Array(this.#len);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

const FLOAT = 1;
const INT8 = 3;

function tensor(name: string, dims: number[], dataType: number, raw: Uint8Array): Pb {
  const t = new Pb();
  for (const d of dims) t.int(1, d);
  return t.int(2, dataType).str(8, name).bytes(9, raw);
}

function valueInfo(name: string, dims: (number | string)[]): Pb {
  const shape = new Pb();
  for (const d of dims) shape.msg(1, typeof d === "number" ? new Pb().int(1, d) : new Pb().str(2, d));
  const tensorType = new Pb().int(1, FLOAT).msg(2, shape);
  return new Pb().str(1, name).msg(2, new Pb().msg(1, tensorType));
}

function node(op: string, inputs: string[], outputs: string[], domain = "", ints: Record<string, number> = {}): Pb {
  const n = new Pb();
  for (const i of inputs) n.str(1, i);
  for (const o of outputs) n.str(2, o);
  n.str(3, `${op}_${outputs[0]}`).str(4, op);
  // AttributeProto: name = 1, i = 3, type = 20 (INT = 2)
  for (const [name, v] of Object.entries(ints)) n.msg(5, new Pb().str(1, name).int(3, v).int(20, 2));
  if (domain) n.str(7, domain);
  return n;
}

function model(nodes: Pb[], inits: Pb[], dModel: number): Uint8Array {
  const g = new Pb();
  for (const n of nodes) g.msg(1, n);
  g.str(2, "expert");
  for (const i of inits) g.msg(5, i);
  g.msg(11, valueInfo("x", ["n", dModel]));
  g.msg(12, valueInfo("y", ["n", dModel]));
  const m = new Pb().int(1, 8).str(2, "edge-moe bench").msg(7, g);
  m.msg(8, new Pb().str(1, "").int(2, 17));
  m.msg(8, new Pb().str(1, "com.microsoft").int(2, 1));
  return m.finish();
}

/** w [rows, cols] → its transpose [cols, rows] as little-endian bytes of `bytesPer` each. */
function transposed<T extends Float32Array | Int8Array>(w: T, rows: number, cols: number): Uint8Array {
  const out = new (w.constructor as new (n: number) => T)(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

const bytesOf = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The f32 expert as an ONNX model: x [n, dModel] → y [n, dModel]. */
export function expertModelF32(
  w1: Float32Array,
  w3: Float32Array,
  w2: Float32Array,
  dModel: number,
  dFf: number,
): Uint8Array {
  return model(
    [
      node("MatMul", ["x", "w1t"], ["g"]),
      node("MatMul", ["x", "w3t"], ["u"]),
      node("Sigmoid", ["g"], ["sg"]),
      node("Mul", ["g", "sg"], ["a"]),
      node("Mul", ["a", "u"], ["h"]),
      node("MatMul", ["h", "w2t"], ["y"]),
    ],
    [
      tensor("w1t", [dModel, dFf], FLOAT, transposed(w1, dFf, dModel)),
      tensor("w3t", [dModel, dFf], FLOAT, transposed(w3, dFf, dModel)),
      tensor("w2t", [dFf, dModel], FLOAT, transposed(w2, dModel, dFf)),
    ],
    dModel,
  );
}

/** The int8 expert (the weights our q8 kernels use) with DynamicQuantizeMatMul. */
export function expertModelQ8(q: Q8Expert, dModel: number, dFf: number): Uint8Array {
  return model(
    [
      node("DynamicQuantizeMatMul", ["x", "w1q", "s1"], ["g"], "com.microsoft"),
      node("DynamicQuantizeMatMul", ["x", "w3q", "s3"], ["u"], "com.microsoft"),
      node("Sigmoid", ["g"], ["sg"]),
      node("Mul", ["g", "sg"], ["a"]),
      node("Mul", ["a", "u"], ["h"]),
      node("DynamicQuantizeMatMul", ["h", "w2q", "s2"], ["y"], "com.microsoft"),
    ],
    [
      tensor("w1q", [dModel, dFf], INT8, transposed(q.w1.q, dFf, dModel)),
      tensor("w3q", [dModel, dFf], INT8, transposed(q.w3.q, dFf, dModel)),
      tensor("w2q", [dFf, dModel], INT8, transposed(q.w2.q, dModel, dFf)),
      tensor("s1", [dFf], FLOAT, bytesOf(q.w1.scales)),
      tensor("s3", [dFf], FLOAT, bytesOf(q.w3.scales)),
      tensor("s2", [dModel], FLOAT, bytesOf(q.w2.scales)),
    ],
    dModel,
  );
}

const UINT8 = 2;

/** A 4-bit group matrix [N, K] as MatMulNBits wants it: B [N, K/32, 16] u8 (input 2i in the low
 * nibble of byte i, 2i+1 in the high one, stored q + 8) and scales [N · K/32] f32. */
function nbits(name: string, m: Q4gMatrix): Pb[] {
  const { rows: N, cols: K, group } = m;
  const blocks = K / group;
  const b = new Uint8Array(N * blocks * (group / 2));
  for (let j = 0; j < N; j++) {
    for (let k = 0; k < K; k += 2) b[(j * K + k) / 2] = (m.q[j * K + k] + 8) | ((m.q[j * K + k + 1] + 8) << 4);
  }
  const scales = Float32Array.from(m.scales, bf16ToF32);
  return [
    tensor(`${name}q`, [N, blocks, group / 2], UINT8, b),
    tensor(`${name}s`, [N * blocks], FLOAT, bytesOf(scales)),
  ];
}

/** The int4 expert (the weights our int4 kernel uses; K a multiple of the group) with MatMulNBits. */
export function expertModelQ4(q: Q4gExpert, dModel: number, dFf: number): Uint8Array {
  const at = (K: number, N: number) => ({ K, N, bits: 4, block_size: q.w1.group, accuracy_level: 4 });
  return model(
    [
      node("MatMulNBits", ["x", "w1q", "w1s"], ["g"], "com.microsoft", at(dModel, dFf)),
      node("MatMulNBits", ["x", "w3q", "w3s"], ["u"], "com.microsoft", at(dModel, dFf)),
      node("Sigmoid", ["g"], ["sg"]),
      node("Mul", ["g", "sg"], ["a"]),
      node("Mul", ["a", "u"], ["h"]),
      node("MatMulNBits", ["h", "w2q", "w2s"], ["y"], "com.microsoft", at(dFf, dModel)),
    ],
    [...nbits("w1", q.w1), ...nbits("w3", q.w3), ...nbits("w2", q.w2)],
    dModel,
  );
}

/** The slice of the onnxruntime JS API both packages share. */
export interface OrtLike {
  InferenceSession: {
    create(model: Uint8Array, opts?: Record<string, unknown>): Promise<OrtSession>;
  };
  Tensor: new (type: "float32", data: Float32Array, dims: number[]) => unknown;
  env: { wasm?: { numThreads?: number; simd?: boolean }; versions?: Record<string, string> };
}

export interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, { data: unknown }>>;
  release?(): Promise<void>;
}

export type OrtPeer = "onnxruntime-node" | "onnxruntime-web";

/** Loads a peer, or returns why it cannot be had here (reported as skipped, never dropped). */
export async function loadOrt(peer: OrtPeer): Promise<{ ort: OrtLike; version: string } | { skipped: string }> {
  try {
    const mod = (await import(peer)) as unknown as OrtLike & { default?: OrtLike };
    const ort = (mod.InferenceSession ? mod : mod.default) as OrtLike;
    if (peer === "onnxruntime-web" && ort.env.wasm) {
      ort.env.wasm.numThreads = 1; // one thread, as in a Workers isolate
      ort.env.wasm.simd = true;
    }
    const versions = ort.env.versions ?? {};
    return { ort, version: versions.node ?? versions.web ?? versions.common ?? "?" };
  } catch (err) {
    return {
      skipped: `${peer} cannot be loaded here: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`,
    };
  }
}

/** A session per model, single-threaded, all graph optimizations on. */
export async function ortSession(ort: OrtLike, peer: OrtPeer, modelBytes: Uint8Array): Promise<OrtSession> {
  const opts: Record<string, unknown> = { graphOptimizationLevel: "all", executionMode: "sequential" };
  if (peer === "onnxruntime-node")
    Object.assign(opts, { intraOpNumThreads: 1, interOpNumThreads: 1, executionProviders: ["cpu"] });
  else opts.executionProviders = ["wasm"];
  return ort.InferenceSession.create(modelBytes, opts);
}
