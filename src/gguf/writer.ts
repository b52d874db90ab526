/**
 * A GGUF v3 writer (the file format of llama.cpp; its spec is docs/gguf.md in ggml and gguf-py's gguf_writer.py):
 * the magic "GGUF", version 3, the tensor and key-value counts (u64), the metadata key-values, the tensor infos
 * (name, dims innermost first, ggml type, offset into the data section), padding to the alignment, then each
 * tensor's bytes at its aligned offset. Everything but the tensor data is known before the data is written, so
 * the header goes first and the tensors stream after it, one at a time, in plan order.
 */
import * as fs from 'node:fs';
import { InternalError } from '../errors';
import { GGUF_ALIGNMENT } from '../io/gguf-reader';

export type GgufValue =
  | { type: 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'u64' | 'i64' | 'f64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; of: 'u8' | 'i32' | 'u32' | 'f32' | 'string' | 'bool'; value: (number | string | boolean)[] };

const TYPE_ID = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

export interface GgufTensorPlan {
  name: string;
  /** PyTorch order (outermost first); written innermost first, as ggml's ne. */
  shape: number[];
  /** ggml_type id. */
  type: number;
  bytes: number;
}

/** Little-endian byte builder for the header. */
class Bytes {
  private chunks: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  scalar(type: Exclude<GgufValue['type'], 'array' | 'string'>, v: number | boolean): void {
    const size = { u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, u64: 8, i64: 8, f64: 8 }[type];
    const b = Buffer.alloc(size);
    switch (type) {
      case 'u8':
        b.writeUInt8(v as number);
        break;
      case 'i8':
        b.writeInt8(v as number);
        break;
      case 'bool':
        b.writeUInt8(v ? 1 : 0);
        break;
      case 'u16':
        b.writeUInt16LE(v as number);
        break;
      case 'i16':
        b.writeInt16LE(v as number);
        break;
      case 'u32':
        b.writeUInt32LE(v as number);
        break;
      case 'i32':
        b.writeInt32LE(v as number);
        break;
      case 'f32':
        b.writeFloatLE(v as number);
        break;
      case 'u64':
        b.writeBigUInt64LE(BigInt(v as number));
        break;
      case 'i64':
        b.writeBigInt64LE(BigInt(v as number));
        break;
      case 'f64':
        b.writeDoubleLE(v as number);
        break;
    }
    this.push(b);
  }
  value(v: GgufValue): void {
    this.u32(TYPE_ID[v.type]);
    if (v.type === 'string') this.string(v.value);
    else if (v.type === 'array') {
      this.u32(TYPE_ID[v.of]);
      this.u64(v.value.length);
      if (v.of === 'string') for (const s of v.value) this.string(String(s));
      else for (const x of v.value) this.scalar(v.of, x as number | boolean);
    } else this.scalar(v.type, v.value as number & boolean);
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

function align(n: number): number {
  return Math.ceil(n / GGUF_ALIGNMENT) * GGUF_ALIGNMENT;
}

/** Writes one .gguf file: the header from the plan, then the tensors in plan order. */
export class GgufWriter {
  private readonly fd: number;
  private next = 0;
  private position: number;
  private readonly offsets: number[] = [];
  readonly dataStart: number;
  readonly totalBytes: number;

  constructor(
    file: string,
    metadata: [string, GgufValue][],
    private readonly tensors: GgufTensorPlan[],
  ) {
    const h = new Bytes();
    h.u32(0x46554747); // "GGUF" little-endian
    h.u32(3);
    h.u64(tensors.length);
    h.u64(metadata.length);
    for (const [k, v] of metadata) {
      h.string(k);
      h.value(v);
    }
    let offset = 0;
    for (const t of tensors) {
      h.string(t.name);
      h.u32(t.shape.length);
      for (const d of [...t.shape].reverse()) h.u64(d);
      h.u32(t.type);
      h.u64(offset);
      this.offsets.push(offset);
      offset = align(offset + t.bytes);
    }
    const header = h.concat();
    this.dataStart = align(header.length);
    this.totalBytes =
      this.dataStart + (tensors.length ? this.offsets[tensors.length - 1] + tensors[tensors.length - 1].bytes : 0);
    this.fd = fs.openSync(file, 'w');
    writeAll(this.fd, header, 0);
    this.position = header.length;
  }

  expected(): GgufTensorPlan | undefined {
    return this.tensors[this.next];
  }

  write(name: string, bytes: Uint8Array): void {
    const t = this.tensors[this.next];
    if (!t || t.name !== name)
      throw new InternalError(`GgufWriter: expected ${t ? `tensor "${t.name}"` : 'no more tensors'}, got "${name}"`);
    if (bytes.byteLength !== t.bytes)
      throw new InternalError(`GgufWriter: "${name}" has ${bytes.byteLength} bytes, planned ${t.bytes}`);
    const at = this.dataStart + this.offsets[this.next];
    if (at > this.position) writeAll(this.fd, new Uint8Array(at - this.position), this.position);
    writeAll(this.fd, bytes, at);
    this.position = at + bytes.byteLength;
    this.next++;
  }

  finish(): void {
    if (this.next !== this.tensors.length)
      throw new InternalError(`GgufWriter: finish() with ${this.tensors.length - this.next} tensors unwritten`);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }

  abort(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      /* already failing */
    }
  }
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.byteLength)
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30), position + done);
}
