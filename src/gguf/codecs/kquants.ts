/**
 * The K-quant encoders (Q2_K … Q6_K) as llama.cpp computes them, so that moe writes the bytes llama.cpp's own
 * quantizers write (ggml/src/ggml-quants.c; each codec module (q2_k.ts … q6_k.ts) calls its encoder here;
 * test/gguf/codec-reference.test.ts compares with bytes and errors of that
 * C code, compiled by scripts/ggml_ref/):
 *   without importance  quantize_row_<t>_ref: per sub-block scale (and min) searches make_qx_quants,
 *                       make_q3_quants, make_qkx2_quants; the block scale from the largest sub-block scale
 *   with importance     quantize_row_<t>_impl (llama-quantize --imatrix): searches weighted by
 *                       importance·√(σ² + x²) (make_qkx3_quants), the sub-block scales themselves quantized by a
 *                       weighted search (make_qp_quants, make_qx_quants); Q6_K weights by the importance alone
 * Arithmetic is float32 as in the C code: every result goes through f (Math.fround), sums accumulate in the C order.
 * Searches compare errors; done in float64 they decide near-ties differently, and the bytes differ.
 * The search helpers are numeric kernels transcribed from ggml; they keep its structure (and length).
 */
import { clamp, getF16, packScalesK4, putF16, scaleMinK4 } from './common';

export type KType = 'Q2_K' | 'Q3_K' | 'Q4_K' | 'Q5_K' | 'Q6_K';

const f = Math.fround;
const math = Math;
const QK_K = 256;
const GROUP_MAX_EPS = f(1e-15);
const F01 = f(0.1);
/** Scratch codes of makeQkx's trial scales (sub-blocks of at most 32); module scope: no allocation per call. */
const AUX = new Uint8Array(32);

/** nearest_int as ggml computes it: adding 1.5·2²³ in float32 rounds half to even (|x| < 2²², as ggml asserts). */
const nearestInt = (x: number) => f(x + 12582912) - 12582912;
type Vec = Float32Array;

/** make_qx_quants with rmse_type 1: symmetric, L[i] = l + nmax in 0..2·nmax−1; weights qw, else x². */
function makeQx(
  n: number,
  nmax: number,
  x: Vec,
  xo: number,
  L: Int8Array,
  lo: number,
  qw: Vec | null,
  qo: number,
): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = math.abs(x[xo + i]);
    if (ax > amax) {
      amax = ax;
      max = x[xo + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    return 0;
  }
  const sums = (iscale: number, store: boolean): [number, number] => {
    let sumlx = 0;
    let suml2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i];
      const l = clamp(nearestInt(f(iscale * xi)), -nmax, nmax - 1);
      if (store) L[lo + i] = l + nmax;
      const w = qw ? qw[qo + i] : f(xi * xi);
      sumlx = f(sumlx + f(f(w * xi) * l));
      suml2 = f(suml2 + f(f(w * l) * l));
    }
    return [sumlx, suml2];
  };
  let [sumlx, suml2] = sums(f(-nmax / max), true);
  let scale = suml2 ? f(sumlx / suml2) : 0;
  let best = f(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    const iscale = f(-f(nmax + f(F01 * is)) / max);
    [sumlx, suml2] = sums(iscale, false);
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      sums(iscale, true);
      scale = f(sumlx / suml2);
      best = f(scale * sumlx);
    }
  }
  return scale;
}

/** make_q3_quants with do_rmse: a start from the largest value, then up to 5 passes moving single values. */
function makeQ3(n: number, nmax: number, x: Vec, xo: number, L: Int8Array, lo: number): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = math.abs(x[xo + i]);
    if (ax > amax) {
      amax = ax;
      max = x[xo + i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    return 0;
  }
  const iscale = f(-nmax / max);
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i];
    const l = clamp(nearestInt(f(iscale * xi)), -nmax, nmax - 1);
    L[lo + i] = l;
    const w = f(xi * xi);
    sumlx = f(sumlx + f(f(w * xi) * l));
    suml2 = f(suml2 + f(f(w * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i];
      const w = f(xi * xi);
      const li = L[lo + i];
      let slx = f(sumlx - f(f(w * xi) * li));
      if (slx > 0) {
        let sl2 = f(suml2 - f(f(w * li) * li));
        const nl = clamp(nearestInt(f(f(xi * sl2) / slx)), -nmax, nmax - 1);
        if (nl !== li) {
          slx = f(slx + f(f(w * xi) * nl));
          sl2 = f(sl2 + f(f(w * nl) * nl));
          if (sl2 > 0 && f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[lo + i] = nl;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (let i = 0; i < n; i++) L[lo + i] += nmax;
  return suml2 > 0 ? f(sumlx / suml2) : 0;
}

/**
 * make_qkx2_quants (and make_qkx3_quants, the same search when given weights): scale and min, L in 0..nmax, trying
 * nstep+1 inverse scales (rmin + rdelta·is + nmax)/(max − min), least squares for each; returns [scale, −min].
 */
function makeQkx(
  n: number,
  nmax: number,
  x: Vec,
  xo: number,
  w: Vec,
  L: Uint8Array,
  lo: number,
  rmin: number,
  rdelta: number,
  nstep: number,
  mad: boolean,
): [number, number] {
  let min = x[xo];
  let max = x[xo];
  let sumW = w[0];
  let sumX = f(sumW * x[xo]);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    sumW = f(sumW + w[i]);
    sumX = f(sumX + f(w[i] * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    return [0, -min];
  }
  let iscale = f(nmax / f(max - min));
  let scale = f(1 / iscale);
  let best = 0;
  for (let i = 0; i < n; i++) {
    const l = clamp(nearestInt(f(iscale * f(x[xo + i] - min))), 0, nmax);
    L[lo + i] = l;
    let diff = f(f(f(scale * l) + min) - x[xo + i]);
    diff = mad ? math.abs(diff) : f(diff * diff);
    best = f(best + f(w[i] * diff));
  }
  if (nstep < 1) return [scale, -min];
  const aux = AUX;
  for (let is = 0; is <= nstep; is++) {
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min)); // min as improved so far, as in C
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearestInt(f(iscale * f(x[xo + i] - min))), 0, nmax);
      aux[i] = l;
      const wl = f(w[i] * l);
      sumL = f(sumL + wl);
      sumL2 = f(sumL2 + f(wl * l));
      sumXL = f(sumXL + f(wl * x[xo + i]));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (D > 0) {
      let s = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
      let m = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
      if (m > 0) {
        m = 0;
        s = f(sumXL / sumL2);
      }
      let e = 0;
      for (let i = 0; i < n; i++) {
        let diff = f(f(f(s * aux[i]) + m) - x[xo + i]);
        diff = mad ? math.abs(diff) : f(diff * diff);
        e = f(e + f(w[i] * diff));
      }
      if (e < best) {
        for (let i = 0; i < n; i++) L[lo + i] = aux[i];
        best = e;
        scale = s;
        min = m;
      }
    }
  }
  return [scale, -min];
}

/** make_qp_quants: non-negative values x (sub-block scales or mins) on 0..nmax, weighted by qw; returns the scale. */
function makeQp(n: number, nmax: number, x: Vec, L: Uint8Array, qw: Vec): number {
  let max = 0;
  for (let i = 0; i < n; i++) max = max > x[i] ? max : x[i];
  if (max < GROUP_MAX_EPS) {
    L.fill(0, 0, n);
    return 0;
  }
  let iscale = f(nmax / max);
  for (let i = 0; i < n; i++) L[i] = nearestInt(f(iscale * x[i]));
  const scale = f(1 / iscale);
  let best = 0;
  for (let i = 0; i < n; i++) {
    const diff = f(x[i] - f(scale * L[i]));
    best = f(best + f(f(qw[i] * diff) * diff));
  }
  for (let is = -4; is <= 4; is++) {
    if (is === 0) continue;
    const iscaleIs = f(f(f(F01 * is) + nmax) / max);
    const scaleIs = f(1 / iscaleIs);
    let mse = 0;
    for (let i = 0; i < n; i++) {
      const l = math.min(nmax, nearestInt(f(iscaleIs * x[i])));
      const diff = f(x[i] - f(scaleIs * l));
      mse = f(mse + f(f(qw[i] * diff) * diff));
    }
    if (mse < best) {
      best = mse;
      iscale = iscaleIs;
    }
  }
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const l = math.min(nmax, nearestInt(f(iscale * x[i])));
    L[i] = l;
    sumlx = f(sumlx + f(f(qw[i] * x[i]) * l));
    suml2 = f(suml2 + f(f(qw[i] * l) * l));
  }
  for (let itry = 0; itry < 5; itry++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const w = qw[i];
      let slx = f(sumlx - f(f(w * x[i]) * L[i]));
      let sl2 = f(suml2 - f(f(w * L[i]) * L[i]));
      if (slx > 0 && sl2 > 0) {
        const nl = math.min(nmax, nearestInt(f(f(x[i] * sl2) / slx)));
        if (nl !== L[i]) {
          slx = f(slx + f(f(w * x[i]) * nl));
          sl2 = f(sl2 + f(f(w * nl) * nl));
          if (f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2)) {
            L[i] = nl;
            sumlx = slx;
            suml2 = sl2;
            changed++;
          }
        }
      }
    }
    if (!changed) break;
  }
  return suml2 > 0 ? f(sumlx / suml2) : 0;
}

/** σ² of a super-block as the _impl functions take it: Σx²/256, doubled for Q3_K…Q5_K. */
function sigma2(x: Vec, xo: number, twice: boolean): number {
  let s = 0;
  for (let j = 0; j < QK_K; j++) s = f(s + f(x[xo + j] * x[xo + j]));
  return twice ? f(f(2 * s) / QK_K) : f(s / QK_K);
}

/** Sub-block weights importance·√(σ² + x²); returns their sum. */
function impWeights(x: Vec, xo: number, n: number, qw: Vec, s2: number, w: Vec): number {
  let sum = 0;
  for (let l = 0; l < n; l++) w[l] = f(qw[xo + l] * f(math.sqrt(f(s2 + f(x[xo + l] * x[xo + l])))));
  for (let l = 0; l < n; l++) sum = f(sum + w[l]);
  return sum;
}

function packQs2(L: Uint8Array | Int8Array, out: Uint8Array, qs: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      out[qs + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
    }
  }
}

/** Q2_K [16 B scale | min<<4][64 B 2-bit][f16 d][f16 dmin]: quantize_row_q2_K_ref / quantize_row_q2_K_impl. */
export function encodeQ2K(x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
  const L = new Uint8Array(QK_K);
  const w = new Float32Array(16);
  const scales = new Float32Array(16);
  const mins = new Float32Array(16);
  const sw = new Float32Array(16);
  const s2 = qw ? sigma2(x, xo, false) : 0;
  for (let j = 0; j < 16; j++) {
    const o = xo + 16 * j;
    if (qw) sw[j] = impWeights(x, o, 16, qw, s2, w);
    else for (let l = 0; l < 16; l++) w[l] = math.abs(x[o + l]);
    [scales[j], mins[j]] = qw
      ? makeQkx(16, 3, x, o, w, L, 16 * j, f(-0.9), f(0.05), 36, false)
      : makeQkx(16, 3, x, o, w, L, 16 * j, -0.5, F01, 15, true);
  }
  if (qw) {
    const Ls = new Uint8Array(16);
    const Lm = new Uint8Array(16);
    putF16(out, at + 80, makeQp(16, 15, scales, Ls, sw));
    putF16(out, at + 82, makeQp(16, 15, mins, Lm, sw));
    for (let j = 0; j < 16; j++) out[at + j] = Ls[j] | (Lm[j] << 4);
  } else {
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 16; j++) {
      if (scales[j] > maxScale) maxScale = scales[j];
      if (mins[j] > maxMin) maxMin = mins[j];
    }
    if (maxScale > 0) {
      const iscale = f(15 / maxScale);
      for (let j = 0; j < 16; j++) out[at + j] = nearestInt(f(iscale * scales[j]));
    }
    putF16(out, at + 80, maxScale > 0 ? f(maxScale / 15) : 0);
    if (maxMin > 0) {
      const iscale = f(15 / maxMin);
      for (let j = 0; j < 16; j++) out[at + j] |= nearestInt(f(iscale * mins[j])) << 4;
    }
    putF16(out, at + 82, maxMin > 0 ? f(maxMin / 15) : 0);
  }
  const d = getF16(out, at + 80);
  const dmin = getF16(out, at + 82);
  for (let j = 0; j < 16; j++) {
    const dj = f(d * (out[at + j] & 0xf));
    if (!dj) continue;
    const dm = f(dmin * (out[at + j] >> 4));
    for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearestInt(f(f(x[xo + 16 * j + i] + dm) / dj)), 0, 3);
  }
  packQs2(L, out, at + 16);
}

/** Q3_K [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d]: quantize_row_q3_K_ref / quantize_row_q3_K_impl. */
export function encodeQ3K(x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
  const L = new Int8Array(QK_K);
  const scales = new Float32Array(16);
  const sc = at + 96;
  const putScale = (j: number, l: number) => {
    if (j < 8) out[sc + j] = l & 0xf;
    else out[sc + j - 8] |= (l & 0xf) << 4;
    out[sc + (j % 4) + 8] |= (l >> 4) << (2 * math.floor(j / 4));
  };
  if (qw) {
    const w = new Float32Array(16);
    const sw = new Float32Array(16);
    const s2 = sigma2(x, xo, true);
    for (let j = 0; j < 16; j++) {
      sw[j] = impWeights(x, xo + 16 * j, 16, qw, s2, w);
      scales[j] = makeQx(16, 4, x, xo + 16 * j, L, 16 * j, w, 0);
    }
    const Ls = new Int8Array(16);
    const dBlock = makeQx(16, 32, scales, 0, Ls, 0, sw, 0);
    for (let j = 0; j < 16; j++) putScale(j, Ls[j]);
    putF16(out, at + 108, dBlock);
  } else {
    let maxScale = 0;
    let amax = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = makeQ3(16, 4, x, xo + 16 * j, L, 16 * j);
      if (math.abs(scales[j]) > amax) {
        amax = math.abs(scales[j]);
        maxScale = scales[j];
      }
    }
    if (maxScale) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) putScale(j, clamp((nearestInt(f(iscale * scales[j])) << 24) >> 24, -32, 31) + 32);
      putF16(out, at + 108, f(1 / iscale));
    }
  }
  const d = getF16(out, at + 108);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? out[sc + j] & 0xf : out[sc + j - 8] >> 4;
    const s = (low | (((out[sc + 8 + (j % 4)] >> (2 * math.floor(j / 4))) & 3) << 4)) - 32;
    const dj = f(d * s);
    if (!dj) continue;
    for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearestInt(f(x[xo + 16 * j + i] / dj)), -4, 3) + 4;
  }
  let m = 0;
  let hbit = 1;
  for (let j = 0; j < QK_K; j++) {
    if (L[j] > 3) {
      out[at + m] |= hbit;
      L[j] -= 4;
    }
    if (++m === 32) {
      m = 0;
      hbit <<= 1;
    }
  }
  packQs2(L, out, at + 32);
}

/** Q4_K / Q5_K scales, mins and codes L (0..nmax) of 8 sub-blocks of 32; writes d, dmin and the 12 scale bytes. */
function scalesK45(
  t: KType,
  x: Vec,
  xo: number,
  out: Uint8Array,
  at: number,
  qw: Vec | undefined,
  L: Uint8Array,
): void {
  const five = t === 'Q5_K';
  const nmax = five ? 31 : 15;
  const w = new Float32Array(32);
  const scales = new Float32Array(8);
  const mins = new Float32Array(8);
  const sw = new Float32Array(8);
  const ls = new Uint8Array(8);
  const lm = new Uint8Array(8);
  const s2 = qw ? sigma2(x, xo, true) : 0;
  for (let j = 0; j < 8; j++) {
    const o = xo + 32 * j;
    if (qw) {
      sw[j] = impWeights(x, o, 32, qw, s2, w);
      [scales[j], mins[j]] = makeQkx(32, nmax, x, o, w, L, 32 * j, f(-0.9), f(0.05), 36, false);
      continue;
    }
    let sum2 = 0;
    for (let l = 0; l < 32; l++) sum2 = f(sum2 + f(x[o + l] * x[o + l]));
    const av = f(math.sqrt(f(sum2 / 32)));
    for (let l = 0; l < 32; l++) w[l] = f(av + math.abs(x[o + l]));
    [scales[j], mins[j]] = makeQkx(32, nmax, x, o, w, L, 32 * j, five ? -0.5 : -1, F01, five ? 15 : 20, false);
  }
  if (qw) {
    putF16(out, at, makeQp(8, 63, scales, ls, sw));
    putF16(out, at + 2, makeQp(8, 63, mins, lm, sw));
    if (five) for (let j = 0; j < 8; j++) [ls[j], lm[j]] = [math.min(63, ls[j]), math.min(63, lm[j])];
  } else {
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      if (scales[j] > maxScale) maxScale = scales[j];
      if (mins[j] > maxMin) maxMin = mins[j];
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
    for (let j = 0; j < 8; j++) {
      ls[j] = nearestInt(f(invScale * scales[j]));
      lm[j] = nearestInt(f(invMin * mins[j]));
      ls[j] = math.min(63, ls[j]);
      lm[j] = math.min(63, lm[j]);
    }
    putF16(out, at, f(maxScale / 63));
    putF16(out, at + 2, f(maxMin / 63));
  }
  packScalesK4(ls, lm, out, at + 4);
  const d = getF16(out, at);
  const dmin = getF16(out, at + 2);
  for (let j = 0; j < 8; j++) {
    const [sc, m] = scaleMinK4(j, out, at + 4);
    const dj = f(d * sc);
    if (!dj) continue;
    const dm = f(dmin * m);
    for (let i = 0; i < 32; i++) L[32 * j + i] = clamp(nearestInt(f(f(x[xo + 32 * j + i] + dm) / dj)), 0, nmax);
  }
}

/** Q4_K [f16 d][f16 dmin][12 B scales][128 B 4-bit]; Q5_K adds [32 B high bits] before the 4-bit part. */
export function encodeQ45K(t: KType, x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
  const L = new Uint8Array(QK_K);
  scalesK45(t, x, xo, out, at, qw, L);
  if (t === 'Q4_K') {
    const qs = at + 16;
    for (let j = 0; j < QK_K; j += 64) {
      for (let l = 0; l < 32; l++) out[qs + j / 2 + l] = L[j + l] | (L[j + l + 32] << 4);
    }
    return;
  }
  const qh = at + 16;
  const qs = at + 48;
  let m1 = 1;
  let m2 = 2;
  for (let n = 0; n < QK_K; n += 64) {
    for (let j = 0; j < 32; j++) {
      let l1 = L[n + j];
      if (l1 > 15) {
        l1 -= 16;
        out[qh + j] |= m1;
      }
      let l2 = L[n + j + 32];
      if (l2 > 15) {
        l2 -= 16;
        out[qh + j] |= m2;
      }
      out[qs + n / 2 + j] = l1 | (l2 << 4);
    }
    m1 <<= 2;
    m2 <<= 2;
  }
}

/** Q6_K [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d]: quantize_row_q6_K_ref / _impl. */
export function encodeQ6K(x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
  const L = new Int8Array(QK_K);
  const scales = new Float32Array(16);
  let maxScale = 0;
  let maxAbs = 0;
  for (let j = 0; j < 16; j++) {
    scales[j] = makeQx(16, 32, x, xo + 16 * j, L, 16 * j, qw ?? null, xo + 16 * j);
    if (math.abs(scales[j]) > maxAbs) {
      maxAbs = math.abs(scales[j]);
      maxScale = scales[j];
    }
  }
  if (maxAbs < GROUP_MAX_EPS) return; // all zero: codes, scales and d 0
  const sc = at + 192;
  const iscale = f(-128 / maxScale);
  putF16(out, at + 208, f(1 / iscale));
  for (let j = 0; j < 16; j++) out[sc + j] = math.min(127, nearestInt(f(iscale * scales[j])));
  const d = getF16(out, at + 208);
  for (let j = 0; j < 16; j++) {
    const dj = f(d * ((out[sc + j] << 24) >> 24));
    if (!dj) continue;
    for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearestInt(f(x[xo + 16 * j + i] / dj)), -32, 31) + 32;
  }
  for (let j = 0; j < QK_K; j += 128) {
    const b = at + j / 2;
    const h = at + 128 + j / 4;
    for (let l = 0; l < 32; l++) {
      const q1 = L[j + l];
      const q2 = L[j + l + 32];
      const q3 = L[j + l + 64];
      const q4 = L[j + l + 96];
      out[b + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
      out[b + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
      out[h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
    }
  }
}
