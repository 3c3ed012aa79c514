/**
 * @module packed-staged-chunk — the staged path's inner step (./packed-staged): one token's 8 panel
 * rows over STAGE_KB k-blocks of the panel copy at STAGE, written out k-block by k-block.
 *
 * Why written out: a load from a constant address inside the module's declared initial memory is
 * the one Wasm load V8 compiles without a bounds check when it has no trap handler (workerd: every
 * other load is compare + branch). A loop would make the address a variable, and AssemblyScript and
 * binaryen unroll nothing, so the constant offsets are spelled here. The SINK store after each
 * k-block keeps binaryen from re-nesting the 8 chains row by row (it may not move a load across a
 * store), which would keep 32 x vectors live and spill. Same arithmetic as packed.ts tile1x8, lane
 * by lane: a0..a7 += (row r of k-block k) · x[k], k in order.
 */
import { madd } from "./simd-math";

/** k-blocks of the panel one staged step covers (STAGE holds them: 128 bytes each). */
export const STAGE_KB: i32 = 32;
/** The panel copy, at a fixed address below 64 KiB (the declared initial memory is one page). */
export const STAGE: usize = memory.data(STAGE_KB * 128, 16);
const SINK: usize = memory.data(16, 16);

/** Continues one token's 8 row sums at s (8 f32x4, rows 0..7) over the STAGE_KB staged k-blocks,
 * the token's x at xp (STAGE_KB · 16 bytes). */
export function stagedChunk(xp: usize, s: usize): void {
  let a0 = v128.load(s), a1 = v128.load(s, 16), a2 = v128.load(s, 32), a3 = v128.load(s, 48);
  let a4 = v128.load(s, 64), a5 = v128.load(s, 80), a6 = v128.load(s, 96), a7 = v128.load(s, 112);
  let xv: v128;
  // k-block 0
  xv = v128.load(xp, 0);
  a0 = madd(v128.load(STAGE, 0), xv, a0); a1 = madd(v128.load(STAGE, 16), xv, a1);
  a2 = madd(v128.load(STAGE, 32), xv, a2); a3 = madd(v128.load(STAGE, 48), xv, a3);
  a4 = madd(v128.load(STAGE, 64), xv, a4); a5 = madd(v128.load(STAGE, 80), xv, a5);
  a6 = madd(v128.load(STAGE, 96), xv, a6); a7 = madd(v128.load(STAGE, 112), xv, a7);
  v128.store(SINK, xv);
  // k-block 1
  xv = v128.load(xp, 16);
  a0 = madd(v128.load(STAGE, 128), xv, a0); a1 = madd(v128.load(STAGE, 144), xv, a1);
  a2 = madd(v128.load(STAGE, 160), xv, a2); a3 = madd(v128.load(STAGE, 176), xv, a3);
  a4 = madd(v128.load(STAGE, 192), xv, a4); a5 = madd(v128.load(STAGE, 208), xv, a5);
  a6 = madd(v128.load(STAGE, 224), xv, a6); a7 = madd(v128.load(STAGE, 240), xv, a7);
  v128.store(SINK, xv);
  // k-block 2
  xv = v128.load(xp, 32);
  a0 = madd(v128.load(STAGE, 256), xv, a0); a1 = madd(v128.load(STAGE, 272), xv, a1);
  a2 = madd(v128.load(STAGE, 288), xv, a2); a3 = madd(v128.load(STAGE, 304), xv, a3);
  a4 = madd(v128.load(STAGE, 320), xv, a4); a5 = madd(v128.load(STAGE, 336), xv, a5);
  a6 = madd(v128.load(STAGE, 352), xv, a6); a7 = madd(v128.load(STAGE, 368), xv, a7);
  v128.store(SINK, xv);
  // k-block 3
  xv = v128.load(xp, 48);
  a0 = madd(v128.load(STAGE, 384), xv, a0); a1 = madd(v128.load(STAGE, 400), xv, a1);
  a2 = madd(v128.load(STAGE, 416), xv, a2); a3 = madd(v128.load(STAGE, 432), xv, a3);
  a4 = madd(v128.load(STAGE, 448), xv, a4); a5 = madd(v128.load(STAGE, 464), xv, a5);
  a6 = madd(v128.load(STAGE, 480), xv, a6); a7 = madd(v128.load(STAGE, 496), xv, a7);
  v128.store(SINK, xv);
  // k-block 4
  xv = v128.load(xp, 64);
  a0 = madd(v128.load(STAGE, 512), xv, a0); a1 = madd(v128.load(STAGE, 528), xv, a1);
  a2 = madd(v128.load(STAGE, 544), xv, a2); a3 = madd(v128.load(STAGE, 560), xv, a3);
  a4 = madd(v128.load(STAGE, 576), xv, a4); a5 = madd(v128.load(STAGE, 592), xv, a5);
  a6 = madd(v128.load(STAGE, 608), xv, a6); a7 = madd(v128.load(STAGE, 624), xv, a7);
  v128.store(SINK, xv);
  // k-block 5
  xv = v128.load(xp, 80);
  a0 = madd(v128.load(STAGE, 640), xv, a0); a1 = madd(v128.load(STAGE, 656), xv, a1);
  a2 = madd(v128.load(STAGE, 672), xv, a2); a3 = madd(v128.load(STAGE, 688), xv, a3);
  a4 = madd(v128.load(STAGE, 704), xv, a4); a5 = madd(v128.load(STAGE, 720), xv, a5);
  a6 = madd(v128.load(STAGE, 736), xv, a6); a7 = madd(v128.load(STAGE, 752), xv, a7);
  v128.store(SINK, xv);
  // k-block 6
  xv = v128.load(xp, 96);
  a0 = madd(v128.load(STAGE, 768), xv, a0); a1 = madd(v128.load(STAGE, 784), xv, a1);
  a2 = madd(v128.load(STAGE, 800), xv, a2); a3 = madd(v128.load(STAGE, 816), xv, a3);
  a4 = madd(v128.load(STAGE, 832), xv, a4); a5 = madd(v128.load(STAGE, 848), xv, a5);
  a6 = madd(v128.load(STAGE, 864), xv, a6); a7 = madd(v128.load(STAGE, 880), xv, a7);
  v128.store(SINK, xv);
  // k-block 7
  xv = v128.load(xp, 112);
  a0 = madd(v128.load(STAGE, 896), xv, a0); a1 = madd(v128.load(STAGE, 912), xv, a1);
  a2 = madd(v128.load(STAGE, 928), xv, a2); a3 = madd(v128.load(STAGE, 944), xv, a3);
  a4 = madd(v128.load(STAGE, 960), xv, a4); a5 = madd(v128.load(STAGE, 976), xv, a5);
  a6 = madd(v128.load(STAGE, 992), xv, a6); a7 = madd(v128.load(STAGE, 1008), xv, a7);
  v128.store(SINK, xv);
  // k-block 8
  xv = v128.load(xp, 128);
  a0 = madd(v128.load(STAGE, 1024), xv, a0); a1 = madd(v128.load(STAGE, 1040), xv, a1);
  a2 = madd(v128.load(STAGE, 1056), xv, a2); a3 = madd(v128.load(STAGE, 1072), xv, a3);
  a4 = madd(v128.load(STAGE, 1088), xv, a4); a5 = madd(v128.load(STAGE, 1104), xv, a5);
  a6 = madd(v128.load(STAGE, 1120), xv, a6); a7 = madd(v128.load(STAGE, 1136), xv, a7);
  v128.store(SINK, xv);
  // k-block 9
  xv = v128.load(xp, 144);
  a0 = madd(v128.load(STAGE, 1152), xv, a0); a1 = madd(v128.load(STAGE, 1168), xv, a1);
  a2 = madd(v128.load(STAGE, 1184), xv, a2); a3 = madd(v128.load(STAGE, 1200), xv, a3);
  a4 = madd(v128.load(STAGE, 1216), xv, a4); a5 = madd(v128.load(STAGE, 1232), xv, a5);
  a6 = madd(v128.load(STAGE, 1248), xv, a6); a7 = madd(v128.load(STAGE, 1264), xv, a7);
  v128.store(SINK, xv);
  // k-block 10
  xv = v128.load(xp, 160);
  a0 = madd(v128.load(STAGE, 1280), xv, a0); a1 = madd(v128.load(STAGE, 1296), xv, a1);
  a2 = madd(v128.load(STAGE, 1312), xv, a2); a3 = madd(v128.load(STAGE, 1328), xv, a3);
  a4 = madd(v128.load(STAGE, 1344), xv, a4); a5 = madd(v128.load(STAGE, 1360), xv, a5);
  a6 = madd(v128.load(STAGE, 1376), xv, a6); a7 = madd(v128.load(STAGE, 1392), xv, a7);
  v128.store(SINK, xv);
  // k-block 11
  xv = v128.load(xp, 176);
  a0 = madd(v128.load(STAGE, 1408), xv, a0); a1 = madd(v128.load(STAGE, 1424), xv, a1);
  a2 = madd(v128.load(STAGE, 1440), xv, a2); a3 = madd(v128.load(STAGE, 1456), xv, a3);
  a4 = madd(v128.load(STAGE, 1472), xv, a4); a5 = madd(v128.load(STAGE, 1488), xv, a5);
  a6 = madd(v128.load(STAGE, 1504), xv, a6); a7 = madd(v128.load(STAGE, 1520), xv, a7);
  v128.store(SINK, xv);
  // k-block 12
  xv = v128.load(xp, 192);
  a0 = madd(v128.load(STAGE, 1536), xv, a0); a1 = madd(v128.load(STAGE, 1552), xv, a1);
  a2 = madd(v128.load(STAGE, 1568), xv, a2); a3 = madd(v128.load(STAGE, 1584), xv, a3);
  a4 = madd(v128.load(STAGE, 1600), xv, a4); a5 = madd(v128.load(STAGE, 1616), xv, a5);
  a6 = madd(v128.load(STAGE, 1632), xv, a6); a7 = madd(v128.load(STAGE, 1648), xv, a7);
  v128.store(SINK, xv);
  // k-block 13
  xv = v128.load(xp, 208);
  a0 = madd(v128.load(STAGE, 1664), xv, a0); a1 = madd(v128.load(STAGE, 1680), xv, a1);
  a2 = madd(v128.load(STAGE, 1696), xv, a2); a3 = madd(v128.load(STAGE, 1712), xv, a3);
  a4 = madd(v128.load(STAGE, 1728), xv, a4); a5 = madd(v128.load(STAGE, 1744), xv, a5);
  a6 = madd(v128.load(STAGE, 1760), xv, a6); a7 = madd(v128.load(STAGE, 1776), xv, a7);
  v128.store(SINK, xv);
  // k-block 14
  xv = v128.load(xp, 224);
  a0 = madd(v128.load(STAGE, 1792), xv, a0); a1 = madd(v128.load(STAGE, 1808), xv, a1);
  a2 = madd(v128.load(STAGE, 1824), xv, a2); a3 = madd(v128.load(STAGE, 1840), xv, a3);
  a4 = madd(v128.load(STAGE, 1856), xv, a4); a5 = madd(v128.load(STAGE, 1872), xv, a5);
  a6 = madd(v128.load(STAGE, 1888), xv, a6); a7 = madd(v128.load(STAGE, 1904), xv, a7);
  v128.store(SINK, xv);
  // k-block 15
  xv = v128.load(xp, 240);
  a0 = madd(v128.load(STAGE, 1920), xv, a0); a1 = madd(v128.load(STAGE, 1936), xv, a1);
  a2 = madd(v128.load(STAGE, 1952), xv, a2); a3 = madd(v128.load(STAGE, 1968), xv, a3);
  a4 = madd(v128.load(STAGE, 1984), xv, a4); a5 = madd(v128.load(STAGE, 2000), xv, a5);
  a6 = madd(v128.load(STAGE, 2016), xv, a6); a7 = madd(v128.load(STAGE, 2032), xv, a7);
  v128.store(SINK, xv);
  // k-block 16
  xv = v128.load(xp, 256);
  a0 = madd(v128.load(STAGE, 2048), xv, a0); a1 = madd(v128.load(STAGE, 2064), xv, a1);
  a2 = madd(v128.load(STAGE, 2080), xv, a2); a3 = madd(v128.load(STAGE, 2096), xv, a3);
  a4 = madd(v128.load(STAGE, 2112), xv, a4); a5 = madd(v128.load(STAGE, 2128), xv, a5);
  a6 = madd(v128.load(STAGE, 2144), xv, a6); a7 = madd(v128.load(STAGE, 2160), xv, a7);
  v128.store(SINK, xv);
  // k-block 17
  xv = v128.load(xp, 272);
  a0 = madd(v128.load(STAGE, 2176), xv, a0); a1 = madd(v128.load(STAGE, 2192), xv, a1);
  a2 = madd(v128.load(STAGE, 2208), xv, a2); a3 = madd(v128.load(STAGE, 2224), xv, a3);
  a4 = madd(v128.load(STAGE, 2240), xv, a4); a5 = madd(v128.load(STAGE, 2256), xv, a5);
  a6 = madd(v128.load(STAGE, 2272), xv, a6); a7 = madd(v128.load(STAGE, 2288), xv, a7);
  v128.store(SINK, xv);
  // k-block 18
  xv = v128.load(xp, 288);
  a0 = madd(v128.load(STAGE, 2304), xv, a0); a1 = madd(v128.load(STAGE, 2320), xv, a1);
  a2 = madd(v128.load(STAGE, 2336), xv, a2); a3 = madd(v128.load(STAGE, 2352), xv, a3);
  a4 = madd(v128.load(STAGE, 2368), xv, a4); a5 = madd(v128.load(STAGE, 2384), xv, a5);
  a6 = madd(v128.load(STAGE, 2400), xv, a6); a7 = madd(v128.load(STAGE, 2416), xv, a7);
  v128.store(SINK, xv);
  // k-block 19
  xv = v128.load(xp, 304);
  a0 = madd(v128.load(STAGE, 2432), xv, a0); a1 = madd(v128.load(STAGE, 2448), xv, a1);
  a2 = madd(v128.load(STAGE, 2464), xv, a2); a3 = madd(v128.load(STAGE, 2480), xv, a3);
  a4 = madd(v128.load(STAGE, 2496), xv, a4); a5 = madd(v128.load(STAGE, 2512), xv, a5);
  a6 = madd(v128.load(STAGE, 2528), xv, a6); a7 = madd(v128.load(STAGE, 2544), xv, a7);
  v128.store(SINK, xv);
  // k-block 20
  xv = v128.load(xp, 320);
  a0 = madd(v128.load(STAGE, 2560), xv, a0); a1 = madd(v128.load(STAGE, 2576), xv, a1);
  a2 = madd(v128.load(STAGE, 2592), xv, a2); a3 = madd(v128.load(STAGE, 2608), xv, a3);
  a4 = madd(v128.load(STAGE, 2624), xv, a4); a5 = madd(v128.load(STAGE, 2640), xv, a5);
  a6 = madd(v128.load(STAGE, 2656), xv, a6); a7 = madd(v128.load(STAGE, 2672), xv, a7);
  v128.store(SINK, xv);
  // k-block 21
  xv = v128.load(xp, 336);
  a0 = madd(v128.load(STAGE, 2688), xv, a0); a1 = madd(v128.load(STAGE, 2704), xv, a1);
  a2 = madd(v128.load(STAGE, 2720), xv, a2); a3 = madd(v128.load(STAGE, 2736), xv, a3);
  a4 = madd(v128.load(STAGE, 2752), xv, a4); a5 = madd(v128.load(STAGE, 2768), xv, a5);
  a6 = madd(v128.load(STAGE, 2784), xv, a6); a7 = madd(v128.load(STAGE, 2800), xv, a7);
  v128.store(SINK, xv);
  // k-block 22
  xv = v128.load(xp, 352);
  a0 = madd(v128.load(STAGE, 2816), xv, a0); a1 = madd(v128.load(STAGE, 2832), xv, a1);
  a2 = madd(v128.load(STAGE, 2848), xv, a2); a3 = madd(v128.load(STAGE, 2864), xv, a3);
  a4 = madd(v128.load(STAGE, 2880), xv, a4); a5 = madd(v128.load(STAGE, 2896), xv, a5);
  a6 = madd(v128.load(STAGE, 2912), xv, a6); a7 = madd(v128.load(STAGE, 2928), xv, a7);
  v128.store(SINK, xv);
  // k-block 23
  xv = v128.load(xp, 368);
  a0 = madd(v128.load(STAGE, 2944), xv, a0); a1 = madd(v128.load(STAGE, 2960), xv, a1);
  a2 = madd(v128.load(STAGE, 2976), xv, a2); a3 = madd(v128.load(STAGE, 2992), xv, a3);
  a4 = madd(v128.load(STAGE, 3008), xv, a4); a5 = madd(v128.load(STAGE, 3024), xv, a5);
  a6 = madd(v128.load(STAGE, 3040), xv, a6); a7 = madd(v128.load(STAGE, 3056), xv, a7);
  v128.store(SINK, xv);
  // k-block 24
  xv = v128.load(xp, 384);
  a0 = madd(v128.load(STAGE, 3072), xv, a0); a1 = madd(v128.load(STAGE, 3088), xv, a1);
  a2 = madd(v128.load(STAGE, 3104), xv, a2); a3 = madd(v128.load(STAGE, 3120), xv, a3);
  a4 = madd(v128.load(STAGE, 3136), xv, a4); a5 = madd(v128.load(STAGE, 3152), xv, a5);
  a6 = madd(v128.load(STAGE, 3168), xv, a6); a7 = madd(v128.load(STAGE, 3184), xv, a7);
  v128.store(SINK, xv);
  // k-block 25
  xv = v128.load(xp, 400);
  a0 = madd(v128.load(STAGE, 3200), xv, a0); a1 = madd(v128.load(STAGE, 3216), xv, a1);
  a2 = madd(v128.load(STAGE, 3232), xv, a2); a3 = madd(v128.load(STAGE, 3248), xv, a3);
  a4 = madd(v128.load(STAGE, 3264), xv, a4); a5 = madd(v128.load(STAGE, 3280), xv, a5);
  a6 = madd(v128.load(STAGE, 3296), xv, a6); a7 = madd(v128.load(STAGE, 3312), xv, a7);
  v128.store(SINK, xv);
  // k-block 26
  xv = v128.load(xp, 416);
  a0 = madd(v128.load(STAGE, 3328), xv, a0); a1 = madd(v128.load(STAGE, 3344), xv, a1);
  a2 = madd(v128.load(STAGE, 3360), xv, a2); a3 = madd(v128.load(STAGE, 3376), xv, a3);
  a4 = madd(v128.load(STAGE, 3392), xv, a4); a5 = madd(v128.load(STAGE, 3408), xv, a5);
  a6 = madd(v128.load(STAGE, 3424), xv, a6); a7 = madd(v128.load(STAGE, 3440), xv, a7);
  v128.store(SINK, xv);
  // k-block 27
  xv = v128.load(xp, 432);
  a0 = madd(v128.load(STAGE, 3456), xv, a0); a1 = madd(v128.load(STAGE, 3472), xv, a1);
  a2 = madd(v128.load(STAGE, 3488), xv, a2); a3 = madd(v128.load(STAGE, 3504), xv, a3);
  a4 = madd(v128.load(STAGE, 3520), xv, a4); a5 = madd(v128.load(STAGE, 3536), xv, a5);
  a6 = madd(v128.load(STAGE, 3552), xv, a6); a7 = madd(v128.load(STAGE, 3568), xv, a7);
  v128.store(SINK, xv);
  // k-block 28
  xv = v128.load(xp, 448);
  a0 = madd(v128.load(STAGE, 3584), xv, a0); a1 = madd(v128.load(STAGE, 3600), xv, a1);
  a2 = madd(v128.load(STAGE, 3616), xv, a2); a3 = madd(v128.load(STAGE, 3632), xv, a3);
  a4 = madd(v128.load(STAGE, 3648), xv, a4); a5 = madd(v128.load(STAGE, 3664), xv, a5);
  a6 = madd(v128.load(STAGE, 3680), xv, a6); a7 = madd(v128.load(STAGE, 3696), xv, a7);
  v128.store(SINK, xv);
  // k-block 29
  xv = v128.load(xp, 464);
  a0 = madd(v128.load(STAGE, 3712), xv, a0); a1 = madd(v128.load(STAGE, 3728), xv, a1);
  a2 = madd(v128.load(STAGE, 3744), xv, a2); a3 = madd(v128.load(STAGE, 3760), xv, a3);
  a4 = madd(v128.load(STAGE, 3776), xv, a4); a5 = madd(v128.load(STAGE, 3792), xv, a5);
  a6 = madd(v128.load(STAGE, 3808), xv, a6); a7 = madd(v128.load(STAGE, 3824), xv, a7);
  v128.store(SINK, xv);
  // k-block 30
  xv = v128.load(xp, 480);
  a0 = madd(v128.load(STAGE, 3840), xv, a0); a1 = madd(v128.load(STAGE, 3856), xv, a1);
  a2 = madd(v128.load(STAGE, 3872), xv, a2); a3 = madd(v128.load(STAGE, 3888), xv, a3);
  a4 = madd(v128.load(STAGE, 3904), xv, a4); a5 = madd(v128.load(STAGE, 3920), xv, a5);
  a6 = madd(v128.load(STAGE, 3936), xv, a6); a7 = madd(v128.load(STAGE, 3952), xv, a7);
  v128.store(SINK, xv);
  // k-block 31
  xv = v128.load(xp, 496);
  a0 = madd(v128.load(STAGE, 3968), xv, a0); a1 = madd(v128.load(STAGE, 3984), xv, a1);
  a2 = madd(v128.load(STAGE, 4000), xv, a2); a3 = madd(v128.load(STAGE, 4016), xv, a3);
  a4 = madd(v128.load(STAGE, 4032), xv, a4); a5 = madd(v128.load(STAGE, 4048), xv, a5);
  a6 = madd(v128.load(STAGE, 4064), xv, a6); a7 = madd(v128.load(STAGE, 4080), xv, a7);
  v128.store(SINK, xv);
  v128.store(s, a0);
  v128.store(s, a1, 16);
  v128.store(s, a2, 32);
  v128.store(s, a3, 48);
  v128.store(s, a4, 64);
  v128.store(s, a5, 80);
  v128.store(s, a6, 96);
  v128.store(s, a7, 112);
}
