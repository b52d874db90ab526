/** Q6_K: super-blocks of 256, [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d], 16 sub-blocks of 16. */
import type { BlockCodec } from './codec';
import { getF16, QK_K } from './common';
import { encodeQ6K } from './kquants';

export const Q6_K: BlockCodec = {
  kind: 'block',
  type: 'Q6_K',
  id: 14,
  fileType: 18,
  blockSize: QK_K,
  typeSize: 210,
  encode: encodeQ6K,
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
