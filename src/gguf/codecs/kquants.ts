/**
 * The scale searches the K-quant encoders share (each encoder is in its type's codec module: q2_k.ts, q3_k.ts,
 * k4.ts for Q4_K and Q5_K, q6_k.ts), computed as llama.cpp computes them, so that moe writes the bytes llama.cpp's
 * own quantizers write (ggml/src/ggml-quants.c, MIT licence, the ggml authors; test/gguf/codec-reference.test.ts
 * compares with bytes and errors of that C code, compiled by scripts/ggml_ref/):
 *   without importance  quantize_row_<t>_ref: per sub-block scale (and min) searches make_qx_quants,
 *                       make_q3_quants, make_qkx2_quants; the block scale from the largest sub-block scale
 *   with importance     quantize_row_<t>_impl (llama-quantize --imatrix): searches weighted by
 *                       importance·√(σ² + x²) (make_qkx3_quants), the sub-block scales themselves quantized by a
 *                       weighted search (make_qp_quants, make_qx_quants); Q6_K weights by the importance alone
 * Arithmetic is float32 as in the C code: every result goes through f (Math.fround), sums accumulate in the C order.
 * Searches compare errors; done in float64 they decide near-ties differently, and the bytes differ.
 * The search helpers are numeric kernels transcribed from ggml; they keep its structure (and length).
 */
import { clamp } from './common';

export type KType = 'Q2_K' | 'Q3_K' | 'Q4_K' | 'Q5_K' | 'Q6_K';

export const f = Math.fround;
export const math = Math;
export const QK_K = 256;
export const GROUP_MAX_EPS = f(1e-15);
export const F01 = f(0.1);
/** Scratch codes of makeQkx's trial scales (sub-blocks of at most 32); module scope: no allocation per call. */
const AUX = new Uint8Array(32);
/** makeQkx's x − min of the current sub-block (float32). */
const XM = new Float32Array(32);

/** nearest_int as ggml computes it: adding 1.5·2²³ in float32 rounds half to even (|x| < 2²², as ggml asserts). */
export const nearestInt = (x: number) => f(x + 12582912) - 12582912;
export type Vec = Float32Array;

/** make_qx_quants with rmse_type 1: symmetric, L[i] = l + nmax in 0..2·nmax−1; weights qw, else x². */
export function makeQx(
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
export function makeQ3(n: number, nmax: number, x: Vec, xo: number, L: Int8Array, lo: number): number {
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
export function makeQkx(
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
  const xm = XM; // x − min in float32, recomputed when the search improves min
  let xmOf = NaN;
  for (let is = 0; is <= nstep; is++) {
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min)); // min as improved so far, as in C
    if (xmOf !== min) {
      for (let i = 0; i < n; i++) xm[i] = x[xo + i] - min; // a Float32Array store rounds as f() does
      xmOf = min;
    }
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const v = f(iscale * xm[i]) + 12582912; // nearestInt, inlined
      const r = f(v) - 12582912;
      const l = r < 0 ? 0 : r > nmax ? nmax : r;
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
        // the terms are ≥ 0 (weights are squares or importances) and float32 rounding is monotone: once e reaches
        // best it cannot fall below it, so the trial is lost whatever the remaining terms are
        if (e >= best) break;
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
export function makeQp(n: number, nmax: number, x: Vec, L: Uint8Array, qw: Vec): number {
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
export function sigma2(x: Vec, xo: number, twice: boolean): number {
  let s = 0;
  for (let j = 0; j < QK_K; j++) s = f(s + f(x[xo + j] * x[xo + j]));
  return twice ? f(f(2 * s) / QK_K) : f(s / QK_K);
}

/** Sub-block weights importance·√(σ² + x²); returns their sum. */
export function impWeights(x: Vec, xo: number, n: number, qw: Vec, s2: number, w: Vec): number {
  let sum = 0;
  for (let l = 0; l < n; l++) w[l] = f(qw[xo + l] * f(math.sqrt(f(s2 + f(x[xo + l] * x[xo + l])))));
  for (let l = 0; l < n; l++) sum = f(sum + w[l]);
  return sum;
}

export function packQs2(L: Uint8Array | Int8Array, out: Uint8Array, qs: number): void {
  for (let j = 0; j < QK_K; j += 128) {
    for (let l = 0; l < 32; l++) {
      out[qs + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
    }
  }
}
