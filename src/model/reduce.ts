/**
 * Writing a checkpoint with fewer routed experts per MoE layer (prune and merge): new expert i of a layer is a
 * copy of an old expert (bit-exact) or a tensor computed by the caller (a merge). The router rows and the
 * correction bias are sliced or supplied in the same order; every other tensor is copied bit-exact; the config's
 * expert-count key(s) change. Streams tensor by tensor. An FP8 weight (src/io/fp8.ts) is copied as its stored codes
 * and block scales, and a computed one whose source is FP8 is re-encoded in the same blocks.
 */
import type { Checkpoint } from '../io/checkpoint';
import { nestedConfig, storedName, TensorReader } from '../io/checkpoint';
import { dtypeBytes, fromFloat32, toFloat32 } from '../io/dtype';
import { encodeFp8, fp8Bytes, scaleName } from '../io/fp8';
import { intQuantBytes, withoutIntQuantConfig } from '../io/intquant';
import { OutputFolder, withOutput } from '../io/output';
import { tensorBytes } from '../io/safetensors';
import type { Context, Progress } from '../ui/progress';
import { PlannedTensor, ShardedWriter } from '../io/writer';
import type { TensorRef } from '../io/safetensors';
import { FusedOut, fuseOutput, LogicalOut } from './fused';
import type { Architecture, Proj } from './arch';
import { PROJS } from './arch';
import { verifyWritten } from './verify';
import { ExpertWeights, expertsHaveBias } from './experts';
import { InternalError } from '../errors';
import { writeConfig } from '../io/config-text';

/** A computed expert: raw bytes in the source dtype per projection, and per bias when the experts have biases. */
export type ComputedExpert = Record<Proj, Uint8Array> & { bias?: Record<Proj, Uint8Array> };

/**
 * A computed expert's float32 weights (and biases, which it must have when the layer's experts do) as the raw bytes
 * of the source expert `like`'s dtypes.
 */
export function computedExpert(
  reader: TensorReader,
  arch: Architecture,
  layer: number,
  like: number,
  e: ExpertWeights,
  by: string,
): ComputedExpert {
  const cast = (p: Proj) => fromFloat32(e[p], reader.dtype(arch.expertKey(layer, like, p)));
  const out: ComputedExpert = { gate: cast('gate'), up: cast('up'), down: cast('down') };
  if (!expertsHaveBias(reader, arch, layer)) return out;
  const bias = e.bias;
  if (!bias) throw new InternalError(`${by} returned no expert biases for layer ${layer}`);
  const castBias = (p: Proj) => fromFloat32(bias[p], reader.dtype(arch.expertBiasKey(layer, like, p)!));
  out.bias = { gate: castBias('gate'), up: castBias('up'), down: castBias('down') };
  return out;
}

/** Per MoE layer, what each new expert is made of. */
export interface LayerReduction {
  /** New expert i copies old expert copyOf[i] (its router row and bias entry too), unless computed below. */
  copyOf: number[];
  /** New experts whose weights are computed (a merge), and how: raw bytes in the source dtype per projection. */
  computed?: Set<number>;
  compute?: (newExpert: number) => Promise<ComputedExpert>;
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
 * An output tensor: a bit-exact copy of `src` (streamed in chunks), a stored part copied as it is (an FP8 weight's
 * codes or scales), or bytes made when the writer reaches it; `like` is the source tensor a made one is stored as.
 */
type OutItem = LogicalOut & { part?: TensorRef; like?: TensorRef };

/**
 * FP8 sources stay FP8: a copied weight is its codes and scales copied as they are, a computed one (a merged
 * expert) is encoded by the published rule (scale = block amax / 448) into codes and scales.
 */
function expandFp8(items: (OutItem | FusedOut)[], ckpt: Checkpoint): (OutItem | FusedOut)[] {
  return items.flatMap((it): (OutItem | FusedOut)[] => {
    if ('pieces' in it) return [it];
    const t = it.src ? ckpt.tensors.get(it.src) : it.like;
    if (!t?.fp8) return [it];
    const { weight, scale, block, ue8m0 } = t.fp8;
    if (it.src)
      return [
        { name: it.name, part: weight, dtype: weight.dtype, shape: weight.shape, bytes: it.bytes },
        { name: scaleName(it.name), part: scale, dtype: scale.dtype, shape: scale.shape, bytes: it.bytes },
      ];
    const [rows, cols] = t.shape;
    let encoded: Promise<{ codes: Uint8Array; scales: Float32Array }> | undefined;
    const encode = () =>
      (encoded ??= Promise.resolve(it.bytes()).then((b) =>
        encodeFp8(toFloat32(b, t.dtype), rows, cols, block, ue8m0, scale.dtype),
      ));
    return [
      { name: it.name, bytes: async () => (await encode()).codes, dtype: weight.dtype, shape: weight.shape },
      {
        name: scaleName(it.name),
        bytes: async () => fromFloat32((await encode()).scales, scale.dtype),
        dtype: scale.dtype,
        shape: scale.shape,
      },
    ];
  });
}

/**
 * Computed experts, made once each when the writer first reaches one of their tensors and dropped when the last is
 * written (a fused layer writes every expert's gate and up before any down: those wait here).
 */
class ComputedExperts {
  private made = new Map<string, { value: Promise<ComputedExpert>; left: number }>();

  get(layer: number, p: LayerReduction, i: number, parts: number, take: (c: ComputedExpert) => Uint8Array) {
    const key = `${layer}/${i}`;
    let entry = this.made.get(key);
    if (!entry) {
      entry = { value: p.compute!(i), left: parts };
      this.made.set(key, entry);
    }
    const e = entry;
    if (--e.left === 0) this.made.delete(key);
    return e.value.then(take);
  }
}

/** The output items of one MoE layer's new expert set (weights, then biases where the experts have them). */
function expertItems(
  ckpt: Checkpoint,
  arch: Architecture,
  layer: number,
  p: LayerReduction,
  keep: number,
  computed: ComputedExperts,
  reader: TensorReader,
): OutItem[] {
  const items: OutItem[] = [];
  const hasBias = PROJS.some((proj) => ckpt.tensors.has(arch.expertBiasKey(layer, 0, proj) ?? ''));
  const parts = hasBias ? 2 * PROJS.length : PROJS.length;
  for (let i = 0; i < keep; i++) {
    const made = p.computed?.has(i);
    for (const bias of hasBias ? [false, true] : [false]) {
      for (const proj of PROJS) {
        const key = (e: number) => (bias ? arch.expertBiasKey(layer, e, proj)! : arch.expertKey(layer, e, proj));
        const src = ckpt.tensors.get(key(p.copyOf[i]))!;
        const take = (c: ComputedExpert) => {
          const out = bias ? c.bias?.[proj] : c[proj];
          if (!out) throw new Error(`merge computed no ${bias ? 'bias' : 'weight'} for ${key(i)}`);
          return out;
        };
        items.push({
          name: key(i),
          src: made ? undefined : src.name,
          like: src,
          bytes: made ? () => computed.get(layer, p, i, parts, take) : () => reader.bytes(src.name),
          dtype: src.dtype,
          shape: src.shape,
        });
      }
    }
  }
  return items;
}

/** Every output tensor, in the source order; new experts take the place of the old ones. */
function reducedItems(
  ckpt: Checkpoint,
  arch: Architecture,
  plan: Map<number, LayerReduction>,
  keep: number,
  reader: TensorReader,
): OutItem[] {
  const items: OutItem[] = [];
  const computed = new ComputedExperts();
  const position = new Map([...ckpt.tensors.keys()].map((n, i) => [n, i]));
  const copy = (t: TensorRef): OutItem => ({
    name: t.name,
    src: t.name,
    bytes: () => reader.bytes(t.name),
    dtype: t.dtype,
    shape: t.shape,
  });
  for (const t of ckpt.tensors.values()) {
    const role = arch.classify(t.name);
    const layerPlan = role && 'layer' in role ? plan.get(role.layer) : undefined;
    if (!layerPlan || !role) {
      items.push(copy(t));
    } else if (role.kind === 'expert') {
      // Emit the whole new expert set once, where old expert 0's first projection stood.
      if (role.expert === 0 && role.proj === firstProj(arch, role.layer, position))
        items.push(...expertItems(ckpt, arch, role.layer, layerPlan, keep, computed, reader));
    } else if (role.kind === 'expert_bias') {
      continue; // written with the expert set
    } else if (role.kind === 'router' || role.kind === 'router_bias') {
      const isRouter = role.kind === 'router';
      const given = isRouter ? layerPlan.router : layerPlan.correctionBias;
      // a router's rows [E, H]; a selection bias's entries, [E] or (ERNIE 4.5's moe_statics) [1, E]
      const rowBytes = (isRouter ? t.shape[1] : 1) * dtypeBytes(t.dtype);
      items.push({
        name: t.name,
        bytes: () => given ?? sliceRows(reader.bytes(t.name), rowBytes, layerPlan.copyOf),
        dtype: t.dtype,
        shape: isRouter ? [keep, t.shape[1]] : t.shape.length === 2 ? [1, keep] : [keep],
      });
    } else {
      items.push(copy(t));
    }
  }
  return items;
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
  const reader = new TensorReader(ckpt);
  try {
    const items = expandFp8(
      fuseOutput(arch, reducedItems(ckpt, arch, plan, keep, reader), keep, { ckpt, reader }),
      ckpt,
    );
    const planned: PlannedTensor[] = items.map(({ name, dtype, shape }) => ({ name, dtype, shape }));
    const writer = new ShardedWriter(out.tmp, planned, {
      maxShardBytes,
      metadata: { ...ckpt.metadata, format: 'pt' },
      storedName: storedName(ckpt),
    });
    const bar = progress?.(planned.reduce((s, t) => s + tensorBytes(t), 0));
    let bytes = 0;
    const counted = (p: Uint8Array) => {
      bytes += p.byteLength;
      bar?.tick(p.byteLength);
      return p;
    };
    for (const it of items) {
      if ('pieces' in it) {
        await writer.writeAsync(it.name, it.pieces(), counted);
        continue;
      }
      const { src, part } = it as OutItem;
      const pieces = part
        ? reader.storedChunks(part, COPY_CHUNK_BYTES)
        : src
          ? reader.chunks(src, COPY_CHUNK_BYTES)
          : [await it.bytes()];
      writer.writeChunks(
        it.name,
        (function* () {
          for (const p of pieces) yield counted(p);
        })(),
      );
    }
    writer.finish();
    bar?.done();
    // compressed-tensors and GPTQ weights are written dequantized (plain), so their quantization_config goes.
    writeConfig(out, nestedConfig(ckpt, withoutIntQuantConfig(arch.rewriteConfig(keep))), ckpt.dir);
    out.copyAuxFiles(ckpt.dir);
    return { tensors: items.length, bytes };
  } finally {
    reader.close();
  }
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
  const bytes = (t: TensorRef) => (t.fp8 ? fp8Bytes(t.fp8) : t.intq ? intQuantBytes(t.intq) : t.end - t.begin);
  return [...ckpt.tensors.values()].reduce((s, t) => s + bytes(t), 0);
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
 * what was measured while writing (e.g. alignment scores); `afterWrite` runs on the written weights in the
 * temporary folder before the record (router recalibration rewrites routers there).
 */
export async function writeReducedOutput(
  ckpt: Checkpoint,
  arch: Architecture,
  plan: Map<number, LayerReduction>,
  keep: number,
  dest: ReducedOutput,
  ctx: Context,
  record: () => object,
  afterWrite?: (dir: string) => Promise<void>,
): Promise<ReducedWrite> {
  return withOutput(dest.output, { force: dest.force, command: dest.command, verify: verifyWritten }, async (out) => {
    // Counted in output bytes; worth the source's bytes of the command's task (see sourceBytes).
    const written = await writeReduced(ckpt, arch, plan, keep, out, dest.maxShardBytes, (total) =>
      ctx.progress('write', total, 'bytes', sourceBytes(ckpt)),
    );
    await afterWrite?.(out.tmp);
    out.writeRecord(COMPRESSION_FILE, { tool: 'moe', ...record() });
    return written;
  });
}
