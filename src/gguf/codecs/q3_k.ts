/** Q3_K: super-blocks of 256, [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d], 16 sub-blocks of 16. */
import type { BlockCodec } from './codec';
import { clamp, getF16, math, putF16, QK_K, unpackScalesQ3 } from './common';
import { f, impWeights, makeQ3, makeQx, nearestInt, packQs2, sigma2 } from './kquants';
import type { Vec } from './kquants';

/** Q3_K [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d]: quantize_row_q3_K_ref / quantize_row_q3_K_impl. */
function encodeQ3K(x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
  const L = new Int8Array(QK_K);
  const scales = new Float32Array(16);
  const sc = at + 96;
  const putScale = (j: number, l: number) => {
    if (j < 8) out[sc + j] = l & 0xf;
    else out[sc + j - 8] |= (l & 0xf) << 4;
    out[sc + (j % 4) + 8] |= (l >> 4) << (2 * math.floor(j / 4));
  };
  if (qw) {
    const w = new Float32Array(16);
    const sw = new Float32Array(16);
    const s2 = sigma2(x, xo, true);
    for (let j = 0; j < 16; j++) {
      sw[j] = impWeights(x, xo + 16 * j, 16, qw, s2, w);
      scales[j] = makeQx(16, 4, x, xo + 16 * j, L, 16 * j, w, 0);
    }
    const Ls = new Int8Array(16);
    const dBlock = makeQx(16, 32, scales, 0, Ls, 0, sw, 0);
    for (let j = 0; j < 16; j++) putScale(j, Ls[j]);
    putF16(out, at + 108, dBlock);
  } else {
    let maxScale = 0;
    let amax = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = makeQ3(16, 4, x, xo + 16 * j, L, 16 * j);
      if (math.abs(scales[j]) > amax) {
        amax = math.abs(scales[j]);
        maxScale = scales[j];
      }
    }
    if (maxScale) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) putScale(j, clamp((nearestInt(f(iscale * scales[j])) << 24) >> 24, -32, 31) + 32);
      putF16(out, at + 108, f(1 / iscale));
    }
  }
  const d = getF16(out, at + 108);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? out[sc + j] & 0xf : out[sc + j - 8] >> 4;
    const s = (low | (((out[sc + 8 + (j % 4)] >> (2 * math.floor(j / 4))) & 3) << 4)) - 32;
    const dj = f(d * s);
    if (!dj) continue;
    for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearestInt(f(x[xo + 16 * j + i] / dj)), -4, 3) + 4;
  }
  let m = 0;
  let hbit = 1;
  for (let j = 0; j < QK_K; j++) {
    if (L[j] > 3) {
      out[at + m] |= hbit;
      L[j] -= 4;
    }
    if (++m === 32) {
      m = 0;
      hbit <<= 1;
    }
  }
  packQs2(L, out, at + 32);
}

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
