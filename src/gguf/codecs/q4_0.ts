/**
 * Q4_0: blocks of 32, [f16 d][16 B: element j low nibble, j+16 high], w = d·(q − 8), d = max / −8
 * (quantize_row_q4_0_ref).
 */
import type { BlockCodec } from './codec';
import { f32, getF16, math, putF16 } from './common';

export const Q4_0: BlockCodec = {
  kind: 'block',
  type: 'Q4_0',
  id: 2,
  fileType: 2,
  blockSize: 32,
  typeSize: 18,
  encode(row, xo, out, at) {
    let amax = 0;
    let max = 0;
    for (let i = 0; i < 32; i++) {
      if (math.abs(row[xo + i]) > amax) {
        amax = math.abs(row[xo + i]);
        max = row[xo + i];
      }
    }
    const d = max / -8;
    const id = d ? f32(1 / d) : 0;
    putF16(out, at, d);
    for (let j = 0; j < 16; j++) {
      // float32 arithmetic as ggml's quantize_row_q4_0_ref: (int8_t)(x·id + 8.5f)
      const q0 = math.min(15, math.trunc(f32(f32(row[xo + j] * id) + 8.5)));
      const q1 = math.min(15, math.trunc(f32(f32(row[xo + j + 16] * id) + 8.5)));
      out[at + 2 + j] = q0 | (q1 << 4);
    }
  },
  decode(bytes, at, out, y) {
    const d = getF16(bytes, at);
    for (let j = 0; j < 16; j++) {
      out[y + j] = ((bytes[at + 2 + j] & 0xf) - 8) * d;
      out[y + j + 16] = ((bytes[at + 2 + j] >> 4) - 8) * d;
    }
  },
};
