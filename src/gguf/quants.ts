/**
 * ggml's quantization types, encoded and decoded by our own code in llama.cpp's block layouts (ggml-common.h; the
 * semantics follow ggml-quants.c and gguf-py's quants.py, which serve as documentation):
 *   Q8_0  [f16 d][32 × i8]                                  w = d·q
 *   Q4_0  [f16 d][16 B: element j low nibble, j+16 high]     w = d·(q − 8)
 *   Q2_K  [16 B scales: 4-bit scale | 4-bit min][64 B 2-bit][f16 d][f16 dmin]          16 sub-blocks of 16
 *   Q3_K  [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d]                        16 sub-blocks of 16
 *   Q4_K  [f16 d][f16 dmin][12 B 6-bit scales and mins][128 B 4-bit]                   8 sub-blocks of 32
 *   Q5_K  [f16 d][f16 dmin][12 B scales and mins][32 B high bits][128 B 4-bit]          8 sub-blocks of 32
 *   Q6_K  [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d]                   16 sub-blocks of 16
 * K-quants work on super-blocks of 256 values. The encoders search scales the way llama.cpp's reference
 * quantizers do (make_qx_quants, make_qkx2_quants, make_q3_quants); given an importance per column (the
 * calibration imatrix, Σx²) they weight that search by it, as llama.cpp does with an imatrix.
 */
import { floatToBf16Bits, floatToHalfBits, halfToFloat } from '../io/dtype';

export type GgmlType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K' | 'Q3_K' | 'Q2_K';

export const GGML_TYPE_ID: Record<GgmlType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 };

const QK_K = 256;
const BLOCK: Record<GgmlType, [number, number]> = {
  F32: [1, 4],
  F16: [1, 2],
  BF16: [1, 2],
  Q8_0: [32, 34],
  Q4_0: [32, 18],
  Q2_K: [QK_K, 84],
  Q3_K: [QK_K, 110],
  Q4_K: [QK_K, 144],
  Q5_K: [QK_K, 176],
  Q6_K: [QK_K, 210],
};

/** Math as a module constant: per-element code never looks up a global (slow in vm contexts such as jest's). */
const math = Math;
/** Rounds to float32: ggml's C encoders compute in float, and ties decided in float64 can go the other way. */
const f32 = Math.fround;
const GROUP_MAX_EPS = 1e-15;

export function blockSize(t: GgmlType): number {
  return BLOCK[t][0];
}
export function typeSize(t: GgmlType): number {
  return BLOCK[t][1];
}
export function rowBytes(t: GgmlType, n: number): number {
  return (n / blockSize(t)) * typeSize(t);
}
export function bitsPerWeight(t: GgmlType): number {
  return (typeSize(t) * 8) / blockSize(t);
}

/** Round half to even, as llama.cpp's nearest_int. */
function nearest(x: number): number {
  const r = math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);
function putF16(out: Uint8Array, at: number, x: number): void {
  const h = floatToHalfBits(x);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
}
function getF16(b: Uint8Array, at: number): number {
  return halfToFloat(b[at] | (b[at + 1] << 8));
}

/** Symmetric search (make_qx_quants): L[i] in 0..2·nmax−1 (offset nmax); returns the scale. */
function makeQx(n: number, nmax: number, x: Float64Array, xo: number, L: Uint8Array, lo: number, w: Float64Array): number {
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
function makeQkx2(n: number, nmax: number, x: Float64Array, xo: number, w: Float64Array, wo: number, L: Uint8Array, lo: number, rmin: number, rdelta: number, nstep: number, mad: boolean): [number, number] {
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
function packScalesK4(ls: Uint8Array, lm: Uint8Array, out: Uint8Array, at: number): void {
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
function scaleMinK4(j: number, q: Uint8Array, at: number): [number, number] {
  if (j < 4) return [q[at + j] & 63, q[at + j + 4] & 63];
  return [(q[at + j + 4] & 0xf) | ((q[at + j - 4] >> 6) << 4), (q[at + j + 4] >> 4) | ((q[at + j] >> 6) << 4)];
}

/** Per-value weights for the K-quant searches: importance·√(σ² + x²) with an imatrix, else the reference ones. */
function searchWeights(x: Float64Array, xo: number, n: number, imp: Float32Array | Float64Array | undefined, col0: number, plain: (v: number, av: number) => number, w: Float64Array): void {
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
function subBlockScales16(x: Float64Array, xo: number, imp: Float32Array | Float64Array | undefined, col0: number, nmax: number, L: Uint8Array, w: Float64Array): { scales: Float64Array; maxScale: number; maxAbs: number } {
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

function encodeBlockK(t: GgmlType, x: Float64Array, xo: number, out: Uint8Array, at: number, imp: Float32Array | Float64Array | undefined, col0: number): void {
  const L = new Uint8Array(QK_K);
  const w = new Float64Array(x.length);
  if (t === 'Q4_K' || t === 'Q5_K') {
    const nmax = t === 'Q4_K' ? 15 : 31;
    const scales = new Float64Array(8);
    const mins = new Float64Array(8);
    for (let j = 0; j < 8; j++) {
      const o = xo + 32 * j;
      searchWeights(x, o, 32, imp, col0 + 32 * j, (v, av) => av + math.abs(v), w);
      [scales[j], mins[j]] = makeQkx2(32, nmax, x, o, w, o, L, 32 * j, t === 'Q4_K' ? -1 : -0.5, 0.1, t === 'Q4_K' ? 20 : 15, false);
    }
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      maxScale = math.max(maxScale, scales[j]);
      maxMin = math.max(maxMin, mins[j]);
    }
    const invScale = maxScale > 0 ? 63 / maxScale : 0;
    const invMin = maxMin > 0 ? 63 / maxMin : 0;
    const ls = new Uint8Array(8);
    const lm = new Uint8Array(8);
    for (let j = 0; j < 8; j++) {
      ls[j] = math.min(63, nearest(invScale * scales[j]));
      lm[j] = math.min(63, nearest(invMin * mins[j]));
    }
    putF16(out, at, maxScale / 63);
    putF16(out, at + 2, maxMin / 63);
    packScalesK4(ls, lm, out, at + 4);
    const d = getF16(out, at);
    const dmin = getF16(out, at + 2);
    for (let j = 0; j < 8; j++) {
      const [sc, m] = scaleMinK4(j, out, at + 4);
      const dj = d * sc;
      if (!dj) continue;
      const dm = dmin * m;
      for (let i = 0; i < 32; i++) L[32 * j + i] = clamp(nearest((x[xo + 32 * j + i] + dm) / dj), 0, nmax);
    }
    if (t === 'Q4_K') {
      const qs = at + 16;
      for (let j = 0; j < QK_K; j += 64) for (let l = 0; l < 32; l++) out[qs + j / 2 + l] = L[j + l] | (L[j + l + 32] << 4);
    } else {
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
    return;
  }
  if (t === 'Q6_K') {
    const { scales, maxScale, maxAbs } = subBlockScales16(x, xo, imp, col0, 32, L, w);
    const ql = at;
    const qh = at + 128;
    const sc = at + 192;
    if (maxAbs < GROUP_MAX_EPS) {
      putF16(out, at + 208, 0);
      return; // all zero: codes 0, scales 0
    }
    const iscale = -128 / maxScale;
    putF16(out, at + 208, 1 / iscale);
    for (let j = 0; j < 16; j++) out[sc + j] = math.min(127, nearest(iscale * scales[j])) & 0xff;
    const d = getF16(out, at + 208);
    for (let j = 0; j < 16; j++) {
      const s = (out[sc + j] << 24) >> 24;
      const dj = d * s;
      if (!dj) continue;
      for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearest(x[xo + 16 * j + i] / dj), -32, 31) + 32;
    }
    for (let j = 0; j < QK_K; j += 128) {
      const b = j / 2;
      const h = j / 4;
      for (let l = 0; l < 32; l++) {
        const q1 = L[j + l];
        const q2 = L[j + l + 32];
        const q3 = L[j + l + 64];
        const q4 = L[j + l + 96];
        out[ql + b + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
        out[ql + b + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
        out[qh + h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
    return;
  }
  if (t === 'Q2_K') {
    const scales = new Float64Array(16);
    const mins = new Float64Array(16);
    for (let j = 0; j < 16; j++) {
      const o = xo + 16 * j;
      searchWeights(x, o, 16, imp, col0 + 16 * j, (v) => math.abs(v), w);
      [scales[j], mins[j]] = makeQkx2(16, 3, x, o, w, o, L, 16 * j, -0.5, 0.1, 15, true);
    }
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 16; j++) {
      maxScale = math.max(maxScale, scales[j]);
      maxMin = math.max(maxMin, mins[j]);
    }
    const sc = at;
    if (maxScale > 0) {
      const iscale = 15 / maxScale;
      for (let j = 0; j < 16; j++) out[sc + j] = nearest(iscale * scales[j]);
      putF16(out, at + 80, maxScale / 15);
    } else putF16(out, at + 80, 0);
    if (maxMin > 0) {
      const iscale = 15 / maxMin;
      for (let j = 0; j < 16; j++) out[sc + j] |= nearest(iscale * mins[j]) << 4;
      putF16(out, at + 82, maxMin / 15);
    } else putF16(out, at + 82, 0);
    const d = getF16(out, at + 80);
    const dmin = getF16(out, at + 82);
    for (let j = 0; j < 16; j++) {
      const dj = d * (out[sc + j] & 0xf);
      if (!dj) continue;
      const dm = dmin * (out[sc + j] >> 4);
      for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearest((x[xo + 16 * j + i] + dm) / dj), 0, 3);
    }
    const qs = at + 16;
    for (let j = 0; j < QK_K; j += 128) for (let l = 0; l < 32; l++) out[qs + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
    return;
  }
  // Q3_K
  const { scales, maxScale, maxAbs } = subBlockScales16(x, xo, imp, col0, 4, L, w);
  const hm = at;
  const qs = at + 32;
  const sc = at + 96;
  if (maxAbs > GROUP_MAX_EPS) {
    const iscale = -32 / maxScale;
    for (let j = 0; j < 16; j++) {
      let l = clamp(nearest(iscale * scales[j]), -32, 31) + 32;
      if (j < 8) out[sc + j] = l & 0xf;
      else out[sc + j - 8] |= (l & 0xf) << 4;
      l >>= 4;
      out[sc + (j % 4) + 8] |= l << (2 * math.floor(j / 4));
    }
    putF16(out, at + 108, 1 / iscale);
  } else putF16(out, at + 108, 0);
  const d = getF16(out, at + 108);
  const scs = unpackScalesQ3(out, sc);
  L.fill(4);
  for (let j = 0; j < 16; j++) {
    const dj = d * scs[j];
    if (!dj) continue;
    for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearest(x[xo + 16 * j + i] / dj), -4, 3) + 4;
  }
  let m = 0;
  let hbit = 1;
  for (let j = 0; j < QK_K; j++) {
    if (L[j] > 3) {
      out[hm + m] |= hbit;
      L[j] -= 4;
    }
    if (++m === 32) {
      m = 0;
      hbit <<= 1;
    }
  }
  for (let j = 0; j < QK_K; j += 128) for (let l = 0; l < 32; l++) out[qs + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
}

/** Q3_K's 16 signed 6-bit scales (stored +32) from their 12 bytes. */
function unpackScalesQ3(b: Uint8Array, at: number): Int32Array {
  const s = new Int32Array(16);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? b[at + j] & 0xf : b[at + j - 8] >> 4;
    const high = (b[at + 8 + (j % 4)] >> (2 * math.floor(j / 4))) & 3;
    s[j] = (low | (high << 4)) - 32;
  }
  return s;
}

export function quantizeRows(x: Float32Array, rows: number, cols: number, t: GgmlType, importance?: Float32Array | Float64Array): Uint8Array {
  const bs = blockSize(t);
  if (cols % bs !== 0) throw new RangeError(`${t}: rows of ${cols} are not a multiple of its block of ${bs}`);
  const rb = rowBytes(t, cols);
  const out = new Uint8Array(rows * rb);
  if (t === 'F32') {
    out.set(new Uint8Array(x.buffer, x.byteOffset, rows * cols * 4));
    return out;
  }
  if (t === 'F16' || t === 'BF16') {
    const conv = t === 'F16' ? floatToHalfBits : floatToBf16Bits;
    for (let i = 0; i < rows * cols; i++) {
      const h = conv(x[i]);
      out[2 * i] = h & 0xff;
      out[2 * i + 1] = h >> 8;
    }
    return out;
  }
  const row = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) row[c] = x[r * cols + c];
    for (let b = 0; b < cols / bs; b++) {
      const at = r * rb + b * typeSize(t);
      const xo = b * bs;
      if (t === 'Q8_0') {
        // float32 arithmetic as ggml's quantize_row_q8_0_ref; roundf rounds half away from zero (Math.round does not)
        let amax = 0;
        for (let i = 0; i < 32; i++) amax = math.max(amax, math.abs(row[xo + i]));
        const d = f32(amax / 127);
        const id = d ? f32(1 / d) : 0;
        putF16(out, at, d);
        for (let i = 0; i < 32; i++) {
          const v = f32(row[xo + i] * id);
          out[at + 2 + i] = (v < 0 ? -math.round(-v) : math.round(v)) & 0xff;
        }
      } else if (t === 'Q4_0') {
        let amax = 0;
        let max = 0;
        for (let i = 0; i < 32; i++) {
          if (math.abs(row[xo + i]) > amax) {
            amax = math.abs(row[xo + i]);
            max = row[xo + i];
          }
        }
        const d = max / -8;
        const id = d ? f32(1 / d) : 0;
        putF16(out, at, d);
        for (let j = 0; j < 16; j++) {
          // float32 arithmetic as ggml's quantize_row_q4_0_ref: (int8_t)(x·id + 8.5f)
          const q0 = math.min(15, math.trunc(f32(f32(row[xo + j] * id) + 8.5)));
          const q1 = math.min(15, math.trunc(f32(f32(row[xo + j + 16] * id) + 8.5)));
          out[at + 2 + j] = q0 | (q1 << 4);
        }
      } else {
        encodeBlockK(t, row, xo, out, at, importance, xo);
      }
    }
  }
  return out;
}

export function dequantizeRows(bytes: Uint8Array, rows: number, cols: number, t: GgmlType): Float32Array {
  const out = new Float32Array(rows * cols);
  const n = rows * cols;
  if (t === 'F32') {
    out.set(new Float32Array(bytes.slice(0, n * 4).buffer));
    return out;
  }
  if (t === 'F16') {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(bytes[2 * i] | (bytes[2 * i + 1] << 8));
    return out;
  }
  if (t === 'BF16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
    return out;
  }
  const bs = blockSize(t);
  const ts = typeSize(t);
  const blocks = n / bs;
  for (let b = 0; b < blocks; b++) {
    const at = b * ts;
    const y = b * bs;
    switch (t) {
      case 'Q8_0': {
        const d = getF16(bytes, at);
        for (let i = 0; i < 32; i++) out[y + i] = d * ((bytes[at + 2 + i] << 24) >> 24);
        break;
      }
      case 'Q4_0': {
        const d = getF16(bytes, at);
        for (let j = 0; j < 16; j++) {
          out[y + j] = ((bytes[at + 2 + j] & 0xf) - 8) * d;
          out[y + j + 16] = ((bytes[at + 2 + j] >> 4) - 8) * d;
        }
        break;
      }
      case 'Q4_K':
      case 'Q5_K': {
        const d = getF16(bytes, at);
        const dmin = getF16(bytes, at + 2);
        const five = t === 'Q5_K';
        const qh = at + 16;
        const qs = five ? at + 48 : at + 16;
        let u1 = 1;
        let u2 = 2;
        for (let j = 0, is = 0; j < QK_K; j += 64, is += 2) {
          const [sc1, m1] = scaleMinK4(is, bytes, at + 4);
          const [sc2, m2] = scaleMinK4(is + 1, bytes, at + 4);
          const d1 = d * sc1;
          const dm1 = dmin * m1;
          const d2 = d * sc2;
          const dm2 = dmin * m2;
          const q = qs + j / 2;
          for (let l = 0; l < 32; l++) {
            const lo = (bytes[q + l] & 0xf) + (five && bytes[qh + l] & u1 ? 16 : 0);
            const hi = (bytes[q + l] >> 4) + (five && bytes[qh + l] & u2 ? 16 : 0);
            out[y + j + l] = d1 * lo - dm1;
            out[y + j + l + 32] = d2 * hi - dm2;
          }
          u1 <<= 2;
          u2 <<= 2;
        }
        break;
      }
      case 'Q6_K': {
        const d = getF16(bytes, at + 208);
        for (let n0 = 0, half = 0; n0 < QK_K; n0 += 128, half++) {
          const ql = at + 64 * half;
          const qh = at + 128 + 32 * half;
          const sc = at + 192 + 8 * half;
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const s = (k: number) => (bytes[sc + is + k] << 24) >> 24;
            const q1 = ((bytes[ql + l] & 0xf) | (((bytes[qh + l] >> 0) & 3) << 4)) - 32;
            const q2 = ((bytes[ql + l + 32] & 0xf) | (((bytes[qh + l] >> 2) & 3) << 4)) - 32;
            const q3 = ((bytes[ql + l] >> 4) | (((bytes[qh + l] >> 4) & 3) << 4)) - 32;
            const q4 = ((bytes[ql + l + 32] >> 4) | (((bytes[qh + l] >> 6) & 3) << 4)) - 32;
            out[y + n0 + l] = d * s(0) * q1;
            out[y + n0 + l + 32] = d * s(2) * q2;
            out[y + n0 + l + 64] = d * s(4) * q3;
            out[y + n0 + l + 96] = d * s(6) * q4;
          }
        }
        break;
      }
      case 'Q2_K': {
        const d = getF16(bytes, at + 80);
        const dmin = getF16(bytes, at + 82);
        let is = 0;
        for (let n0 = 0; n0 < QK_K; n0 += 128) {
          const q = at + 16 + n0 / 4;
          for (let j = 0, shift = 0; j < 4; j++, shift += 2) {
            for (const half of [0, 16]) {
              const sc = bytes[at + is++];
              const dl = d * (sc & 0xf);
              const ml = dmin * (sc >> 4);
              for (let l = 0; l < 16; l++) out[y + n0 + 32 * j + half + l] = dl * ((bytes[q + half + l] >> shift) & 3) - ml;
            }
          }
        }
        break;
      }
      case 'Q3_K': {
        const d = getF16(bytes, at + 108);
        const scs = unpackScalesQ3(bytes, at + 96);
        let is = 0;
        let m = 1;
        for (let n0 = 0; n0 < QK_K; n0 += 128) {
          const q = at + 32 + n0 / 4;
          for (let j = 0, shift = 0; j < 4; j++, shift += 2) {
            for (const half of [0, 16]) {
              const dl = d * scs[is++];
              for (let l = 0; l < 16; l++) out[y + n0 + 32 * j + half + l] = dl * (((bytes[q + half + l] >> shift) & 3) - (bytes[at + half + l] & m ? 0 : 4));
            }
            m <<= 1;
          }
        }
        break;
      }
    }
  }
  return out;
}

