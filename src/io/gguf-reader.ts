/**
 * Reads a GGUF file's header (metadata and tensor infos) without its tensor data, with positioned reads of the
 * header's bytes only: GGUF files are often many GB. Values are decoded for the scalar, string and array types
 * of GGUF v3. Tensor data is read later, a range at a time (`readRange`).
 */
import * as fs from 'node:fs';
import { CheckpointError } from '../errors';

/** GGUF's default data alignment (general.alignment when absent); the writer pads to it too. */
export const GGUF_ALIGNMENT = 32;

/** A larger header is a corrupt or hostile file: a 256k-token vocabulary takes a few MB. */
const MAX_HEADER_BYTES = 512 * 1024 * 1024;
/** Header bytes read at a time (and the first read): most headers fit in one. */
const HEADER_CHUNK = 1 << 20;
/** Node's readSync reads at most 2 GiB at once. */
const READ_CHUNK_BYTES = 1 << 30;

export interface GgufTensorInfo {
  name: string;
  /** PyTorch order, outermost first. */
  shape: number[];
  type: number;
  /** Absolute offset of the data in the file. */
  offset: number;
}

export interface GgufFile {
  file: string;
  version: number;
  metadata: Map<string, unknown>;
  tensors: GgufTensorInfo[];
  /** Where the tensor data starts (the header, padded to the alignment). */
  dataStart: number;
  fileSize: number;
  /** Bytes of the file read to parse the header (whole chunks, at most a little past its end). */
  bytesRead: number;
}

function bad(file: string, what: string): CheckpointError {
  return new CheckpointError(`not a valid GGUF file: ${what}`, {
    file,
    hint: 'the file is truncated or corrupt; write or download it again',
  });
}

/** Reads exactly `length` bytes at `position` of an open GGUF file, or fails naming the file. */
export function readRange(fd: number, file: string, position: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const got = fs.readSync(fd, buf, done, Math.min(READ_CHUNK_BYTES, length - done), position + done);
    if (got === 0)
      throw bad(file, `unexpected end of file at byte ${position + done} (wanted ${length} bytes at ${position})`);
    done += got;
  }
  return buf;
}

export function readGguf(file: string): GgufFile {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new CheckpointError(
      `cannot open the GGUF file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      { file, hint: 'check the path' },
    );
  }
  try {
    return parse(fd, file, fs.fstatSync(fd).size);
  } finally {
    fs.closeSync(fd);
  }
}

function parse(fd: number, file: string, fileSize: number): GgufFile {
  // The header's bytes [0, loaded), grown by positioned reads as the parser needs them.
  let buf = Buffer.alloc(0);
  let at = 0;
  const need = (n: number) => {
    if (at + n <= buf.length) return;
    if (at + n > fileSize) throw bad(file, `truncated header (wanted ${at + n} bytes, the file has ${fileSize})`);
    if (at + n > MAX_HEADER_BYTES) throw bad(file, `header larger than ${MAX_HEADER_BYTES} bytes`);
    const want = Math.min(fileSize, Math.max(at + n, 2 * buf.length, HEADER_CHUNK));
    const more = Buffer.alloc(want);
    buf.copy(more);
    let done = buf.length;
    while (done < want) {
      const got = fs.readSync(fd, more, done, want - done, done);
      if (got === 0) throw bad(file, 'unexpected end of file in the header');
      done += got;
    }
    buf = more;
  };
  const u32 = () => (need(4), (at += 4), buf.readUInt32LE(at - 4));
  const u64 = () => {
    need(8);
    at += 8;
    const v = buf.readBigUInt64LE(at - 8);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(file, `a count or size of ${v} at byte ${at - 8}`);
    return Number(v);
  };
  const str = () => {
    const n = u64();
    need(n);
    at += n;
    return buf.toString('utf8', at - n, at);
  };
  const scalar = (type: number): unknown => {
    switch (type) {
      case 0:
        return (need(1), buf.readUInt8(at++));
      case 1:
        return (need(1), buf.readInt8(at++));
      case 2:
        return (need(2), (at += 2), buf.readUInt16LE(at - 2));
      case 3:
        return (need(2), (at += 2), buf.readInt16LE(at - 2));
      case 4:
        return u32();
      case 5:
        return (need(4), (at += 4), buf.readInt32LE(at - 4));
      case 6:
        return (need(4), (at += 4), buf.readFloatLE(at - 4));
      case 7:
        return (need(1), buf.readUInt8(at++) !== 0);
      case 8:
        return str();
      case 10:
        return u64();
      case 11:
        return (need(8), (at += 8), Number(buf.readBigInt64LE(at - 8)));
      case 12:
        return (need(8), (at += 8), buf.readDoubleLE(at - 8));
      default:
        throw bad(file, `value type ${type}`);
    }
  };
  if (u32() !== 0x46554747) throw bad(file, 'no GGUF magic');
  const version = u32();
  if (version !== 3) throw bad(file, `version ${version}, expected 3`);
  const nTensors = u64();
  const nKv = u64();
  const metadata = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const type = u32();
    if (type === 9) {
      const of = u32();
      const n = u64();
      const arr: unknown[] = [];
      for (let j = 0; j < n; j++) arr.push(scalar(of));
      metadata.set(key, arr);
    } else metadata.set(key, scalar(type));
  }
  const infos: { name: string; shape: number[]; type: number; rel: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const dims = u32();
    if (dims > 4) throw bad(file, `tensor "${name}" has ${dims} dimensions`);
    const ne: number[] = [];
    for (let d = 0; d < dims; d++) ne.push(u64());
    const type = u32();
    infos.push({ name, shape: ne.reverse(), type, rel: u64() });
  }
  const alignment = Number(metadata.get('general.alignment') ?? GGUF_ALIGNMENT);
  if (!Number.isInteger(alignment) || alignment < 1) throw bad(file, `general.alignment ${alignment}`);
  const dataStart = Math.ceil(at / alignment) * alignment;
  return {
    file,
    version,
    metadata,
    tensors: infos.map(({ rel, ...t }) => ({ ...t, offset: dataStart + rel })),
    dataStart,
    fileSize,
    bytesRead: buf.length,
  };
}
