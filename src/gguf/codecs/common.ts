/**
 * Helpers the block codecs share: rounding as llama.cpp's nearest_int, float32 rounding, f16 fields, scale unpacking.
 * The K-quant encoders' searches are in kquants.ts.
 */
import { floatToHalfBits, halfToFloat } from '../../io/dtype';

/** Math as a module constant: per-element code never looks up a global (slow in vm contexts such as jest's). */
export const math = Math;
/** Rounds to float32: ggml's C encoders compute in float, and ties decided in float64 can go the other way. */
export const f32 = Math.fround;
export const QK_K = 256;

/** Round half to even, as llama.cpp's nearest_int. */
export function nearest(x: number): number {
  const r = math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
export const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);
export function putF16(out: Uint8Array, at: number, x: number): void {
  const h = floatToHalfBits(x);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
}
export function getF16(b: Uint8Array, at: number): number {
  return halfToFloat(b[at] | (b[at + 1] << 8));
}

/** The 12-byte 6-bit scale/min packing of Q4_K and Q5_K. */
export function packScalesK4(ls: Uint8Array, lm: Uint8Array, out: Uint8Array, at: number): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      out[at + j] = ls[j];
      out[at + j + 4] = lm[j];
    } else {
      out[at + j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
      out[at + j - 4] |= (ls[j] >> 4) << 6;
      out[at + j] |= (lm[j] >> 4) << 6;
    }
  }
}
export function scaleMinK4(j: number, q: Uint8Array, at: number): [number, number] {
  if (j < 4) return [q[at + j] & 63, q[at + j + 4] & 63];
  return [(q[at + j + 4] & 0xf) | ((q[at + j - 4] >> 6) << 4), (q[at + j + 4] >> 4) | ((q[at + j] >> 6) << 4)];
}

/** Q3_K's 16 signed 6-bit scales (stored +32) from their 12 bytes. */
export function unpackScalesQ3(b: Uint8Array, at: number): Int32Array {
  const s = new Int32Array(16);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? b[at + j] & 0xf : b[at + j - 8] >> 4;
    const high = (b[at + 8 + (j % 4)] >> (2 * math.floor(j / 4))) & 3;
    s[j] = (low | (high << 4)) - 32;
  }
  return s;
}
