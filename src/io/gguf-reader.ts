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

/** A cursor over the header's bytes [0, loaded), grown by positioned reads as the parser needs them. */
class HeaderCursor {
  buf = Buffer.alloc(0);
  at = 0;

  constructor(
    private readonly fd: number,
    private readonly file: string,
    private readonly fileSize: number,
  ) {}

  need(n: number): void {
    const { buf, at, file, fileSize } = this;
    if (at + n <= buf.length) return;
    if (at + n > fileSize) throw bad(file, `truncated header (wanted ${at + n} bytes, the file has ${fileSize})`);
    if (at + n > MAX_HEADER_BYTES) throw bad(file, `header larger than ${MAX_HEADER_BYTES} bytes`);
    const want = Math.min(fileSize, Math.max(at + n, 2 * buf.length, HEADER_CHUNK));
    const more = Buffer.alloc(want);
    buf.copy(more);
    let done = buf.length;
    while (done < want) {
      const got = fs.readSync(this.fd, more, done, want - done, done);
      if (got === 0) throw bad(file, 'unexpected end of file in the header');
      done += got;
    }
    this.buf = more;
  }

  /** Advances by `n` bytes (read in first), returning the offset they start at. */
  private take(n: number): number {
    this.need(n);
    this.at += n;
    return this.at - n;
  }

  /** The next `n` bytes, read in first (so never a view of the buffer before it grew). */
  private next(n: number): Buffer {
    const start = this.take(n);
    return this.buf.subarray(start, start + n);
  }

  u32(): number {
    return this.next(4).readUInt32LE(0);
  }

  u64(): number {
    const start = this.take(8);
    const v = this.buf.readBigUInt64LE(start);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(this.file, `a count or size of ${v} at byte ${start}`);
    return Number(v);
  }

  str(): string {
    const n = this.u64();
    const start = this.take(n);
    return this.buf.toString('utf8', start, start + n);
  }

  scalar(type: number): unknown {
    switch (type) {
      case 0:
        return this.next(1).readUInt8(0);
      case 1:
        return this.next(1).readInt8(0);
      case 2:
        return this.next(2).readUInt16LE(0);
      case 3:
        return this.next(2).readInt16LE(0);
      case 4:
        return this.u32();
      case 5:
        return this.next(4).readInt32LE(0);
      case 6:
        return this.next(4).readFloatLE(0);
      case 7:
        return this.next(1).readUInt8(0) !== 0;
      case 8:
        return this.str();
      case 10:
        return this.u64();
      case 11:
        return Number(this.next(8).readBigInt64LE(0));
      case 12:
        return this.next(8).readDoubleLE(0);
      default:
        throw bad(this.file, `value type ${type}`);
    }
  }
}

function parse(fd: number, file: string, fileSize: number): GgufFile {
  const c = new HeaderCursor(fd, file, fileSize);
  if (c.u32() !== 0x46554747) throw bad(file, 'no GGUF magic');
  const version = c.u32();
  if (version !== 3) throw bad(file, `version ${version}, expected 3`);
  const nTensors = c.u64();
  const nKv = c.u64();
  const metadata = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const key = c.str();
    const type = c.u32();
    if (type === 9) {
      const of = c.u32();
      const n = c.u64();
      const arr: unknown[] = [];
      for (let j = 0; j < n; j++) arr.push(c.scalar(of));
      metadata.set(key, arr);
    } else metadata.set(key, c.scalar(type));
  }
  const infos: { name: string; shape: number[]; type: number; rel: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = c.str();
    const dims = c.u32();
    if (dims > 4) throw bad(file, `tensor "${name}" has ${dims} dimensions`);
    const ne: number[] = [];
    for (let d = 0; d < dims; d++) ne.push(c.u64());
    const type = c.u32();
    infos.push({ name, shape: ne.reverse(), type, rel: c.u64() });
  }
  const alignment = Number(metadata.get('general.alignment') ?? GGUF_ALIGNMENT);
  if (!Number.isInteger(alignment) || alignment < 1) throw bad(file, `general.alignment ${alignment}`);
  const dataStart = Math.ceil(c.at / alignment) * alignment;
  return {
    file,
    version,
    metadata,
    tensors: infos.map(({ rel, ...t }) => ({ ...t, offset: dataStart + rel })),
    dataStart,
    fileSize,
    bytesRead: c.buf.length,
  };
}
