/**
 * One ggml type: its block layout (ggml-common.h), its ids in GGUF files, and its encoder and decoder side by side.
 * Element types (F32, F16, BF16) convert whole arrays; block types encode and decode one block at a time.
 */
export type GgmlType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K' | 'Q3_K' | 'Q2_K' | 'MXFP4';

/** Per-column importance (the calibration imatrix), indexed by column. */
export type Importance = Float32Array | Float64Array;

interface CodecBase {
  type: GgmlType;
  /** ggml's enum ggml_type (GGML_TYPE_*). */
  id: number;
  /** llama.cpp's general.file_type for a file that is mostly this type (LLAMA_FTYPE_*), when it has one. */
  fileType?: number;
  /** Values per block. */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
  /** Written only for weights stored in this type (gpt-oss's MXFP4 experts, repacked): not a --type choice. */
  storedOnly?: boolean;
}

export interface ElementCodec extends CodecBase {
  kind: 'element';
  /** n values of x into out (n·typeSize bytes). */
  encode(x: Float32Array, n: number, out: Uint8Array): void;
  /** n values from bytes into out. */
  decode(bytes: Uint8Array, n: number, out: Float32Array): void;
}

export interface BlockCodec extends CodecBase {
  kind: 'block';
  /**
   * The block of row values x[xo ..] into out[at ..] (zero-filled); imp (when given) is the importance of every
   * column of the row, indexed like x. Arithmetic is float32, as ggml's C encoders compute.
   */
  encode(x: Float32Array, xo: number, out: Uint8Array, at: number, imp: Float32Array | undefined): void;
  /** The block at bytes[at ..] into out[y ..]. */
  decode(bytes: Uint8Array, at: number, out: Float32Array, y: number): void;
}

export type Codec = ElementCodec | BlockCodec;
