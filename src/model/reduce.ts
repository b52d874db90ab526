/**
 * Writing a checkpoint with fewer routed experts per MoE layer (prune and merge): new expert i of a layer is a
 * copy of an old expert (bit-exact) or a tensor computed by the caller (a merge). The router rows and the
 * correction bias are sliced or supplied in the same order; every other tensor is copied bit-exact; the config's
 * expert-count key(s) change. Streams tensor by tensor.
 */
import type { Checkpoint } from '../io/checkpoint';
import { TensorReader } from '../io/checkpoint';
import { dtypeBytes, fromFloat32, toFloat32 } from '../io/dtype';
import { encodeFp8, fp8Bytes, scaleName } from '../io/fp8';
import { OutputFolder, withOutput } from '../io/output';
import { tensorBytes, TensorRef } from '../io/safetensors';
import type { Context, Progress } from '../ui/progress';
import { PlannedTensor, ShardedWriter } from '../io/writer';
import type { Architecture, Proj } from './arch';
import { PROJS } from './arch';
import { verifyWritten } from './verify';
import { writeConfig } from '../io/config-text';

/** Per MoE layer, what each new expert is made of. */
export interface LayerReduction {
  /** New expert i copies old expert copyOf[i] (its router row and bias entry too), unless computed below. */
  copyOf: number[];
  /** New experts whose weights are computed (a merge), and how: raw bytes in the source dtype per projection. */
  computed?: Set<number>;
  compute?: (newExpert: number) => Promise<Record<Proj, Uint8Array>>;
  /** A computed router (rows for the new experts) or correction bias, raw bytes in the source dtype. */
  router?: Uint8Array;
  correctionBias?: Uint8Array;
}

const COPY_CHUNK_BYTES = 16 * 1024 * 1024;
/** The record of what a prune or merge kept, written beside the weights. */
export const COMPRESSION_FILE = 'moe-compression.json';

function sliceRows(bytes: Uint8Array, rowBytes: number, rows: number[]): Uint8Array {
  const out = new Uint8Array(rows.length * rowBytes);
  rows.forEach((r, i) => out.set(bytes.subarray(r * rowBytes, (r + 1) * rowBytes), i * rowBytes));
  return out;
}

export interface ReducedWrite {
  tensors: number;
  bytes: number;
}

/**
 * Writes the reduced checkpoint into `out` (an open OutputFolder); `keep` is the new expert count. `progress` is
 * started with the bytes the output will hold (not the source's, so it ends at 100%).
 */
export async function writeReduced(
  ckpt: Checkpoint,
  arch: Architecture,
  plan: Map<number, LayerReduction>,
  keep: number,
  out: OutputFolder,
  maxShardBytes: number,
  progress?: (totalBytes: number) => Progress,
): Promise<ReducedWrite> {
  // Source name of every output tensor, in the source order; new experts take the place of the old ones.
  const items: Item[] = [];
  // Computed experts are made one at a time, when the writer reaches them.
  let last: { key: string; value: Promise<Record<Proj, Uint8Array>> } | undefined;
  const computedExpert = (layer: number, p: LayerReduction, i: number) => {
    const key = `${layer}/${i}`;
    if (last?.key !== key) last = { key, value: p.compute!(i) };
    return last.value;
  };
  const reader = new TensorReader(ckpt);
  const position = new Map([...ckpt.tensors.keys()].map((n, i) => [n, i]));
  try {
    for (const t of ckpt.tensors.values()) {
      const role = arch.classify(t.name);
      const layerPlan = role && 'layer' in role ? plan.get(role.layer) : undefined;
      if (!layerPlan || !role) {
        items.push(...copied(t, t.name));
        continue;
      }
      if (role.kind === 'expert') {
        // Emit the whole new expert set once, where old expert 0's first projection stood.
        if (role.expert !== 0 || role.proj !== firstProj(arch, role.layer, position)) continue;
        for (let i = 0; i < keep; i++) {
          for (const proj of PROJS) {
            const srcName = arch.expertKey(role.layer, layerPlan.copyOf[i], proj);
            const src = ckpt.tensors.get(srcName)!;
            const layer = role.layer;
            const name = arch.expertKey(layer, i, proj);
            if (!layerPlan.computed?.has(i)) items.push(...copied(src, name));
            else items.push(...computedItems(src, name, async () => (await computedExpert(layer, layerPlan, i))[proj]));
          }
        }
      } else if (role.kind === 'router' || role.kind === 'router_bias') {
        const isRouter = role.kind === 'router';
        const given = isRouter ? layerPlan.router : layerPlan.correctionBias;
        const rowBytes = (t.shape.length === 2 ? t.shape[1] : 1) * dtypeBytes(t.dtype);
        const shape = isRouter ? [keep, t.shape[1]] : [keep];
        items.push({
          name: t.name,
          make: () => given ?? sliceRows(reader.bytes(t.name), rowBytes, layerPlan.copyOf),
          dtype: t.dtype,
          shape,
        });
      } else {
        items.push(...copied(t, t.name));
      }
    }
    const planned: PlannedTensor[] = items.map(({ name, dtype, shape }) => ({ name, dtype, shape }));
    const writer = new ShardedWriter(out.tmp, planned, { maxShardBytes, metadata: { ...ckpt.metadata, format: 'pt' } });
    const bar = progress?.(planned.reduce((s, t) => s + tensorBytes(t), 0));
    let bytes = 0;
    for (const it of items) {
      const pieces = it.part
        ? reader.storedChunks(it.part, COPY_CHUNK_BYTES)
        : it.src
          ? reader.chunks(it.src, COPY_CHUNK_BYTES)
          : [await it.make!()];
      writer.writeChunks(
        it.name,
        (function* () {
          for (const p of pieces) {
            bytes += p.byteLength;
            bar?.tick(p.byteLength);
            yield p;
          }
        })(),
      );
    }
    writer.finish();
    bar?.done();
    writeConfig(out, arch.rewriteConfig(keep), ckpt.dir);
    out.copyAuxFiles(ckpt.dir);
    return { tensors: items.length, bytes };
  } finally {
    reader.close();
  }
}

/** One tensor of the output: copied from a source tensor or a stored part of one, or made when written. */
interface Item {
  name: string;
  src?: string;
  /** A stored part copied as it is (an FP8 weight's codes or scales). */
  part?: TensorRef;
  make?: () => Uint8Array | Promise<Uint8Array>;
  dtype: PlannedTensor['dtype'];
  shape: number[];
}

/** The output tensor(s) copying `t` under `name`: an FP8 weight keeps its codes and scales bit-exact. */
function copied(t: TensorRef, name: string): Item[] {
  if (!t.fp8) return [{ name, src: t.name, dtype: t.dtype, shape: t.shape }];
  const { weight, scale } = t.fp8;
  return [
    { name, part: weight, dtype: weight.dtype, shape: weight.shape },
    { name: scaleName(name), part: scale, dtype: scale.dtype, shape: scale.shape },
  ];
}

/**
 * The output tensor(s) of a computed weight shaped like `src`; `make` gives it as raw bytes in `src`'s dtype. A
 * weight whose source is FP8 is re-encoded as FP8 in the same blocks (src/io/fp8.ts: scale_inv = block amax / 448).
 */
function computedItems(src: TensorRef, name: string, make: () => Promise<Uint8Array>): Item[] {
  if (!src.fp8) return [{ name, make, dtype: src.dtype, shape: src.shape }];
  const { weight, scale, block, ue8m0 } = src.fp8;
  const [rows, cols] = src.shape;
  let encoded: Promise<{ codes: Uint8Array; scales: Float32Array }> | undefined;
  const encode = () =>
    (encoded ??= make().then((b) => encodeFp8(toFloat32(b, src.dtype), rows, cols, block, ue8m0, scale.dtype)));
  return [
    { name, make: async () => (await encode()).codes, dtype: weight.dtype, shape: weight.shape },
    {
      name: scaleName(name),
      make: async () => fromFloat32((await encode()).scales, scale.dtype),
      dtype: scale.dtype,
      shape: scale.shape,
    },
  ];
}

/** The projection of a layer's expert 0 that comes first in the checkpoint (where the new experts are written). */
function firstProj(arch: Architecture, layer: number, position: Map<string, number>): Proj {
  let best: Proj = 'gate';
  let at = Infinity;
  for (const p of PROJS) {
    const i = position.get(arch.expertKey(layer, 0, p)) ?? Infinity;
    if (i < at) {
      at = i;
      best = p;
    }
  }
  return best;
}

/** Choosing experts from the calibration stats alone, as a share of the work of writing the output. */
export const SELECT_SHARE = 0.05;

/** The bytes of the source checkpoint: the work unit of prune and merge (their write phase is worth this much). */
export function sourceBytes(ckpt: Checkpoint): number {
  return [...ckpt.tensors.values()].reduce((s, t) => s + (t.fp8 ? fp8Bytes(t.fp8) : t.end - t.begin), 0);
}

export interface ReducedOutput {
  output: string;
  /** prune or merge (moe-output.json names it). */
  command: string;
  force?: boolean;
  maxShardBytes: number;
}

/**
 * Writes a reduced checkpoint atomically (temporary folder, renamed when complete) with a progress bar, and the
 * `record` (moe-compression.json) beside it. `record` is called after the weights are written, so it can report
 * what was measured while writing (e.g. alignment scores).
 */
export async function writeReducedOutput(
  ckpt: Checkpoint,
  arch: Architecture,
  plan: Map<number, LayerReduction>,
  keep: number,
  dest: ReducedOutput,
  ctx: Context,
  record: () => object,
): Promise<ReducedWrite> {
  return withOutput(dest.output, { force: dest.force, command: dest.command, verify: verifyWritten }, async (out) => {
    // Counted in output bytes; worth the source's bytes of the command's task (see sourceBytes).
    const written = await writeReduced(ckpt, arch, plan, keep, out, dest.maxShardBytes, (total) =>
      ctx.progress('write', total, 'bytes', sourceBytes(ckpt)),
    );
    out.writeRecord(COMPRESSION_FILE, { tool: 'moe', ...record() });
    return written;
  });
}
