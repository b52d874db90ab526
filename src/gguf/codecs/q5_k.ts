/**
 * Q5_K: super-blocks of 256, [f16 d][f16 dmin][12 B scales and mins][32 B high bits][128 B 4-bit],
 * 8 sub-blocks of 32.
 */
import type { BlockCodec } from './codec';
import { QK_K } from './common';
import { decodeK4, encodeScalesK4 } from './k4';

export const Q5_K: BlockCodec = {
  kind: 'block',
  type: 'Q5_K',
  id: 13,
  fileType: 17,
  blockSize: QK_K,
  typeSize: 176,
  encode(x, xo, out, at, imp, col0) {
    const L = encodeScalesK4(31, -0.5, 15, x, xo, out, at, imp, col0);
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
  },
  decode: (bytes, at, out, y) => decodeK4(bytes, at, out, y, true),
};
