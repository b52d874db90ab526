/**
 * Bit packing of quantization codes (the on-disk layout, src/quant/format.ts): the codes of each row packed
 * LSB-first across bytes (code i occupies bits i·bits .. i·bits+bits−1 of the row), every row starting on a byte
 * boundary.
 */
import { packedRowBytes } from '../io/packed';

export function packCodes(codes: Uint8Array, rows: number, cols: number, bits: number): Uint8Array {
  const rb = packedRowBytes(cols, bits);
  const out = new Uint8Array(rows * rb);
  if (bits === 8) {
    out.set(codes.subarray(0, rows * cols));
    return out;
  }
  for (let r = 0; r < rows; r++) {
    let bit = r * rb * 8;
    const row = r * cols;
    for (let c = 0; c < cols; c++, bit += bits) {
      const v = codes[row + c];
      const byte = bit >>> 3;
      const shift = bit & 7;
      out[byte] |= (v << shift) & 0xff;
      if (shift + bits > 8) out[byte + 1] |= v >>> (8 - shift);
    }
  }
  return out;
}
