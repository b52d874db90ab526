/** Q4_K: super-blocks of 256, [f16 d][f16 dmin][12 B 6-bit scales and mins][128 B 4-bit], 8 sub-blocks of 32. */
import type { BlockCodec } from './codec';
import { QK_K } from './common';
import { decodeK4, encodeQ45K } from './k4';

export const Q4_K: BlockCodec = {
  kind: 'block',
  type: 'Q4_K',
  id: 12,
  fileType: 15,
  blockSize: QK_K,
  typeSize: 144,
  encode: (x, xo, out, at, imp) => encodeQ45K('Q4_K', x, xo, out, at, imp),
  decode: (bytes, at, out, y) => decodeK4(bytes, at, out, y, false),
};
