/** Q6_K: super-blocks of 256, [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d], 16 sub-blocks of 16. */
import type { BlockCodec } from './codec';
import { clamp, getF16, GROUP_MAX_EPS, math, nearest, putF16, QK_K, subBlockScales16 } from './common';

export const Q6_K: BlockCodec = {
  kind: 'block',
  type: 'Q6_K',
  id: 14,
  fileType: 18,
  blockSize: QK_K,
  typeSize: 210,
  encode(x, xo, out, at, imp, col0) {
    const L = new Uint8Array(QK_K);
    const w = new Float64Array(x.length);
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
  },
  decode(bytes, at, out, y) {
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
  },
};
