/**
 * Bit packing of quantization codes (the on-disk layout, src/quant/format.ts): the codes of each row packed
 * LSB-first across bytes (code i occupies bits i·bits .. i·bits+bits−1 of the row), every row starting on a byte
 * boundary.
 */
import { groupCount } from './rtn';

export function packedRowBytes(cols: number, bits: number): number {
  return Math.ceil((cols * bits) / 8);
}

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

export function unpackCodes(packed: Uint8Array, rows: number, cols: number, bits: number): Uint8Array {
  const rb = packedRowBytes(cols, bits);
  if (packed.length < rows * rb) throw new RangeError(`unpackCodes: ${packed.length} bytes for [${rows}, ${cols}] at ${bits} bits`);
  const out = new Uint8Array(rows * cols);
  if (bits === 8) {
    out.set(packed.subarray(0, rows * cols));
    return out;
  }
  const mask = (1 << bits) - 1;
  for (let r = 0; r < rows; r++) {
    let bit = r * rb * 8;
    const row = r * cols;
    for (let c = 0; c < cols; c++, bit += bits) {
      const byte = bit >>> 3;
      const shift = bit & 7;
      let v = packed[byte] >>> shift;
      if (shift + bits > 8) v |= packed[byte + 1] << (8 - shift);
      out[row + c] = v & mask;
    }
  }
  return out;
}

/**
 * From the stored tensors straight to float32 weights [rows, cols]: packed codes [rows, rowBytes], scales as raw
 * little-endian BF16 bytes [rows·ngroups·2], zero points [rows·ngroups].
 */
export function dequantizePacked(packed: Uint8Array, scalesBf16: Uint8Array, zeros: Uint8Array, rows: number, cols: number, bits: number, groupSize: number): Float32Array {
  const ng = groupCount(cols, groupSize);
  const rb = packedRowBytes(cols, bits);
  if (packed.length < rows * rb || scalesBf16.length < rows * ng * 2 || zeros.length < rows * ng) throw new RangeError(`dequantizePacked: parts too short for [${rows}, ${cols}] at ${bits} bits, groups of ${groupSize}`);
  const out = new Float32Array(rows * cols);
  // bf16 → f32 is a 16-bit shift; read the scales once per row through a Uint32 view.
  const scaleBits = new Uint32Array(ng);
  const scales = new Float32Array(scaleBits.buffer);
  const mask = (1 << bits) - 1;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < ng; g++) {
      const o = 2 * (r * ng + g);
      scaleBits[g] = (scalesBf16[o] | (scalesBf16[o + 1] << 8)) << 16;
    }
    const row = r * cols;
    const prow = r * rb;
    for (let g = 0; g < ng; g++) {
      const s = scales[g];
      const z = zeros[r * ng + g];
      const a = g * groupSize;
      const b = Math.min(cols, a + groupSize);
      if (bits === 8) {
        for (let c = a; c < b; c++) out[row + c] = (packed[prow + c] - z) * s;
      } else if (bits === 4) {
        for (let c = a; c < b; c++) out[row + c] = (((packed[prow + (c >>> 1)] >>> ((c & 1) << 2)) & 15) - z) * s;
      } else if (bits === 2) {
        for (let c = a; c < b; c++) out[row + c] = (((packed[prow + (c >>> 2)] >>> ((c & 3) << 1)) & 3) - z) * s;
      } else {
        for (let c = a; c < b; c++) {
          const bit = c * bits;
          const byte = prow + (bit >>> 3);
          const shift = bit & 7;
          let v = packed[byte] >>> shift;
          if (shift + bits > 8) v |= packed[byte + 1] << (8 - shift);
          out[row + c] = ((v & mask) - z) * s;
        }
      }
    }
  }
  return out;
}
