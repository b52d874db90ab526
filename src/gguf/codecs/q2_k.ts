/**
 * Q2_K: super-blocks of 256, [16 B scales: 4-bit scale | 4-bit min][64 B 2-bit][f16 d][f16 dmin],
 * 16 sub-blocks of 16.
 */
import type { BlockCodec } from './codec';
import { clamp, getF16, math, putF16, QK_K } from './common';
import { f, F01, impWeights, makeQkx, makeQp, nearestInt, packQs2, sigma2 } from './kquants';
import type { Vec } from './kquants';

/** Q2_K [16 B scale | min<<4][64 B 2-bit][f16 d][f16 dmin]: quantize_row_q2_K_ref / quantize_row_q2_K_impl. */
function encodeQ2K(x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
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

export const Q2_K: BlockCodec = {
  kind: 'block',
  type: 'Q2_K',
  id: 10,
  fileType: 10,
  blockSize: QK_K,
  typeSize: 84,
  encode: encodeQ2K,
  decode(bytes, at, out, y) {
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
  },
};
