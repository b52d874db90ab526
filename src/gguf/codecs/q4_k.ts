/** Q4_K: super-blocks of 256, [f16 d][f16 dmin][12 B 6-bit scales and mins][128 B 4-bit], 8 sub-blocks of 32. */
import type { BlockCodec } from './codec';
import { QK_K } from './common';
import { decodeK4, encodeScalesK4 } from './k4';

export const Q4_K: BlockCodec = {
  kind: 'block',
  type: 'Q4_K',
  id: 12,
  fileType: 15,
  blockSize: QK_K,
  typeSize: 144,
  encode(x, xo, out, at, imp, col0) {
    const L = encodeScalesK4(15, -1, 20, x, xo, out, at, imp, col0);
    const qs = at + 16;
    for (let j = 0; j < QK_K; j += 64) for (let l = 0; l < 32; l++) out[qs + j / 2 + l] = L[j + l] | (L[j + l + 32] << 4);
  },
  decode: (bytes, at, out, y) => decodeK4(bytes, at, out, y, false),
};
