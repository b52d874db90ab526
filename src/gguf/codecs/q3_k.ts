/** Q3_K: super-blocks of 256, [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d], 16 sub-blocks of 16. */
import type { BlockCodec } from './codec';
import { getF16, QK_K, unpackScalesQ3 } from './common';
import { encodeQ3K } from './kquants';

export const Q3_K: BlockCodec = {
  kind: 'block',
  type: 'Q3_K',
  id: 11,
  fileType: 12,
  blockSize: QK_K,
  typeSize: 110,
  encode: encodeQ3K,
  decode(bytes, at, out, y) {
    const d = getF16(bytes, at + 108);
    const scs = unpackScalesQ3(bytes, at + 96);
    let is = 0;
    let m = 1;
    for (let n0 = 0; n0 < QK_K; n0 += 128) {
      const q = at + 32 + n0 / 4;
      for (let j = 0, shift = 0; j < 4; j++, shift += 2) {
        for (const half of [0, 16]) {
          const dl = d * scs[is++];
          for (let l = 0; l < 16; l++)
            out[y + n0 + 32 * j + half + l] =
              dl * (((bytes[q + half + l] >> shift) & 3) - (bytes[at + half + l] & m ? 0 : 4));
        }
        m <<= 1;
      }
    }
  },
};
