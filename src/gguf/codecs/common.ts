/**
 * Helpers the block codecs share: rounding as llama.cpp's nearest_int, f16 fields, and the scale searches of
 * ggml-quants.c's reference quantizers (make_qx_quants, make_qkx2_quants) with their per-value weights.
 */
import { floatToHalfBits, halfToFloat } from '../../io/dtype';
import type { Importance } from './codec';

/** Math as a module constant: per-element code never looks up a global (slow in vm contexts such as jest's). */
export const math = Math;
export const GROUP_MAX_EPS = 1e-15;
export const QK_K = 256;

/** Round half to even, as llama.cpp's nearest_int. */
export function nearest(x: number): number {
  const r = math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
export const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);
export function putF16(out: Uint8Array, at: number, x: number): void {
  const h = floatToHalfBits(x);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
}
export function getF16(b: Uint8Array, at: number): number {
  return halfToFloat(b[at] | (b[at + 1] << 8));
}

/** Symmetric search (make_qx_quants): L[i] in 0..2·nmax−1 (offset nmax); returns the scale. */
export function makeQx(n: number, nmax: number, x: Float64Array, xo: number, L: Uint8Array, lo: number, w: Float64Array): number {
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
    for (let i = 0; i < n; i++) L[lo + i] = nmax;
    return 0;
  }
  let iscale = -nmax / max;
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const l = clamp(nearest(iscale * x[xo + i]), -nmax, nmax - 1);
    L[lo + i] = l + nmax;
    sumlx += w[xo + i] * x[xo + i] * l;
    suml2 += w[xo + i] * l * l;
  }
  let scale = suml2 ? sumlx / suml2 : 0;
  let best = scale * sumlx;
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = -(nmax + 0.1 * is) / max;
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearest(iscale * x[xo + i]), -nmax, nmax - 1);
      sumlx += w[xo + i] * x[xo + i] * l;
      suml2 += w[xo + i] * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (let i = 0; i < n; i++) L[lo + i] = nmax + clamp(nearest(iscale * x[xo + i]), -nmax, nmax - 1);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

/** Asymmetric search with a minimum (make_qkx2_quants): L[i] in 0..nmax; returns [scale, −min]. */
export function makeQkx2(n: number, nmax: number, x: Float64Array, xo: number, w: Float64Array, wo: number, L: Uint8Array, lo: number, rmin: number, rdelta: number, nstep: number, mad: boolean): [number, number] {
  let min = x[xo];
  let max = x[xo];
  let sumW = 0;
  let sumX = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i];
    if (v < min) min = v;
    if (v > max) max = v;
    sumW += w[wo + i];
    sumX += w[wo + i] * v;
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    return [0, -min];
  }
  let iscale = nmax / (max - min);
  let scale = 1 / iscale;
  let best = 0;
  for (let i = 0; i < n; i++) {
    const l = clamp(nearest(iscale * (x[xo + i] - min)), 0, nmax);
    L[lo + i] = l;
    const diff = scale * l + min - x[xo + i];
    best += w[wo + i] * (mad ? math.abs(diff) : diff * diff);
  }
  const aux = new Uint8Array(n);
  for (let is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearest(iscale * (x[xo + i] - min)), 0, nmax);
      aux[i] = l;
      const wi = w[wo + i];
      sumL += wi * l;
      sumL2 += wi * l * l;
      sumXL += wi * l * x[xo + i];
    }
    const D = sumW * sumL2 - sumL * sumL;
    if (D > 0) {
      let s = (sumW * sumXL - sumX * sumL) / D;
      let m = (sumL2 * sumX - sumL * sumXL) / D;
      if (m > 0) {
        m = 0;
        s = sumXL / sumL2;
      }
      let err = 0;
      for (let i = 0; i < n; i++) {
        const diff = s * aux[i] + m - x[xo + i];
        err += w[wo + i] * (mad ? math.abs(diff) : diff * diff);
      }
      if (err < best) {
        for (let i = 0; i < n; i++) L[lo + i] = aux[i];
        best = err;
        scale = s;
        min = m;
      }
    }
  }
  return [scale, -min];
}

/** The 12-byte 6-bit scale/min packing of Q4_K and Q5_K. */
export function packScalesK4(ls: Uint8Array, lm: Uint8Array, out: Uint8Array, at: number): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      out[at + j] = ls[j];
      out[at + j + 4] = lm[j];
    } else {
      out[at + j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
      out[at + j - 4] |= (ls[j] >> 4) << 6;
      out[at + j] |= (lm[j] >> 4) << 6;
    }
  }
}
export function scaleMinK4(j: number, q: Uint8Array, at: number): [number, number] {
  if (j < 4) return [q[at + j] & 63, q[at + j + 4] & 63];
  return [(q[at + j + 4] & 0xf) | ((q[at + j - 4] >> 6) << 4), (q[at + j + 4] >> 4) | ((q[at + j] >> 6) << 4)];
}

/** Per-value weights for the K-quant searches: importance·√(σ² + x²) with an imatrix, else the reference ones. */
export function searchWeights(x: Float64Array, xo: number, n: number, imp: Importance | undefined, col0: number, plain: (v: number, av: number) => number, w: Float64Array): void {
  let sum2 = 0;
  let impSum = 0;
  for (let i = 0; i < n; i++) {
    sum2 += x[xo + i] * x[xo + i];
    if (imp) impSum += imp[col0 + i];
  }
  const sigma2 = (2 * sum2) / n;
  const av = math.sqrt(sum2 / n);
  // Columns no calibration input reached (an expert never routed to) carry no information: plain weights.
  const useImp = imp && impSum > 0;
  for (let i = 0; i < n; i++) w[xo + i] = useImp ? imp[col0 + i] * math.sqrt(sigma2 + x[xo + i] * x[xo + i]) : plain(x[xo + i], av);
}

/** Symmetric scales of the 16 sub-blocks of 16 (Q3_K, Q6_K), and the one of largest magnitude. */
export function subBlockScales16(x: Float64Array, xo: number, imp: Importance | undefined, col0: number, nmax: number, L: Uint8Array, w: Float64Array): { scales: Float64Array; maxScale: number; maxAbs: number } {
  const scales = new Float64Array(16);
  let maxScale = 0;
  let maxAbs = 0;
  for (let j = 0; j < 16; j++) {
    const o = xo + 16 * j;
    searchWeights(x, o, 16, imp, col0 + 16 * j, (v) => v * v, w);
    scales[j] = makeQx(16, nmax, x, o, L, 16 * j, w);
    if (math.abs(scales[j]) > maxAbs) {
      maxAbs = math.abs(scales[j]);
      maxScale = scales[j];
    }
  }
  return { scales, maxScale, maxAbs };
}

/** Q3_K's 16 signed 6-bit scales (stored +32) from their 12 bytes. */
export function unpackScalesQ3(b: Uint8Array, at: number): Int32Array {
  const s = new Int32Array(16);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? b[at + j] & 0xf : b[at + j - 8] >> 4;
    const high = (b[at + 8 + (j % 4)] >> (2 * math.floor(j / 4))) & 3;
    s[j] = (low | (high << 4)) - 32;
  }
  return s;
}
