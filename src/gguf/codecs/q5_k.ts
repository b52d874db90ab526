/**
 * Q5_K: super-blocks of 256, [f16 d][f16 dmin][12 B scales and mins][32 B high bits][128 B 4-bit],
 * 8 sub-blocks of 32.
 */
import type { BlockCodec } from './codec';
import { QK_K } from './common';
import { decodeK4, encodeQ45K } from './k4';

export const Q5_K: BlockCodec = {
  kind: 'block',
  type: 'Q5_K',
  id: 13,
  fileType: 17,
  blockSize: QK_K,
  typeSize: 176,
  encode: (x, xo, out, at, imp) => encodeQ45K('Q5_K', x, xo, out, at, imp),
  decode: (bytes, at, out, y) => decodeK4(bytes, at, out, y, true),
};
