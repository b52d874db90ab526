/**
 * What Q4_K and Q5_K share: 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min each, packed in 12 bytes after
 * [f16 d][f16 dmin] (make_qkx2_quants per sub-block, as quantize_row_q4_K_ref and quantize_row_q5_K_ref).
 */
import type { Importance } from './codec';
import { clamp, getF16, makeQkx2, math, nearest, packScalesK4, putF16, QK_K, scaleMinK4, searchWeights } from './common';

/** Codes L[0..255] in 0..nmax of the super-block at x[xo ..], with d, dmin and the scales written at out[at ..]. */
export function encodeScalesK4(nmax: number, rmin: number, nstep: number, x: Float64Array, xo: number, out: Uint8Array, at: number, imp: Importance | undefined, col0: number): Uint8Array {
  const L = new Uint8Array(QK_K);
  const w = new Float64Array(x.length);
  const scales = new Float64Array(8);
  const mins = new Float64Array(8);
  for (let j = 0; j < 8; j++) {
    const o = xo + 32 * j;
    searchWeights(x, o, 32, imp, col0 + 32 * j, (v, av) => av + math.abs(v), w);
    [scales[j], mins[j]] = makeQkx2(32, nmax, x, o, w, o, L, 32 * j, rmin, 0.1, nstep, false);
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
  return L;
}

/** The super-block at bytes[at ..] into out[y ..]; `five` adds Q5_K's high bits (at + 16) to the nibbles. */
export function decodeK4(bytes: Uint8Array, at: number, out: Float32Array, y: number, five: boolean): void {
  const d = getF16(bytes, at);
  const dmin = getF16(bytes, at + 2);
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
}
