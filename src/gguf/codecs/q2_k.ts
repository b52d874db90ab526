/**
 * Q2_K: super-blocks of 256, [16 B scales: 4-bit scale | 4-bit min][64 B 2-bit][f16 d][f16 dmin],
 * 16 sub-blocks of 16.
 */
import type { BlockCodec } from './codec';
import { clamp, getF16, makeQkx2, math, nearest, putF16, QK_K, searchWeights } from './common';

export const Q2_K: BlockCodec = {
  kind: 'block',
  type: 'Q2_K',
  id: 10,
  fileType: 10,
  blockSize: QK_K,
  typeSize: 84,
  encode(x, xo, out, at, imp, col0) {
    const L = new Uint8Array(QK_K);
    const w = new Float64Array(x.length);
    const scales = new Float64Array(16);
    const mins = new Float64Array(16);
    for (let j = 0; j < 16; j++) {
      const o = xo + 16 * j;
      searchWeights(x, o, 16, imp, col0 + 16 * j, (v) => math.abs(v), w);
      [scales[j], mins[j]] = makeQkx2(16, 3, x, o, w, o, L, 16 * j, -0.5, 0.1, 15, true);
    }
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 16; j++) {
      maxScale = math.max(maxScale, scales[j]);
      maxMin = math.max(maxMin, mins[j]);
    }
    const sc = at;
    if (maxScale > 0) {
      const iscale = 15 / maxScale;
      for (let j = 0; j < 16; j++) out[sc + j] = nearest(iscale * scales[j]);
      putF16(out, at + 80, maxScale / 15);
    } else putF16(out, at + 80, 0);
    if (maxMin > 0) {
      const iscale = 15 / maxMin;
      for (let j = 0; j < 16; j++) out[sc + j] |= nearest(iscale * mins[j]) << 4;
      putF16(out, at + 82, maxMin / 15);
    } else putF16(out, at + 82, 0);
    const d = getF16(out, at + 80);
    const dmin = getF16(out, at + 82);
    for (let j = 0; j < 16; j++) {
      const dj = d * (out[sc + j] & 0xf);
      if (!dj) continue;
      const dm = dmin * (out[sc + j] >> 4);
      for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearest((x[xo + 16 * j + i] + dm) / dj), 0, 3);
    }
    const qs = at + 16;
    for (let j = 0; j < QK_K; j += 128) for (let l = 0; l < 32; l++) out[qs + j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
  },
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
