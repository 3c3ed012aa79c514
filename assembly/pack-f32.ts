/**
 * @module pack-f32 — writes row-major f32 rows into the panel layout of assembly/packed.ts, at
 * load time (src/kernels/pack-expert.ts packExpertF32Into). A pure permutation: 4 columns (16 bytes)
 * move as one, bit for bit (integer lanes, so no NaN is ever canonicalised).
 *
 * Panel layout: panel[kb][r][c] = w[8p + r][4kb + c], kBlocks = ceil(cols / 4) k-blocks of 128
 * bytes each. Source row j (of the rows j0 .. j0 + nRows - 1) lands in padded row
 * v = 8·(j / group) + j % group + rowOffset: group 8 and rowOffset 0 for a plain matrix (v = j),
 * group 4 and rowOffset 0 / 4 for the w1 / w3 halves of the fused gate/up panels. Each row's last
 * k-block is written whole (zeros past cols), and src = 0 writes zero rows (the padding rows), so
 * a blob is written exactly once and needs no clearing first: on memory the Wasm heap has just
 * grown, a separate clearing pass costs the page faults and a second write of every byte.
 */

/** dst panels (kBlocks = ceil(cols / 4)) ← src rows [nRows, cols] (row-major, 4-byte aligned), or zeros for src = 0. */
export function packRowsF32(
  dst: usize,
  src: usize,
  j0: i32,
  nRows: i32,
  cols: i32,
  group: i32,
  rowOffset: i32,
): void {
  const kBlocks = (cols + 3) >> 2;
  const full = cols >> 2;
  const rest = cols & 3;
  const panelBytes = <usize>kBlocks << 7; // 8 rows × 4 f32 per k-block
  for (let i = 0; i < nRows; i++) {
    const j = j0 + i;
    const v = (j / group) * 8 + (j % group) + rowOffset;
    let d = dst + <usize>(v >> 3) * panelBytes + (<usize>(v & 7) << 4);
    if (src == 0) {
      for (let b = 0; b < kBlocks; b++) {
        store<u64>(d, 0);
        store<u64>(d, 0, 8);
        d += 128;
      }
      continue;
    }
    let s = src + ((<usize>i * <usize>cols) << 2);
    if (ASC_FEATURE_SIMD) {
      for (let b = 0; b < full; b++) {
        v128.store(d, v128.load(s));
        d += 128;
        s += 16;
      }
    } else {
      for (let b = 0; b < full; b++) {
        store<u64>(d, load<u64>(s));
        store<u64>(d, load<u64>(s, 8), 8);
        d += 128;
        s += 16;
      }
    }
    if (rest != 0) {
      for (let c = 0; c < 4; c++) {
        let bits: u32 = 0;
        if (c < rest) bits = load<u32>(s + (<usize>c << 2));
        store<u32>(d + (<usize>c << 2), bits);
      }
    }
  }
}
