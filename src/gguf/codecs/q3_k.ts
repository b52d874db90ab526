/** Q3_K: super-blocks of 256, [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d], 16 sub-blocks of 16. */
import type { BlockCodec } from './codec';
import { clamp, getF16, GROUP_MAX_EPS, math, nearest, putF16, QK_K, subBlockScales16, unpackScalesQ3 } from './common';

export const Q3_K: BlockCodec = {
  kind: 'block',
  type: 'Q3_K',
  id: 11,
  fileType: 12,
  blockSize: QK_K,
  typeSize: 110,
  encode(x, xo, out, at, imp, col0) {
    const L = new Uint8Array(QK_K);
    const w = new Float64Array(x.length);
    const { scales, maxScale, maxAbs } = subBlockScales16(x, xo, imp, col0, 4, L, w);
    const hm = at;
    const qs = at + 32;
    const sc = at + 96;
    if (maxAbs > GROUP_MAX_EPS) {
      const iscale = -32 / maxScale;
      for (let j = 0; j < 16; j++) {
        let l = clamp(nearest(iscale * scales[j]), -32, 31) + 32;
        if (j < 8) out[sc + j] = l & 0xf;
        else out[sc + j - 8] |= (l & 0xf) << 4;
        l >>= 4;
        out[sc + (j % 4) + 8] |= l << (2 * math.floor(j / 4));
      }
      putF16(out, at + 108, 1 / iscale);
    } else putF16(out, at + 108, 0);
    const d = getF16(out, at + 108);
    const scs = unpackScalesQ3(out, sc);
    L.fill(4);
    for (let j = 0; j < 16; j++) {
      const dj = d * scs[j];
      if (!dj) continue;
      for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearest(x[xo + 16 * j + i] / dj), -4, 3) + 4;
    }
    let m = 0;
    let hbit = 1;
    for (let j = 0; j < QK_K; j++) {
      if (L[j] > 3) {
        out[hm + m] |= hbit;
        L[j] -= 4;
      }
      if (++m === 32) {
        m = 0;
        hbit <<= 1;
      }
    }
    for (let j = 0; j < QK_K; j += 128) for (let l = 0; l < 32; l++) out[qs + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
  },
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
          for (let l = 0; l < 16; l++) out[y + n0 + 32 * j + half + l] = dl * (((bytes[q + half + l] >> shift) & 3) - (bytes[at + half + l] & m ? 0 : 4));
        }
        m <<= 1;
      }
    }
  },
};
