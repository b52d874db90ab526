/**
 * safetensors header parsing and positioned tensor reads.
 * Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor data.
 * A file is opened by its header only; tensors are read one at a time, never the whole file.
 */
import * as fs from 'node:fs';
import { CheckpointError, shown } from '../errors';
import { DType, dtypeBytes, isDType } from './dtype';

/** A larger header is a corrupt or hostile file: real ones are well under 10 MiB. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** Node's readSync reads at most 2 GiB at once; read big tensors in pieces of this size. */
const READ_CHUNK_BYTES = 1 << 30;

export interface TensorRef {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute path of the shard holding it. */
  file: string;
  /** Absolute byte range in the file (of the qweight part, for a packed weight). */
  begin: number;
  end: number;
  /** Set when the weight is stored quantized (src/io/packed.ts): its parts, read and dequantized by TensorReader. */
  packed?: PackedParts;
  /** Set when the weight is stored as FP8 with block scales (src/io/fp8.ts): read dequantized by TensorReader. */
  fp8?: Fp8Parts;
  /** Set when the weight is stored as MXFP4 (src/io/mxfp4.ts): its blocks and scales, decoded by TensorReader. */
  mxfp4?: { blocks: TensorRef; scales: TensorRef };
  /** Set when the weight is stored as compressed-tensors or GPTQ integer codes (src/io/intquant.ts). */
  intq?: IntQuantParts;
  /** Set when the tensor is a view of one slice of a fused tensor (per-expert views: src/model/fused.ts). */
  view?: SliceView;
}

/**
 * One expert's tensor inside a fused tensor whose first axis is the experts: the slice source[index] ([a, b], or
 * [b] read as [1, b]), then `cols.count` columns, every `cols.step`-th from `cols.start`, then transposed when
 * `transpose`.
 */
export interface SliceView {
  source: TensorRef;
  index: number;
  cols?: { start: number; step: number; count: number };
  /** Rows start..start+count of the slice, whole (a [out, in] slice holding gate rows then up rows). */
  rows?: { start: number; count: number };
  transpose: boolean;
}

/** A packed weight's parameters, from its shard metadata (the layout: src/io/packed.ts). */
export interface PackedInfo {
  bits: number;
  group_size: number;
  shape: [number, number];
  dtype: DType;
  method: string;
}

/** Where a packed weight's parts live. */
export interface PackedParts {
  info: PackedInfo;
  qweight: TensorRef;
  scales: TensorRef;
  zeros: TensorRef;
}

/** Where an FP8 weight's parts live (the layout: src/io/fp8.ts); the logical tensor has the compute dtype. */
export interface Fp8Parts {
  /** F8_E4M3 [rows, cols]. */
  weight: TensorRef;
  /** F32 or BF16 [ceil(rows / block[0]), ceil(cols / block[1])]. */
  scale: TensorRef;
  block: [number, number];
  /** Scales are powers of two (quantization_config.scale_fmt "ue8m0"): kept so when re-encoding. */
  ue8m0: boolean;
}

/**
 * Where a compressed-tensors or GPTQ weight's parts live (the layouts: src/io/ct-read.ts, src/io/gptq-read.ts);
 * the logical tensor [out, in] has the model's dtype and is read dequantized.
 */
export interface IntQuantParts {
  format: 'compressed-tensors' | 'gptq';
  bits: number;
  /** Input columns per group (the whole row for per-channel scales). */
  groupSize: number;
  symmetric: boolean;
  /** Codes: CT weight_packed [out, words] (or I8 [out, in] for int-quantized), GPTQ qweight [in·b/32, out]. */
  codes: TensorRef;
  /** CT weight_scale [out, groups], GPTQ scales [groups, out]. */
  scale: TensorRef;
  /** CT weight_zero_point (packed along dim 0; absent when symmetric), GPTQ qzeros. */
  zero?: TensorRef;
  /** The group of each input column (CT weight_g_idx, GPTQ g_idx); absent: column / groupSize. */
  gIdx?: TensorRef;
  /** CT weight_shape, read for the shape at open (kept so writers can skip it). */
  shape?: TensorRef;
  /** GPTQ v1 (checkpoint_format "gptq") stores each zero point minus one; gptq_v2 stores it as it is. */
  zeroMinusOne?: boolean;
  /** What inspect shows: "compressed-tensors int4 group 128 symmetric". */
  scheme: string;
}

export interface SafetensorsHeader {
  file: string;
  fileSize: number;
  /** Where the data section starts: 8 + header length. */
  dataStart: number;
  metadata: Record<string, string>;
  /** In file order (by data offset). */
  tensors: TensorRef[];
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function tensorBytes(t: Pick<TensorRef, 'dtype' | 'shape'>): number {
  return numel(t.shape) * dtypeBytes(t.dtype);
}

function bad(
  file: string,
  why: string,
  hint = 'the file is corrupt or not a safetensors file; re-download or re-save it',
): CheckpointError {
  return new CheckpointError(`bad safetensors file: ${why}`, { file, hint });
}

/** Reads exactly `length` bytes at `position`, or fails naming the file. */
export function readExact(fd: number, file: string, position: number, length: number, into?: Uint8Array): Uint8Array {
  const buf = into ?? new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const want = Math.min(READ_CHUNK_BYTES, length - done);
    const got = fs.readSync(fd, buf, done, want, position + done);
    if (got === 0)
      throw bad(
        file,
        `unexpected end of file at byte ${position + done} (wanted ${length} bytes at ${position})`,
        'the file is truncated; re-download or re-save it',
      );
    done += got;
  }
  return buf;
}

function isNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/** Parses and validates the header of one safetensors file. Reads only the header bytes. */
export function readHeader(file: string, onRead?: (bytes: number) => void): SafetensorsHeader {
  // A folder, FIFO or device named as a shard: opening a FIFO would block, reading a folder fails with EISDIR.
  const st = fs.statSync(file, { throwIfNoEntry: false });
  if (st && !st.isFile())
    throw new CheckpointError('shard is not a regular file', {
      file,
      hint: 'the index or folder names something that is not a safetensors file',
    });
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new CheckpointError(`cannot open shard: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      file,
      hint: 'check the path and permissions',
    });
  }
  try {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 8) throw bad(file, `file is ${fileSize} bytes, too short for a header`);
    const lenBytes = readExact(fd, file, 0, 8);
    const n = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
    if (n > MAX_HEADER_BYTES) throw bad(file, `header length ${n} is above the ${MAX_HEADER_BYTES}-byte cap`);
    if (8 + n > fileSize)
      throw bad(
        file,
        `header length ${n} runs past the end of the ${fileSize}-byte file`,
        'the file is truncated or corrupt; re-download or re-save it',
      );
    const headerBytes = readExact(fd, file, 8, n);
    onRead?.(8 + n);
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
    } catch (e) {
      throw bad(file, `header is not valid JSON (${(e as Error).message})`);
    }
    return validateHeader(file, fileSize, 8 + n, json);
  } finally {
    fs.closeSync(fd);
  }
}

function validateHeader(file: string, fileSize: number, dataStart: number, json: unknown): SafetensorsHeader {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw bad(file, 'header is not a JSON object');
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: TensorRef[] = [];
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(file, '__metadata__ is not an object');
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw bad(file, `__metadata__.${k} is not a string`);
        metadata[k] = s;
      }
      continue;
    }
    if (typeof v !== 'object' || v === null) throw bad(file, `tensor "${name}": entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = v as Record<string, unknown>;
    if (!isDType(dtype))
      throw bad(
        file,
        `tensor "${name}": unknown dtype ${shown(dtype)}`,
        'moe reads F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL',
      );
    if (!Array.isArray(shape) || !shape.every(isNonNegInt))
      throw bad(file, `tensor "${name}": shape ${shown(shape)} is not a list of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt) || offsets[0] > offsets[1]) {
      throw bad(file, `tensor "${name}": data_offsets ${shown(offsets)} are not [begin, end]`);
    }
    const [b, e] = offsets as number[];
    const want = numel(shape) * dtypeBytes(dtype);
    if (e - b !== want)
      throw bad(file, `tensor "${name}": ${e - b} bytes for ${dtype}${JSON.stringify(shape)}, which needs ${want}`);
    if (e > dataSize)
      throw bad(
        file,
        `tensor "${name}": data_offsets [${b}, ${e}] run past the ${dataSize} bytes of data`,
        'the file is truncated or corrupt; re-download or re-save it',
      );
    tensors.push({ name, dtype, shape: shape as number[], file, begin: dataStart + b, end: dataStart + e });
  }
  tensors.sort((x, y) => x.begin - y.begin || x.end - y.end);
  // The data must be covered exactly: no overlap, no hole, nothing after the last tensor.
  let at = dataStart;
  for (const t of tensors) {
    if (t.begin < at)
      throw bad(
        file,
        `tensor "${t.name}" overlaps the tensor before it (data_offsets start at ${t.begin - dataStart}, previous ends at ${at - dataStart})`,
      );
    if (t.begin > at)
      throw bad(
        file,
        `hole in the data before tensor "${t.name}" (bytes ${at - dataStart}..${t.begin - dataStart} belong to no tensor)`,
      );
    at = t.end;
  }
  if (at !== fileSize) throw bad(file, `${fileSize - at} bytes after the last tensor belong to no tensor`);
  return { file, fileSize, dataStart, metadata, tensors };
}
