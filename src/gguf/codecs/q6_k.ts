/** Q6_K: super-blocks of 256, [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d], 16 sub-blocks of 16. */
import type { BlockCodec } from './codec';
import { clamp, getF16, math, putF16, QK_K } from './common';
import { f, GROUP_MAX_EPS, makeQx, nearestInt } from './kquants';
import type { Vec } from './kquants';

/** Q6_K [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d]: quantize_row_q6_K_ref / _impl. */
function encodeQ6K(x: Vec, xo: number, out: Uint8Array, at: number, qw: Vec | undefined): void {
  const L = new Int8Array(QK_K);
  const scales = new Float32Array(16);
  let maxScale = 0;
  let maxAbs = 0;
  for (let j = 0; j < 16; j++) {
    scales[j] = makeQx(16, 32, x, xo + 16 * j, L, 16 * j, qw ?? null, xo + 16 * j);
    if (math.abs(scales[j]) > maxAbs) {
      maxAbs = math.abs(scales[j]);
      maxScale = scales[j];
    }
  }
  if (maxAbs < GROUP_MAX_EPS) return; // all zero: codes, scales and d 0
  const sc = at + 192;
  const iscale = f(-128 / maxScale);
  putF16(out, at + 208, f(1 / iscale));
  for (let j = 0; j < 16; j++) out[sc + j] = math.min(127, nearestInt(f(iscale * scales[j])));
  const d = getF16(out, at + 208);
  for (let j = 0; j < 16; j++) {
    const dj = f(d * ((out[sc + j] << 24) >> 24));
    if (!dj) continue;
    for (let i = 0; i < 16; i++) L[16 * j + i] = clamp(nearestInt(f(x[xo + 16 * j + i] / dj)), -32, 31) + 32;
  }
  for (let j = 0; j < QK_K; j += 128) {
    const b = at + j / 2;
    const h = at + 128 + j / 4;
    for (let l = 0; l < 32; l++) {
      const q1 = L[j + l];
      const q2 = L[j + l + 32];
      const q3 = L[j + l + 64];
      const q4 = L[j + l + 96];
      out[b + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
      out[b + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
      out[h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
    }
  }
}

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
