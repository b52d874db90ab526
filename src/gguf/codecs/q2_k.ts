/**
 * Q2_K: super-blocks of 256, [16 B scales: 4-bit scale | 4-bit min][64 B 2-bit][f16 d][f16 dmin],
 * 16 sub-blocks of 16.
 */
import type { BlockCodec } from './codec';
import { getF16, QK_K } from './common';
import { encodeQ2K } from './kquants';

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
