/** Q8_0: blocks of 32, [f16 d][32 × i8], w = d·q, d = max|x| / 127 (quantize_row_q8_0_ref). */
import type { BlockCodec } from './codec';
import { f32, getF16, math, putF16 } from './common';

export const Q8_0: BlockCodec = {
  kind: 'block',
  type: 'Q8_0',
  id: 8,
  fileType: 7,
  blockSize: 32,
  typeSize: 34,
  encode(row, xo, out, at) {
    // float32 arithmetic as ggml's quantize_row_q8_0_ref; roundf rounds half away from zero (Math.round does not)
    let amax = 0;
    for (let i = 0; i < 32; i++) amax = math.max(amax, math.abs(row[xo + i]));
    const d = f32(amax / 127);
    const id = d ? f32(1 / d) : 0;
    putF16(out, at, d);
    for (let i = 0; i < 32; i++) {
      const v = f32(row[xo + i] * id);
      out[at + 2 + i] = (v < 0 ? -math.round(-v) : math.round(v)) & 0xff;
    }
  },
  decode(bytes, at, out, y) {
    const d = getF16(bytes, at);
    for (let i = 0; i < 32; i++) out[y + i] = d * ((bytes[at + 2 + i] << 24) >> 24);
  },
};
