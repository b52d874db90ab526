/**
 * Sharded safetensors writer. It is given the whole plan (names, dtypes, shapes) up front, so every
 * shard's header is known before any data is written, then it takes the tensors in plan order and streams
 * them to disk. Like gguf-py's writer it is a state machine and refuses calls out of order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InternalError } from '../errors';
import { DType } from './dtype';
import { crashPoint } from './crash';
import { indexJson, INDEX_FILE } from './index-file';
import { tensorBytes } from './safetensors';

/** Shard size when none is asked for: transformers' save_pretrained default (max_shard_size "5GB"). */
export const DEFAULT_MAX_SHARD_BYTES = 5e9;

export interface PlannedTensor {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface WriterOptions {
  /** Start a new shard before a tensor that would take the current one past this size. */
  maxShardBytes: number;
  metadata?: Record<string, string>;
  /** Extra `__metadata__` entries that go in the shard holding the named tensor (e.g. a packed weight's bits). */
  tensorMetadata?: Map<string, Record<string, string>>;
  /** File name when everything fits in one shard (default model.safetensors). */
  singleFileName?: string;
  /** The name stored in the headers and the index for a tensor's name (a nested language model's prefix). */
  storedName?: (name: string) => string;
}

interface Shard {
  file: string;
  tensors: PlannedTensor[];
  header: Uint8Array;
  dataBytes: number;
}

export interface WrittenCheckpoint {
  shards: string[];
  totalSize: number;
  tensors: number;
}

/** HF's shard names: model-00001-of-00003.safetensors, or model.safetensors when there is one. */
export function shardName(i: number, n: number): string {
  if (n === 1) return 'model.safetensors';
  const pad = (x: number) => String(x).padStart(5, '0');
  return `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

/** Groups tensors into shards in plan order, the way transformers does. */
export function planShards(plan: PlannedTensor[], maxShardBytes: number): PlannedTensor[][] {
  const groups: PlannedTensor[][] = [[]];
  let size = 0;
  for (const t of plan) {
    const b = tensorBytes(t);
    if (size > 0 && size + b > maxShardBytes) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(t);
    size += b;
  }
  return groups;
}

/** The header bytes (8-byte length + JSON padded with spaces to a multiple of 8) for tensors laid out in order. */
export function encodeHeader(
  tensors: PlannedTensor[],
  metadata?: Record<string, string>,
): { header: Uint8Array; dataBytes: number } {
  const json: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) json.__metadata__ = metadata;
  let at = 0;
  for (const t of tensors) {
    const b = tensorBytes(t);
    json[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + b] };
    at += b;
  }
  let text = Buffer.from(JSON.stringify(json), 'utf8');
  const pad = (8 - (text.length % 8)) % 8;
  if (pad) text = Buffer.concat([text, Buffer.alloc(pad, 0x20)]);
  const header = new Uint8Array(8 + text.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(text.length), true);
  header.set(text, 8);
  return { header, dataBytes: at };
}

/** What writes a checkpoint's tensors in plan order: ShardedWriter, or one that re-lays them out (fused experts). */
export interface TensorSink {
  write(name: string, bytes: Uint8Array): void;
  writeChunks(name: string, pieces: Iterable<Uint8Array>): void;
  finish(): WrittenCheckpoint;
}

export class ShardedWriter implements TensorSink {
  private state: 'ready' | 'writing' | 'finished' | 'failed' = 'ready';
  private readonly shards: Shard[];
  private readonly order: { shard: number; tensor: PlannedTensor }[] = [];
  private next = 0;
  private fd: number | undefined;
  private fdShard = -1;
  private readonly storedName: (name: string) => string;

  constructor(
    private readonly dir: string,
    plan: PlannedTensor[],
    opts: WriterOptions,
  ) {
    const names = new Set<string>();
    for (const t of plan) {
      if (names.has(t.name)) throw new InternalError(`ShardedWriter: tensor "${t.name}" planned twice`);
      names.add(t.name);
    }
    const groups = planShards(plan, opts.maxShardBytes);
    this.shards = groups.map((tensors, i) => {
      let metadata = opts.metadata;
      for (const t of tensors) {
        const extra = opts.tensorMetadata?.get(t.name);
        if (extra) metadata = { ...metadata, ...extra };
      }
      const stored = opts.storedName;
      const { header, dataBytes } = encodeHeader(
        stored ? tensors.map((t) => ({ ...t, name: stored(t.name) })) : tensors,
        metadata,
      );
      const name = groups.length === 1 && opts.singleFileName ? opts.singleFileName : shardName(i, groups.length);
      return { file: path.join(dir, name), tensors, header, dataBytes };
    });
    this.shards.forEach((s, i) => s.tensors.forEach((tensor) => this.order.push({ shard: i, tensor })));
    this.storedName = opts.storedName ?? ((n) => n);
  }

  /** The tensor the writer expects next, or undefined when all are written. */
  expected(): PlannedTensor | undefined {
    return this.order[this.next]?.tensor;
  }

  get shardCount(): number {
    return this.shards.length;
  }

  /** Writes the next tensor of the plan; `name` and the byte length must match it. */
  write(name: string, bytes: Uint8Array): void {
    this.writeChunks(name, [bytes]);
  }

  /** Writes the next tensor of the plan from pieces, so a huge tensor never has to be whole in memory. */
  writeChunks(name: string, pieces: Iterable<Uint8Array>): void {
    const slot = this.begin(name);
    try {
      let written = 0;
      for (const bytes of pieces) written = this.put(name, slot.want, written, bytes);
      this.end(name, slot.want, written);
    } catch (e) {
      this.fail();
      throw e;
    }
  }

  /** writeChunks from pieces made asynchronously (e.g. one expert of a fused tensor at a time); `seen` sees each. */
  async writeAsync(name: string, pieces: AsyncIterable<Uint8Array>, seen?: (p: Uint8Array) => void): Promise<void> {
    const slot = this.begin(name);
    try {
      let written = 0;
      for await (const bytes of pieces) {
        seen?.(bytes);
        written = this.put(name, slot.want, written, bytes);
      }
      this.end(name, slot.want, written);
    } catch (e) {
      this.fail();
      throw e;
    }
  }

  private begin(name: string): { want: number } {
    if (this.state === 'finished' || this.state === 'failed')
      throw new InternalError(`ShardedWriter: write("${name}") after ${this.state}`);
    const slot = this.order[this.next];
    if (!slot) throw new InternalError(`ShardedWriter: write("${name}") but every planned tensor is written`);
    if (slot.tensor.name !== name)
      throw new InternalError(`ShardedWriter: expected tensor "${slot.tensor.name}" next, got "${name}"`);
    this.state = 'writing';
    try {
      if (slot.shard !== this.fdShard) this.openShard(slot.shard);
    } catch (e) {
      this.fail();
      throw e;
    }
    return { want: tensorBytes(slot.tensor) };
  }

  private put(name: string, want: number, written: number, bytes: Uint8Array): number {
    if (written + bytes.byteLength > want)
      throw new InternalError(`ShardedWriter: "${name}" has more than the ${want} bytes planned`);
    writeAll(this.fd!, bytes);
    return written + bytes.byteLength;
  }

  private end(name: string, want: number, written: number): void {
    if (written !== want) throw new InternalError(`ShardedWriter: "${name}" has ${written} bytes, planned ${want}`);
    if (this.next++ === 0) crashPoint('mid-shard');
  }

  /** Closes the last shard and writes the index; every planned tensor must have been written. */
  finish(): WrittenCheckpoint {
    if (this.state === 'finished' || this.state === 'failed')
      throw new InternalError(`ShardedWriter: finish() after ${this.state}`);
    if (this.next !== this.order.length)
      throw new InternalError(
        `ShardedWriter: finish() with ${this.order.length - this.next} tensors unwritten (next "${this.expected()?.name}")`,
      );
    if (this.order.length === 0) this.openShard(0); // an empty checkpoint is still a valid file
    this.closeShard();
    const totalSize = this.shards.reduce((s, x) => s + x.dataBytes, 0);
    if (this.shards.length > 1) {
      const map: [string, string][] = [];
      for (const s of this.shards)
        for (const t of s.tensors) map.push([this.storedName(t.name), path.basename(s.file)]);
      fs.writeFileSync(path.join(this.dir, INDEX_FILE), indexJson(map, totalSize));
    }
    this.state = 'finished';
    return { shards: this.shards.map((s) => s.file), totalSize, tensors: this.order.length };
  }

  private openShard(i: number): void {
    this.closeShard();
    if (i === 1) crashPoint('after-first-shard');
    this.fd = fs.openSync(this.shards[i].file, 'w');
    this.fdShard = i;
    writeAll(this.fd, this.shards[i].header);
  }

  private closeShard(): void {
    if (this.fd !== undefined) {
      fs.fsyncSync(this.fd);
      fs.closeSync(this.fd);
    }
    this.fd = undefined;
  }

  private fail(): void {
    this.state = 'failed';
    try {
      this.closeShard();
    } catch {
      /* already failing */
    }
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) {
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30));
  }
}
