/**
 * What Q4_K and Q5_K share: 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min each, packed in 12 bytes after
 * [f16 d][f16 dmin]; their decoder (the encoders are in kquants.ts).
 */
import { getF16, QK_K, scaleMinK4 } from './common';

/** The super-block at bytes[at ..] into out[y ..]; `five` adds Q5_K's high bits (at + 16) to the nibbles. */
export function decodeK4(bytes: Uint8Array, at: number, out: Float32Array, y: number, five: boolean): void {
  const d = getF16(bytes, at);
  const dmin = getF16(bytes, at + 2);
  const qh = at + 16;
  const qs = five ? at + 48 : at + 16;
  let u1 = 1;
  let u2 = 2;
  for (let j = 0, is = 0; j < QK_K; j += 64, is += 2) {
    const [sc1, m1] = scaleMinK4(is, bytes, at + 4);
    const [sc2, m2] = scaleMinK4(is + 1, bytes, at + 4);
    const d1 = d * sc1;
    const dm1 = dmin * m1;
    const d2 = d * sc2;
    const dm2 = dmin * m2;
    const q = qs + j / 2;
    for (let l = 0; l < 32; l++) {
      const lo = (bytes[q + l] & 0xf) + (five && bytes[qh + l] & u1 ? 16 : 0);
      const hi = (bytes[q + l] >> 4) + (five && bytes[qh + l] & u2 ? 16 : 0);
      out[y + j + l] = d1 * lo - dm1;
      out[y + j + l + 32] = d2 * hi - dm2;
    }
    u1 <<= 2;
    u2 <<= 2;
  }
}
