/**
 * Routed experts stored fused: one 3-D tensor per projection whose first axis is the experts (gpt-oss:
 * `mlp.experts.gate_up_proj` [E, H, 2I] with gate and up alternating on the last axis, `down_proj` [E, I, H], and
 * their biases [E, 2I], [E, H]). moe works on per-expert tensors (Architecture.expertKey, expertBiasKey in nn.Linear
 * orientation [out, in]), so a fused checkpoint is opened as per-expert views of its stored tensors (one expert is
 * read at a time, by positioned reads of its slice) and written back fused from per-expert tensors.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { PlannedTensor, ShardedWriter, TensorSink, WrittenCheckpoint, WriterOptions } from '../io/writer';
import type { Checkpoint, TensorReader } from '../io/checkpoint';
import { encodeMxfp4, mxfp4PartNames } from '../io/mxfp4';
import { dtypeBytes, toFloat32 } from '../io/dtype';
import type { SliceView, TensorRef } from '../io/safetensors';
import type { DType } from '../io/dtype';
import type { Architecture, FusedExpertLayout, Proj } from './arch';

/** One stored tensor of a fused layer and the per-expert tensors it holds. */
export interface FusedTensor {
  name: string;
  layer: number;
  /** 'gateUp' tensors hold two projections per expert; the others one. */
  kind: 'gateUp' | 'gateUpBias' | 'down' | 'downBias';
}

function storedTensors(layout: FusedExpertLayout, layer: number): FusedTensor[] {
  const out: FusedTensor[] = [{ name: layout.gateUp(layer), layer, kind: 'gateUp' }];
  if (layout.gateUpBias) out.push({ name: layout.gateUpBias(layer), layer, kind: 'gateUpBias' });
  out.push({ name: layout.down(layer), layer, kind: 'down' });
  if (layout.downBias) out.push({ name: layout.downBias(layer), layer, kind: 'downBias' });
  return out;
}

/** The per-expert (logical) names a stored fused tensor holds for expert e, in the order they are written. */
export function membersOf(arch: Architecture, f: FusedTensor, e: number): string[] {
  const bias = (p: Proj) => {
    const key = arch.expertBiasKey(f.layer, e, p);
    if (!key) throw new Error(`${arch.modelType} stores expert biases but names none`);
    return key;
  };
  switch (f.kind) {
    case 'gateUp':
      return [arch.expertKey(f.layer, e, 'gate'), arch.expertKey(f.layer, e, 'up')];
    case 'gateUpBias':
      return [bias('gate'), bias('up')];
    case 'down':
      return [arch.expertKey(f.layer, e, 'down')];
    case 'downBias':
      return [bias('down')];
  }
}

function expectShape(t: TensorRef, want: number[], ckpt: Checkpoint): void {
  if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
    throw new CheckpointError(`tensor "${t.name}" has shape [${t.shape}], config.json implies [${want}]`, {
      file: t.file ?? ckpt.dir,
      hint: 'the config does not match the weights',
    });
}

/** The views of expert e inside stored tensor t. */
function viewsOf(arch: Architecture, f: FusedTensor, t: TensorRef, e: number, layout: FusedExpertLayout): TensorRef[] {
  const I = arch.expertWidth;
  const names = membersOf(arch, f, e);
  const interleaved = layout.interleaved;
  return names.map((name, k) => {
    const cols =
      f.kind === 'gateUp' || f.kind === 'gateUpBias'
        ? interleaved
          ? { start: k, step: 2, count: I }
          : { start: k * I, step: 1, count: I }
        : undefined;
    const transpose = f.kind === 'gateUp' || f.kind === 'down';
    // [out, in] slices: a gate or up view is a block of rows, down the whole slice
    const view: SliceView = layout.outIn
      ? { source: t, index: e, rows: f.kind === 'gateUp' ? { start: k * I, count: I } : undefined, transpose: false }
      : { source: t, index: e, cols, transpose };
    const shape =
      f.kind === 'gateUp'
        ? [I, arch.hidden]
        : f.kind === 'down'
          ? [arch.hidden, I]
          : f.kind === 'gateUpBias'
            ? [I]
            : [arch.hidden];
    const bytes = shape.reduce((a, b) => a * b, 1) * dtypeBytes(t.dtype);
    // A view's byte range is nominal (the logical size inside the stored tensor): only sizes are read from it.
    const begin = t.begin + e * ((t.end - t.begin) / t.shape[0]);
    return { name, dtype: t.dtype, shape, file: t.file, begin, end: begin + bytes, view };
  });
}

/**
 * Replaces the stored fused expert tensors of `ckpt` by per-expert views, in place and in the stored order; the
 * stored tensors are kept in `ckpt.stored` (for bit-exact copies and `inspect`).
 */
export function applyFusedViews(ckpt: Checkpoint, arch: Architecture): void {
  const layout = arch.fusedExperts;
  if (!layout || ckpt.stored) return;
  // moe's packed format keeps one tensor per expert: such a checkpoint is already in the per-expert form.
  const first = arch.moeLayers[0];
  if (
    first !== undefined &&
    !ckpt.tensors.has(layout.gateUp(first)) &&
    ckpt.tensors.has(arch.expertKey(first, 0, 'gate'))
  )
    return;
  const E = arch.numExperts;
  const replaced = new Map<string, TensorRef[]>();
  const stored = new Map<string, TensorRef>();
  for (const layer of arch.moeLayers) {
    for (const f of storedTensors(layout, layer)) {
      const t = ckpt.tensors.get(f.name);
      if (!t)
        throw new CheckpointError(`missing tensor "${f.name}" that config.json implies`, {
          file: ckpt.dir,
          hint: 'the checkpoint is incomplete or its config does not match the weights',
        });
      expectShape(t, [E, ...sliceShape(arch, f)], ckpt);
      const views: TensorRef[] = [];
      for (let e = 0; e < E; e++) views.push(...viewsOf(arch, f, t, e, layout));
      replaced.set(f.name, views);
      stored.set(f.name, t);
    }
  }
  const out = new Map<string, TensorRef>();
  for (const [name, t] of ckpt.tensors) {
    const views = replaced.get(name);
    if (!views) out.set(name, t);
    else for (const v of views) out.set(v.name, v);
  }
  ckpt.tensors = out;
  ckpt.stored = stored;
}

/** A per-expert output tensor: its bytes in `dtype`, made when the writer reaches it. */
export interface LogicalOut {
  name: string;
  /** The source tensor it is a bit-exact copy of, if it is one. */
  src?: string;
  dtype: DType;
  shape: number[];
  bytes: () => Uint8Array | Promise<Uint8Array>;
}

/** A stored output tensor made of the per-expert ones, one expert's slice at a time. */
export interface FusedOut {
  name: string;
  dtype: DType;
  shape: number[];
  pieces: () => AsyncGenerator<Uint8Array>;
}

/** Copies element `from` of `src` to element `to` of `dst` (elements of `size` bytes). */
function copyElem(dst: Uint8Array, to: number, src: Uint8Array, from: number, size: number): void {
  for (let b = 0; b < size; b++) dst[to * size + b] = src[from * size + b];
}

/**
 * One expert's slice of a stored tensor from its members' bytes: gate/up [I, H] each → [H, 2I] (interleaved or
 * side by side), down [H, I] → [I, H], biases laid side by side the same way.
 */
export function fuseSlice(
  f: FusedTensor,
  members: Uint8Array[],
  size: number,
  H: number,
  I: number,
  interleaved: boolean,
  outIn = false,
): Uint8Array {
  const want = { gateUp: I * H, gateUpBias: I, down: H * I, downBias: H }[f.kind] * size;
  if (members.some((m) => m.byteLength !== want))
    throw new Error(`fuseSlice: ${f.name} members of ${members.map((m) => m.byteLength)} bytes, expected ${want}`);
  if (f.kind === 'downBias') return members[0];
  if (outIn && (f.kind === 'down' || f.kind === 'gateUp')) {
    // nn.Linear orientation: down as it is, gate rows then up rows
    if (f.kind === 'down') return members[0];
    const out = new Uint8Array(2 * want);
    members.forEach((m, k) => out.set(m, k * want));
    return out;
  }
  if (f.kind === 'down') {
    const out = new Uint8Array(members[0].byteLength);
    for (let r = 0; r < H; r++) for (let c = 0; c < I; c++) copyElem(out, c * H + r, members[0], r * I + c, size);
    return out;
  }
  const col = (k: number, i: number) => (interleaved ? 2 * i + k : k * I + i);
  if (f.kind === 'gateUpBias') {
    const out = new Uint8Array(2 * I * size);
    members.forEach((m, k) => {
      for (let i = 0; i < I; i++) copyElem(out, col(k, i), m, i, size);
    });
    return out;
  }
  const out = new Uint8Array(2 * I * H * size);
  members.forEach((m, k) => {
    for (let i = 0; i < I; i++) for (let h = 0; h < H; h++) copyElem(out, h * 2 * I + col(k, i), m, i * H + h, size);
  });
  return out;
}

/**
 * The output tensors in stored form: for every fused layer, the per-expert items of `items` are replaced by the
 * stored tensors (each where its first member stood), made expert by expert. Every other item is passed through.
 * `experts` is the expert count of the output. When the source stores that tensor as MXFP4 (`ckpt.stored`), the
 * output does too: a copied expert's blocks and scales bit-exact, a computed (merged) one encoded by the OCP rule.
 */
export function fuseOutput(
  arch: Architecture,
  items: LogicalOut[],
  experts: number,
  source?: { ckpt: Checkpoint; reader: TensorReader },
): (LogicalOut | FusedOut)[] {
  const layout = arch.fusedExperts;
  if (!layout) return items;
  const byName = new Map(items.map((it) => [it.name, it]));
  const owner = new Map<string, FusedTensor>();
  for (const layer of arch.moeLayers)
    for (const f of storedTensors(layout, layer))
      for (let e = 0; e < experts; e++) for (const m of membersOf(arch, f, e)) owner.set(m, f);
  const out: (LogicalOut | FusedOut)[] = [];
  const emitted = new Set<string>();
  for (const it of items) {
    const f = owner.get(it.name);
    if (!f) {
      out.push(it);
      continue;
    }
    if (emitted.has(f.name)) continue;
    emitted.add(f.name);
    const first = byName.get(membersOf(arch, f, 0)[0]);
    if (!first) throw new Error(`fuseOutput: ${f.name} has no expert 0`);
    const slice = (e: number) => membersOf(arch, f, e).map((m) => byName.get(m)!);
    const perExpert = first.shape.reduce((a, b) => a * b, 1) * (f.kind === 'gateUp' || f.kind === 'gateUpBias' ? 2 : 1);
    const rest = sliceShape(arch, f);
    if (rest.reduce((a, b) => a * b, 1) !== perExpert)
      throw new Error(`fuseOutput: ${f.name} members do not fill a slice`);
    const stored = source?.ckpt.stored?.get(f.name);
    if (stored?.mxfp4 && source) {
      out.push(...mxfp4Output(arch, f, experts, slice, stored.mxfp4, source));
      continue;
    }
    const size = dtypeBytes(first.dtype);
    // An expert copied whole from a plainly stored source is its source slice, bit-exact and without decoding.
    const plain = stored && !stored.mxfp4 && !stored.packed && stored.dtype === first.dtype ? stored : undefined;
    const copied = (e: number) => (plain && source ? copiedFrom(source.ckpt, slice(e)) : undefined);
    out.push({
      name: f.name,
      dtype: first.dtype,
      shape: [experts, ...rest],
      pieces: async function* () {
        for (let e = 0; e < experts; e++) {
          const from = copied(e);
          if (from !== undefined) {
            yield source!.reader.rawSlice(plain!, from);
            continue;
          }
          const members = await Promise.all(slice(e).map((m) => m.bytes()));
          yield fuseSlice(f, members, size, arch.hidden, arch.expertWidth, layout.interleaved, layout.outIn);
        }
      },
    });
  }
  return out;
}

/** The source expert whose whole slice an output expert copies (every member a copy of that expert), if any. */
function copiedFrom(ckpt: Checkpoint, members: LogicalOut[]): number | undefined {
  const idx = members.map((m) => (m.src ? ckpt.tensors.get(m.src)?.view?.index : undefined));
  return idx.every((i) => i !== undefined && i === idx[0]) ? idx[0] : undefined;
}

/**
 * A fused tensor stored as MXFP4 (blocks [E, out, in/32, 16], scales [E, out, in/32]): expert e copies its source
 * expert's blocks and scales when all its members are copies of one source expert, else (a merged expert) its
 * members' values are encoded; the scales of encoded experts wait (1/16 of the blocks) until the scales are written.
 */
function mxfp4Output(
  arch: Architecture,
  f: FusedTensor,
  experts: number,
  slice: (e: number) => LogicalOut[],
  mx: { blocks: TensorRef; scales: TensorRef },
  { ckpt, reader }: { ckpt: Checkpoint; reader: TensorReader },
): FusedOut[] {
  const [H, I] = [arch.hidden, arch.expertWidth];
  const interleaved = arch.fusedExperts!.interleaved;
  // The stored orientation [out, in]: gate/up rows side by side (interleaved or halves), down as it is.
  const encode = async (e: number) => {
    const members = (await Promise.all(slice(e).map((m) => m.bytes()))).map((b, k) => toFloat32(b, slice(e)[k].dtype));
    if (f.kind === 'down') return encodeMxfp4(members[0], H, I);
    const x = new Float32Array(2 * I * H);
    members.forEach((m, k) => {
      for (let i = 0; i < I; i++) x.set(m.subarray(i * H, (i + 1) * H), (interleaved ? 2 * i + k : k * I + i) * H);
    });
    return encodeMxfp4(x, 2 * I, H);
  };
  const encodedScales = new Map<number, Uint8Array>();
  const names = mxfp4PartNames(f.name);
  return [
    {
      name: names.blocks,
      dtype: 'U8',
      shape: [experts, ...mx.blocks.shape.slice(1)],
      pieces: async function* () {
        for (let e = 0; e < experts; e++) {
          const from = copiedFrom(ckpt, slice(e));
          if (from !== undefined) yield reader.rawSlice(mx.blocks, from);
          else {
            const q = await encode(e);
            encodedScales.set(e, q.scales);
            yield q.blocks;
          }
        }
      },
    },
    {
      name: names.scales,
      dtype: 'U8',
      shape: [experts, ...mx.scales.shape.slice(1)],
      pieces: async function* () {
        for (let e = 0; e < experts; e++) {
          const from = copiedFrom(ckpt, slice(e));
          if (from !== undefined) yield reader.rawSlice(mx.scales, from);
          else {
            const s = encodedScales.get(e);
            if (!s) throw new Error(`fuseOutput: ${names.scales} expert ${e} written before its blocks`);
            encodedScales.delete(e);
            yield s;
          }
        }
      },
    },
  ];
}

/** Where a staged per-expert tensor's bytes are in the staging file. */
interface Staged {
  at: number;
  bytes: number;
}

const STAGING_FILE = '.moe-fusing';

/**
 * A TensorSink for commands that write per-expert tensors in checkpoint order (quantize, convert) when the model
 * stores its experts fused: the members of a stored tensor are staged in a file beside the shards as they come,
 * and the stored tensor is written, one expert's slice at a time, once its last member has arrived (where it is
 * planned). Memory stays one expert; the staging file holds at most the experts of one layer and is removed.
 */
export class FusingWriter implements TensorSink {
  private readonly inner: ShardedWriter;
  private readonly owner = new Map<string, FusedTensor>();
  private readonly fused = new Map<string, { f: FusedTensor; dtype: DType }>();
  private readonly staged = new Map<string, Staged>();
  private readonly staging: string;
  private fd: number | undefined;
  private end = 0;

  constructor(
    private readonly dir: string,
    private readonly arch: Architecture,
    plan: PlannedTensor[],
    opts: WriterOptions,
    private readonly experts = arch.numExperts,
  ) {
    const layout = arch.fusedExperts;
    if (!layout) throw new Error('FusingWriter: the architecture does not fuse its experts');
    const logical = new Map(plan.map((t) => [t.name, t]));
    const last = new Map<string, string>();
    for (const layer of arch.moeLayers)
      for (const f of storedTensors(layout, layer))
        for (let e = 0; e < experts; e++)
          for (const m of membersOf(arch, f, e)) {
            this.owner.set(m, f);
            last.set(f.name, m);
          }
    const stored: PlannedTensor[] = [];
    for (const t of plan) {
      const f = this.owner.get(t.name);
      if (!f) stored.push(t);
      else if (last.get(f.name) === t.name) {
        const first = logical.get(membersOf(arch, f, 0)[0])!;
        this.fused.set(f.name, { f, dtype: first.dtype });
        stored.push({ name: f.name, dtype: first.dtype, shape: [experts, ...sliceShape(arch, f)] });
      }
    }
    this.inner = new ShardedWriter(dir, stored, opts);
    this.staging = path.join(dir, STAGING_FILE);
  }

  write(name: string, bytes: Uint8Array): void {
    this.writeChunks(name, [bytes]);
  }

  writeChunks(name: string, pieces: Iterable<Uint8Array>): void {
    if (!this.owner.has(name)) {
      this.inner.writeChunks(name, pieces);
      return;
    }
    this.fd ??= fs.openSync(this.staging, 'w+');
    const at = this.end;
    for (const p of pieces) {
      fs.writeSync(this.fd, p, 0, p.byteLength, this.end);
      this.end += p.byteLength;
    }
    this.staged.set(name, { at, bytes: this.end - at });
    this.flush();
  }

  /** Writes every stored tensor that is due next and whose members are all staged. */
  private flush(): void {
    for (let next = this.inner.expected(); next && this.fused.has(next.name); next = this.inner.expected()) {
      const { f } = this.fused.get(next.name)!;
      const members = (e: number) => membersOf(this.arch, f, e);
      if (![...Array(this.experts).keys()].every((e) => members(e).every((m) => this.staged.has(m)))) return;
      const size = dtypeBytes(next.dtype);
      const { hidden, expertWidth } = this.arch;
      const { interleaved, outIn } = this.arch.fusedExperts!;
      const read = (m: string) => {
        const s = this.staged.get(m)!;
        const buf = new Uint8Array(s.bytes);
        fs.readSync(this.fd!, buf, 0, s.bytes, s.at);
        this.staged.delete(m);
        return buf;
      };
      const slices: Iterable<Uint8Array> = {
        [Symbol.iterator]: () => {
          let e = 0;
          return {
            next: () =>
              e < this.experts
                ? {
                    done: false,
                    value: fuseSlice(f, members(e++).map(read), size, hidden, expertWidth, interleaved, outIn),
                  }
                : { done: true, value: undefined },
          };
        },
      };
      this.inner.writeChunks(next.name, slices);
      if (this.staged.size === 0) {
        fs.ftruncateSync(this.fd!, 0);
        this.end = 0;
      }
    }
  }

  finish(): WrittenCheckpoint {
    this.flush();
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      fs.rmSync(this.staging, { force: true });
      this.fd = undefined;
    }
    return this.inner.finish();
  }
}

/** One expert's slice shape of a stored fused tensor. */
function sliceShape(arch: Architecture, f: FusedTensor): number[] {
  const [H, I] = [arch.hidden, arch.expertWidth];
  if (arch.fusedExperts?.outIn) return { gateUp: [2 * I, H], gateUpBias: [2 * I], down: [H, I], downBias: [H] }[f.kind];
  return { gateUp: [H, 2 * I], gateUpBias: [2 * I], down: [I, H], downBias: [H] }[f.kind];
}

/**
 * The writer of a plain checkpoint of `arch`: fused when the family stores its experts fused (transformers' layout)
 * and `perExpert` is not asked (moe's packed format and --layers parts keep one tensor per expert).
 */
export function plainWriter(
  dir: string,
  arch: Architecture,
  plan: PlannedTensor[],
  opts: WriterOptions,
  perExpert = false,
): TensorSink {
  return arch.fusedExperts && !perExpert ? new FusingWriter(dir, arch, plan, opts) : new ShardedWriter(dir, plan, opts);
}
