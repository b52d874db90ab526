/**
 * ggml's quantization types, encoded and decoded by our own code in llama.cpp's block layouts (ggml-common.h; the
 * semantics follow ggml-quants.c and gguf-py's quants.py, which serve as documentation). Each type is one codec
 * module in src/gguf/codecs/ (layout, ids, encoder and decoder side by side); this file dispatches to them.
 * K-quants work on super-blocks of 256 values. The encoders search scales the way llama.cpp's reference
 * quantizers do (make_qx_quants, make_qkx2_quants, make_q3_quants); given an importance per column (the
 * calibration imatrix, Σx²) they weight that search by it, as llama.cpp does with an imatrix.
 */
import { codec, CODECS, GgmlType, Importance } from './codecs/index';

export type { GgmlType } from './codecs/index';

/** Every type moe writes for --type, in the order the CLI lists them (MXFP4 only as stored: storedOnly). */
export const GGUF_TYPES: GgmlType[] = CODECS.filter((c) => !c.storedOnly).map((c) => c.type);

/** The types `--allocate lp` may choose from unless --type-menu says otherwise. */
export const DEFAULT_GGUF_MENU: GgmlType[] = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_0'];

/** ggml's type ids (enum ggml_type), in id order. */
export const GGML_TYPE_ID = Object.fromEntries(
  [...CODECS].sort((a, b) => a.id - b.id).map((c) => [c.type, c.id]),
) as Record<GgmlType, number>;

export function parseGgmlType(s: string): GgmlType | undefined {
  const t = s.toUpperCase() as GgmlType;
  return GGUF_TYPES.includes(t) ? t : undefined;
}

export function blockSize(t: GgmlType): number {
  return codec(t).blockSize;
}
export function typeSize(t: GgmlType): number {
  return codec(t).typeSize;
}
export function rowBytes(t: GgmlType, n: number): number {
  return (n / blockSize(t)) * typeSize(t);
}
export function bitsPerWeight(t: GgmlType): number {
  return (typeSize(t) * 8) / blockSize(t);
}
/** llama.cpp's general.file_type for a file that is mostly of type t (LLAMA_FTYPE_*), if it has one. */
export function fileType(t: GgmlType): number | undefined {
  return codec(t).fileType;
}

export function quantizeRows(
  x: Float32Array,
  rows: number,
  cols: number,
  t: GgmlType,
  importance?: Importance,
): Uint8Array {
  const c = codec(t);
  const bs = c.blockSize;
  if (cols % bs !== 0) throw new RangeError(`${t}: rows of ${cols} are not a multiple of its block of ${bs}`);
  const rb = rowBytes(t, cols);
  const out = new Uint8Array(rows * rb);
  if (c.kind === 'element') {
    c.encode(x, rows * cols, out);
    return out;
  }
  // An importance that is zero everywhere (an expert calibration never routed to) carries no information: the
  // reference encoders, as llama-quantize without imatrix data for a tensor.
  const qw = importance && importance.some((v) => v > 0) ? Float32Array.from(importance) : undefined;
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(r * cols, (r + 1) * cols);
    for (let b = 0; b < cols / bs; b++) c.encode(row, b * bs, out, r * rb + b * c.typeSize, qw);
  }
  return out;
}

export function dequantizeRows(bytes: Uint8Array, rows: number, cols: number, t: GgmlType): Float32Array {
  const c = codec(t);
  const n = rows * cols;
  const out = new Float32Array(n);
  if (c.kind === 'element') {
    c.decode(bytes, n, out);
    return out;
  }
  const blocks = n / c.blockSize;
  for (let b = 0; b < blocks; b++) c.decode(bytes, b * c.typeSize, out, b * c.blockSize);
  return out;
}
