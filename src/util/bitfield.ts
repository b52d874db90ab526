/**
 * Little-endian streams of b-bit fields over 32-bit words, as GPTQ's qweight/qzeros and compressed-tensors'
 * weight_packed/weight_zero_point store codes: field i starts at bit i·b of the stream and may cross into the next
 * word. The stream's k-th word is words[k·stride + at], so a stream can run down a column of a row-major matrix.
 */

/** Field i of the stream. */
export function readField(words: Uint32Array, stride: number, at: number, i: number, bits: number): number {
  const bit = i * bits;
  const w = bit >>> 5;
  const s = bit & 31;
  let v = words[w * stride + at] >>> s;
  if (s + bits > 32) v |= words[(w + 1) * stride + at] << (32 - s);
  return v & ((1 << bits) - 1);
}

/** Writes field i (see readField); the words start zeroed. */
export function writeField(words: Uint32Array, stride: number, at: number, i: number, bits: number, v: number): void {
  const bit = i * bits;
  const w = bit >>> 5;
  const s = bit & 31;
  words[w * stride + at] |= v << s;
  if (s + bits > 32) words[(w + 1) * stride + at] |= v >>> (32 - s);
}
