/**
 * ggml's quantization types, encoded and decoded by our own code in llama.cpp's block layouts (ggml-common.h; the
 * semantics follow ggml-quants.c and gguf-py's quants.py, which serve as documentation):
 *   Q8_0  [f16 d][32 × i8]                                  w = d·q
 *   Q4_0  [f16 d][16 B: element j low nibble, j+16 high]     w = d·(q − 8)
 *   Q2_K  [16 B scales: 4-bit scale | 4-bit min][64 B 2-bit][f16 d][f16 dmin]          16 sub-blocks of 16
 *   Q3_K  [32 B high bits][64 B 2-bit][12 B 6-bit scales][f16 d]                        16 sub-blocks of 16
 *   Q4_K  [f16 d][f16 dmin][12 B 6-bit scales and mins][128 B 4-bit]                   8 sub-blocks of 32
 *   Q5_K  [f16 d][f16 dmin][12 B scales and mins][32 B high bits][128 B 4-bit]          8 sub-blocks of 32
 *   Q6_K  [128 B low 4 bits][64 B high 2 bits][16 × i8 scales][f16 d]                   16 sub-blocks of 16
 * K-quants work on super-blocks of 256 values. Their encoders (ggml-kquants.ts) are llama.cpp's reference
 * quantizers in float32, byte for byte; given an importance per column (the calibration imatrix, Σx²) they are
 * llama.cpp's imatrix quantizers. Q8_0 and Q4_0 compute in float32 as ggml does too (test/gguf/codec-reference).
 */
import { floatToBf16Bits, floatToHalfBits, halfToFloat } from '../io/dtype';
import { encodeKBlock, KType } from './ggml-kquants';

export type GgmlType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K' | 'Q3_K' | 'Q2_K';

export const GGML_TYPE_ID: Record<GgmlType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 };

/** The ggml type of a name (q4_k, Q4_K), if moe writes it. */
export function ggmlTypeNamed(s: string): GgmlType | undefined {
  const t = s.toUpperCase();
  return t in GGML_TYPE_ID ? (t as GgmlType) : undefined;
}

const QK_K = 256;
const BLOCK: Record<GgmlType, [number, number]> = {
  F32: [1, 4],
  F16: [1, 2],
  BF16: [1, 2],
  Q8_0: [32, 34],
  Q4_0: [32, 18],
  Q2_K: [QK_K, 84],
  Q3_K: [QK_K, 110],
  Q4_K: [QK_K, 144],
  Q5_K: [QK_K, 176],
  Q6_K: [QK_K, 210],
};

/** Math as a module constant: per-element code never looks up a global (slow in vm contexts such as jest's). */
const math = Math;
/** Rounds to float32: ggml's C encoders compute in float, and ties decided in float64 can go the other way. */
const f32 = Math.fround;

export function blockSize(t: GgmlType): number {
  return BLOCK[t][0];
}
export function typeSize(t: GgmlType): number {
  return BLOCK[t][1];
}
export function rowBytes(t: GgmlType, n: number): number {
  return (n / blockSize(t)) * typeSize(t);
}
export function bitsPerWeight(t: GgmlType): number {
  return (typeSize(t) * 8) / blockSize(t);
}

function putF16(out: Uint8Array, at: number, x: number): void {
  const h = floatToHalfBits(x);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
}
function getF16(b: Uint8Array, at: number): number {
  return halfToFloat(b[at] | (b[at + 1] << 8));
}

function scaleMinK4(j: number, q: Uint8Array, at: number): [number, number] {
  if (j < 4) return [q[at + j] & 63, q[at + j + 4] & 63];
  return [(q[at + j + 4] & 0xf) | ((q[at + j - 4] >> 6) << 4), (q[at + j + 4] >> 4) | ((q[at + j] >> 6) << 4)];
}

/** Q3_K's 16 signed 6-bit scales (stored +32) from their 12 bytes. */
function unpackScalesQ3(b: Uint8Array, at: number): Int32Array {
  const s = new Int32Array(16);
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? b[at + j] & 0xf : b[at + j - 8] >> 4;
    const high = (b[at + 8 + (j % 4)] >> (2 * math.floor(j / 4))) & 3;
    s[j] = (low | (high << 4)) - 32;
  }
  return s;
}

export function quantizeRows(x: Float32Array, rows: number, cols: number, t: GgmlType, importance?: Float32Array | Float64Array): Uint8Array {
  const bs = blockSize(t);
  if (cols % bs !== 0) throw new RangeError(`${t}: rows of ${cols} are not a multiple of its block of ${bs}`);
  const rb = rowBytes(t, cols);
  const out = new Uint8Array(rows * rb);
  if (t === 'F32') {
    out.set(new Uint8Array(x.buffer, x.byteOffset, rows * cols * 4));
    return out;
  }
  if (t === 'F16' || t === 'BF16') {
    const conv = t === 'F16' ? floatToHalfBits : floatToBf16Bits;
    for (let i = 0; i < rows * cols; i++) {
      const h = conv(x[i]);
      out[2 * i] = h & 0xff;
      out[2 * i + 1] = h >> 8;
    }
    return out;
  }
  const row = new Float64Array(cols);
  const row32 = new Float32Array(cols);
  // An importance that is zero everywhere (an expert calibration never routed to) carries no information: the
  // reference encoders, as llama-quantize without imatrix data for a tensor.
  const qw = importance && importance.some((v) => v > 0) ? Float32Array.from(importance) : undefined;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) row[c] = x[r * cols + c];
    row32.set(x.subarray(r * cols, (r + 1) * cols));
    for (let b = 0; b < cols / bs; b++) {
      const at = r * rb + b * typeSize(t);
      const xo = b * bs;
      if (t === 'Q8_0') {
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
      } else if (t === 'Q4_0') {
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
      } else {
        encodeKBlock(t as KType, row32, xo, out, at, qw);
      }
    }
  }
  return out;
}

export function dequantizeRows(bytes: Uint8Array, rows: number, cols: number, t: GgmlType): Float32Array {
  const out = new Float32Array(rows * cols);
  const n = rows * cols;
  if (t === 'F32') {
    out.set(new Float32Array(bytes.slice(0, n * 4).buffer));
    return out;
  }
  if (t === 'F16') {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(bytes[2 * i] | (bytes[2 * i + 1] << 8));
    return out;
  }
  if (t === 'BF16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
    return out;
  }
  const bs = blockSize(t);
  const ts = typeSize(t);
  const blocks = n / bs;
  for (let b = 0; b < blocks; b++) {
    const at = b * ts;
    const y = b * bs;
    switch (t) {
      case 'Q8_0': {
        const d = getF16(bytes, at);
        for (let i = 0; i < 32; i++) out[y + i] = d * ((bytes[at + 2 + i] << 24) >> 24);
        break;
      }
      case 'Q4_0': {
        const d = getF16(bytes, at);
        for (let j = 0; j < 16; j++) {
          out[y + j] = ((bytes[at + 2 + j] & 0xf) - 8) * d;
          out[y + j + 16] = ((bytes[at + 2 + j] >> 4) - 8) * d;
        }
        break;
      }
      case 'Q4_K':
      case 'Q5_K': {
        const d = getF16(bytes, at);
        const dmin = getF16(bytes, at + 2);
        const five = t === 'Q5_K';
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
        break;
      }
      case 'Q6_K': {
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
        break;
      }
      case 'Q2_K': {
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
        break;
      }
      case 'Q3_K': {
        const d = getF16(bytes, at + 108);
        const scs = unpackScalesQ3(bytes, at + 96);
        let is = 0;
        let m = 1;
        for (let n0 = 0; n0 < QK_K; n0 += 128) {
          const q = at + 32 + n0 / 4;
          for (let j = 0, shift = 0; j < 4; j++, shift += 2) {
            for (const half of [0, 16]) {
              const dl = d * scs[is++];
              for (let l = 0; l < 16; l++) out[y + n0 + 32 * j + half + l] = dl * (((bytes[q + half + l] >> shift) & 3) - (bytes[at + half + l] & m ? 0 : 4));
            }
            m <<= 1;
          }
        }
        break;
      }
    }
  }
  return out;
}

