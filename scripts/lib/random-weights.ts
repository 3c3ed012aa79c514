/**
 * @module Deterministic normal-ish numbers without transcendental functions, so every machine and
 * JS engine produces the same bytes: xoshiro128** (Blackman & Vigna) seeded by splitmix32, and an
 * Irwin–Hall sum of four 16-bit uniforms (mean 0, std 1, bounded ±√12). Each tensor has its own
 * stream (FNV-1a of its name mixed with the model seed), drawn in as many chunks as the caller
 * likes: the bytes do not depend on the chunking.
 */

function splitmix32(state: number): () => number {
  let s = state >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** FNV-1a of the tensor name, mixed with the model seed: each tensor has its own stream. */
function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

const IRWIN_HALL_MEAN = 2 * 65535;
const IRWIN_HALL_STD = Math.sqrt((4 * (65536 * 65536 - 1)) / 12);

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A stream of `std · N(0,1)`-ish values named `name`; each call fills `out` with the next values. */
export function normalStream(seed: number, name: string, std: number): (out: Float32Array) => Float32Array {
  const init = splitmix32(tensorSeed(seed, name));
  let a = init(),
    b = init(),
    c = init(),
    d = init();
  const scale = std / IRWIN_HALL_STD;
  return (out) => {
    for (let i = 0; i < out.length; i++) {
      // xoshiro128**: two outputs per element, four 16-bit halves.
      let sum = 0;
      for (let j = 0; j < 2; j++) {
        const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
        const t = b << 9;
        c ^= a;
        d ^= b;
        b ^= c;
        a ^= d;
        c ^= t;
        d = rotl(d, 11);
        sum += (r & 0xffff) + (r >>> 16);
      }
      out[i] = (sum - IRWIN_HALL_MEAN) * scale;
    }
    return out;
  };
}

/** `out[i] = std · N(0,1)-ish`, from the start of the stream named `name`. */
export function fillNormal(out: Float32Array, seed: number, name: string, std: number): Float32Array {
  return normalStream(seed, name, std)(out);
}
