/**
 * What Q4_K and Q5_K share: 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min each, packed in 12 bytes after
 * [f16 d][f16 dmin]: their encoder (the scale search of quantize_row_q4_K/q5_K) and decoder.
 */
import { clamp, getF16, math, packScalesK4, putF16, QK_K, scaleMinK4 } from './common';
import { f, F01, impWeights, makeQkx, makeQp, nearestInt, sigma2 } from './kquants';
import type { Vec, KType } from './kquants';

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
