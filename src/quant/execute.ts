/**
 * The writers of a QuantPlan: every stored tensor in the plan's order into a ShardedWriter, the tensors it does
 * not quantize copied in chunks, the quantized weights as packed parts or dequantized into their dtype.
 * Plain RTN into the packed layout runs on worker threads straight from the stored bytes (src/quant/rtn-pool.ts),
 * one weight ahead: the next weight is read while this one is quantized, and written while the next is.
 */
import { defaultThreads } from '../backend/threads';
import type { TensorReader } from '../io/checkpoint';
import { dtypeBytes, fromFloat32, toFloat32 } from '../io/dtype';
import type { TensorRef } from '../io/safetensors';
import { tensorBytes } from '../io/safetensors';
import type { TensorSink } from '../io/writer';
import type { Progress } from '../ui/progress';
import { requireFinite } from './finite';
import { packedPlan } from '../io/packed';
import { packCodes } from './pack';
import { ctParts, ctTensors } from './compressed-tensors';
import type { PlannedWeight, QuantPlan } from './quant-plan';
import type { Quantizer } from './quantizer';
import { dequantize } from './rtn';
import type { PackedBuffers } from './rtn-packed';
import { RtnPool } from './rtn-pool';
import { encodeGptq } from './gptq-format';
import { gptqPartNames } from '../io/gptq';

const COPY_CHUNK_BYTES = 16 * 1024 * 1024;

export interface Execution {
  plan: QuantPlan;
  /** The tensors this run writes, in checkpoint order. */
  refs: TensorRef[];
  reader: TensorReader;
  writer: TensorSink;
  quantizer: Quantizer;
  /** Measure each weight's weighted error as it is written (uniform bits with stats): the report's costs. */
  measure: boolean;
  threads?: number;
  /** Counts quantized params. */
  bar: Progress;
  /** --format gptq: scales FP16 had to round, and groups whose zero point is 0 (src/quant/gptq-format.ts). */
  gptq?: { inexact: number; zeroZeros: number };
  /** AWQ (src/quant/awq.ts): the tensors it folds are written as folded, quantized or not. */
  fold?: Fold;
}

/** Tensors rewritten before quantization (AWQ's scales). */
export interface Fold {
  has(name: string): boolean;
  weight(name: string, reader: TensorReader): Float32Array;
}

/** A weight as the quantizer sees it: folded when the fold changes it, else as stored. */
export function sourceWeight(x: { fold?: Fold; reader: TensorReader }, name: string): Float32Array {
  return x.fold?.has(name) ? x.fold.weight(name, x.reader) : x.reader.f32(name);
}

/** Writes every tensor of the plan; returns the measured cost of each group when `measure`. */
export async function writePlan(x: Execution): Promise<Map<string, number>> {
  const { plan } = x;
  const weightOf = new Map(plan.weights.map((w) => [w.name, w]));
  const fast = plan.method === 'rtn' && plan.format === 'packed' && !x.measure && !plan.symmetric && !x.fold;
  const pipeline = fast ? new RtnPipeline(x, new RtnPool(x.threads ?? defaultThreads()), weightOf) : undefined;
  const measured = new Map<string, number>();
  try {
    for (const ref of x.refs) {
      const w = weightOf.get(ref.name);
      if (!w && x.fold?.has(ref.name))
        x.writer.write(ref.name, fromFloat32(x.fold.weight(ref.name, x.reader), ref.dtype));
      else if (!w) x.writer.writeChunks(ref.name, x.reader.chunks(ref.name, COPY_CHUNK_BYTES));
      else if (pipeline) await pipeline.write(ref, w);
      else await writeOne(x, ref, w, measured);
      if (w) x.bar.tick(w.rows * w.cols);
    }
  } finally {
    await pipeline?.close();
  }
  return measured;
}

/** One weight quantized in this thread (GPTQ, or RTN with its error measured, or into the dequantized layout). */
async function writeOne(x: Execution, ref: TensorRef, t: PlannedWeight, measured: Map<string, number>): Promise<void> {
  const w = sourceWeight(x, ref.name);
  const inputs = x.quantizer.weighting.inputs(ref.name);
  const q = await x.quantizer.quantize(w, t, t.bits, inputs);
  if (x.measure)
    measured.set(t.group, (measured.get(t.group) ?? 0) + (await x.quantizer.weightedError(w, q, t, inputs)));
  if (x.plan.format === 'packed') {
    const parts = packedPlan(ref.name, t.rows, t.cols, q.bits, x.plan.groupSize);
    x.writer.write(parts[0].name, packCodes(q.codes, t.rows, t.cols, q.bits));
    x.writer.write(parts[1].name, fromFloat32(q.scales, 'BF16'));
    x.writer.write(parts[2].name, q.zeros);
  } else if (x.plan.format === 'gptq') {
    const e = encodeGptq(q, ref.name);
    const n = gptqPartNames(ref.name);
    for (const [name, bytes] of [
      [n.qweight, e.qweight],
      [n.qzeros, e.qzeros],
      [n.scales, e.scales],
      [n.gIdx, e.gIdx],
    ] as const)
      x.writer.write(name, bytes);
    if (x.gptq) {
      x.gptq.inexact += e.inexact;
      x.gptq.zeroZeros += e.zeroZeros;
    }
  } else if (x.plan.format === 'compressed-tensors') {
    const sym = x.plan.symmetric;
    const parts = ctParts(ref.name, t.rows, t.cols, q.bits, x.plan.groupSize, ref.dtype, sym);
    ctTensors(q, ref.dtype, sym).forEach((bytes, i) => x.writer.write(parts[i].name, bytes));
  } else {
    x.writer.write(ref.name, fromFloat32(dequantize(q), ref.dtype));
  }
}

type Job = { name: string; job: Promise<{ bad: number; out: PackedBuffers; src: Uint8Array }> };

/** RTN on the pool, one weight ahead, in two sets of buffers sized for the largest weight and used in turn. */
class RtnPipeline {
  private readonly queue: TensorRef[];
  private readonly slots: { src: Uint8Array; out: PackedBuffers }[];
  private turn = 0;
  /** queue[queued] is the weight write() reaches next. */
  private queued = 0;
  private ahead: Job | undefined;

  constructor(
    private readonly x: Execution,
    private readonly pool: RtnPool,
    private readonly weightOf: Map<string, PlannedWeight>,
  ) {
    this.queue = x.refs.filter((ref) => weightOf.has(ref.name));
    const largest = (part: number) =>
      Math.max(0, ...this.queue.map((ref) => tensorBytes(this.partsOf(weightOf.get(ref.name)!)[part])));
    const src = Math.max(0, ...this.queue.map((ref) => tensorBytes(ref)));
    this.slots = [0, 1].map(() => pool.slot(src, { qweight: largest(0), scales: largest(1), qzeros: largest(2) }));
  }

  private partsOf(t: PlannedWeight) {
    return packedPlan(t.name, t.rows, t.cols, t.bits, this.x.plan.groupSize);
  }

  private launch(ref: TensorRef): Job {
    const t = this.weightOf.get(ref.name)!;
    const slot = this.slots[this.turn++ % 2];
    const [qweight, scales, qzeros] = this.partsOf(t).map(tensorBytes);
    const out = {
      qweight: slot.out.qweight.subarray(0, qweight),
      scales: slot.out.scales.subarray(0, scales),
      qzeros: slot.out.qzeros.subarray(0, qzeros),
    };
    const src = this.x.reader.bytesInto(ref.name, slot.src);
    const job = this.pool
      .quantize(src, ref.dtype, t.rows, t.cols, { bits: t.bits, groupSize: this.x.plan.groupSize }, out)
      .then((bad) => ({ bad, out, src }));
    job.catch(() => undefined); // awaited in turn; an early failure must not count as unhandled
    return { name: ref.name, job };
  }

  async write(ref: TensorRef, t: PlannedWeight): Promise<void> {
    const current = this.ahead?.name === ref.name ? this.ahead : this.launch(ref);
    const next = this.queue[++this.queued];
    this.ahead = next ? this.launch(next) : undefined;
    const { out: parts, bad, src } = await current.job;
    const size = dtypeBytes(ref.dtype);
    if (bad >= 0)
      requireFinite(
        toFloat32(src.subarray(bad * size, (bad + 1) * size), ref.dtype),
        ref.name,
        this.x.quantizer.o.dir,
        bad,
      );
    const names = this.partsOf(t);
    this.x.writer.write(names[0].name, parts.qweight);
    this.x.writer.write(names[1].name, parts.scales);
    this.x.writer.write(names[2].name, parts.qzeros);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
