/**
 * `moe quantize MODEL --bits B -o OUT`: round-to-nearest or GPTQ quantization of every linear weight in the
 * decoder layers (attention, router, routed and shared experts, dense MLPs), asymmetric per group along the input
 * dimension, with the bits either uniform or allocated by a linear program over groups (MC-MoE: experts that are
 * used more, weigh more in routing, or lose more at fewer bits get more). Writes the packed layout
 * (src/quant/format.ts) or a plain checkpoint of dequantized weights in the original dtype.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { Backend, BackendName } from '../backend/backend';
import { CalibrationStats, fingerprint, inputStatsName } from '../calib/stats';
import { CheckpointError, UsageError } from '../errors';
import { openCheckpoint, TensorReader } from '../io/checkpoint';
import { dtypeBytes, fromFloat32, toFloat32 } from '../io/dtype';
import { checkFileDestination, checkNotInput, checkOutputFolder, withOutput, withoutTimings } from '../io/output';
import { fileBytes } from '../io/size';
import { tensorBytes } from '../io/safetensors';
import { DEFAULT_MAX_SHARD_BYTES, PlannedTensor, ShardedWriter } from '../io/writer';
import { COMPRESSION_FILE } from '../model/reduce';
import { loadArchitecture } from '../model/registry';
import { verifyWritten } from '../model/verify';
import { allocate, AllocGroup, AllocResult } from '../quant/allocate';
import { packedPlan } from '../io/packed';
import { metadataEntry, quantizationConfig } from '../quant/format';
import { requireFinite } from '../quant/finite';
import { gptq } from '../quant/gptq';
import { packCodes } from '../quant/pack';
import { Granularity, Group, groupTargets, quantTargets, Target, TargetClass } from '../quant/plan';
import { dequantize, outputError, QuantizedMatrix, quantizeRtn } from '../quant/rtn';
import { PART_FILE, PART_FORMAT, PART_RECORD, PartRecord, QUANT_RECORD_FILE } from '../quant/records';
import { RtnPool } from '../quant/rtn-pool';
import type { Context, Task } from '../ui/progress';
import { writeConfig } from '../io/config-text';
import type { GgufOptions, GgufReport } from '../gguf/export';
import { GgmlType, ggmlTypeNamed } from '../gguf/quants';
import { parseBitChoices } from '../quant/plan';
import { CommandSpec, COMPUTE, dryRun, FORCE, JSON_OUTPUT, MAX_SHARD_SIZE, MODEL_ARG, output, Values } from './spec';

export const DEFAULT_BIT_CHOICES = [2, 3, 4, 8];
/** Router rows decide everything downstream: 8 bits unless --keep-router-fp keeps them as they are. */
const ROUTER_BITS = 8;
/** Under --allocate lp, weights every token passes through (attention, shared experts, dense MLPs) take at least this many bits unless fixed by a flag (QuantMoE-Bench). */
const ALWAYS_ACTIVE_MIN_BITS = 4;
const COPY_CHUNK_BYTES = 16 * 1024 * 1024;

export interface QuantizeOptions {
  model: string;
  output: string;
  bits: number;
  groupSize?: number;
  method?: 'rtn' | 'gptq';
  stats?: string;
  allocate?: 'uniform' | 'lp';
  bitChoices?: number[];
  granularity?: Granularity;
  budgetScope?: 'global' | 'layer';
  alpha?: number;
  beta?: number;
  attnBits?: number;
  sharedExpertBits?: number;
  keepRouterFp?: boolean;
  format?: 'packed' | 'dequantized';
  actOrder?: boolean;
  damp?: number;
  report?: string;
  dryRun?: boolean;
  backend?: BackendName;
  threads?: number;
  maxShardBytes?: number;
  force?: boolean;
  /** Only the decoder layers A..B (and, with layer 0, the tensors outside the layers): a partial output for `moe assemble`. */
  layers?: [number, number];
}

export interface GroupReport {
  group: string;
  class: TargetClass;
  layer: number;
  params: number;
  bits: number;
  /** f^α·w^β·err at the chosen bits (null without stats). */
  cost: number | null;
  /** The weighted cost at every bit choice considered (lp only). */
  costs?: Record<string, number>;
}

export interface QuantizeReport {
  model: string;
  output: string;
  format: 'packed' | 'dequantized';
  method: 'rtn' | 'gptq';
  allocate: 'uniform' | 'lp';
  bits_target: number;
  bit_choices: number[];
  group_size: number;
  granularity: Granularity;
  budget_scope: 'global' | 'layer';
  alpha: number;
  beta: number;
  /** Mean code bits over the quantized weights (what --bits budgets). */
  average_bits: number;
  /** Mean stored bits over the quantized weights, scales and zero points included. */
  stored_bits_per_weight: number;
  quantized_params: number;
  total_params: number;
  bits_histogram: Record<string, number>;
  by_class: Record<string, { params: number; average_bits: number }>;
  predicted_cost: number | null;
  solver: { status: string; method: string; seconds: number; objective: number; bound: number; gap: number; problems: number } | null;
  /** Weights quantized by RTN although GPTQ was asked (no calibrated rows, or a Hessian that would not factor). */
  gptq_fallbacks: string[];
  size_bytes: number;
  dry_run: boolean;
  groups: GroupReport[];
  seconds: number;
}

interface Inputs {
  rows: number;
  diag?: Float64Array;
  full?: Float32Array;
}

/** Expert weighting factors from the stats: frequency f and mean routing weight per token w. */
function weightFactor(stats: CalibrationStats | undefined, t: Target, alpha: number, beta: number, cache: Map<number, { f: Float64Array; w: Float64Array }>): number {
  if (!stats || t.cls !== 'expert') return 1;
  let v = cache.get(t.layer);
  if (!v) {
    const tokens = stats.json.data.tokens;
    v = { f: stats.frequency(t.layer), w: stats.vector(t.layer, 'weight_sum').map((x) => x / tokens) };
    cache.set(t.layer, v);
  }
  const f = v.f[t.expert!];
  const w = v.w[t.expert!];
  return Math.pow(f, alpha) * Math.pow(w, beta);
}

function checkOptions(o: QuantizeOptions, stats: CalibrationStats | undefined): { method: 'rtn' | 'gptq'; choices: number[] } {
  const choices = o.bitChoices ?? DEFAULT_BIT_CHOICES;
  const gs = o.groupSize ?? 128;
  if (!Number.isInteger(gs) || gs < 1) throw new UsageError(`--group-size ${gs} must be a positive integer`);
  if (!(o.bits > 0)) throw new UsageError(`--bits ${o.bits} must be positive`);
  for (const [flag, b] of [['--attn-bits', o.attnBits], ['--shared-expert-bits', o.sharedExpertBits]] as const) {
    if (b !== undefined && !(Number.isInteger(b) && b >= 1 && b <= 8)) throw new UsageError(`${flag} ${b} must be an integer from 1 to 8`);
  }
  const allocateMode = o.allocate ?? 'uniform';
  if (allocateMode === 'uniform' && !(Number.isInteger(o.bits) && o.bits >= 1 && o.bits <= 8)) {
    throw new UsageError(`--bits ${o.bits} is not a whole number of bits from 1 to 8`, { hint: 'fractional averages need --allocate lp --stats STATS' });
  }
  if (allocateMode === 'lp') {
    if (!stats) throw new UsageError('--allocate lp needs --stats (expert frequencies and the measured error of each bit-width)', { hint: 'make them with moe calibrate MODEL --data FILE -o STATS' });
    if (o.bits < choices[0] || o.bits > choices[choices.length - 1]) throw new UsageError(`--bits ${o.bits} is outside the bit choices ${choices.join(',')}`, { hint: 'change --bits or --bit-choices' });
  }
  const hasHessians = !!stats?.json.hessians;
  const method = o.method ?? (hasHessians ? 'gptq' : 'rtn');
  if (method === 'gptq' && !hasHessians) {
    throw new UsageError(stats ? `the stats in ${stats.dir} hold no Hessians, which GPTQ needs` : 'GPTQ needs calibrated Hessians (--stats)', { hint: 're-run moe calibrate with --hessians, or use --method rtn' });
  }
  return { method, choices };
}

/** Below 2 bits moe still quantizes (1-bit codes are valid), but the model rarely survives it: said, not refused. */
export function lowBitsWarning(bits: number, groupSize: number, allocate: string): string {
  const what = allocate === 'lp' ? `an average of ${bits} bits gives many groups 1 bit, 2 levels per group of ${groupSize} weights` : `1 bit keeps 2 levels per group of ${groupSize} weights`;
  return `--bits ${bits} is below 2: ${what}, which usually breaks the model (perplexity rises by orders of magnitude); 3 or 4 bits is the usual choice`;
}

export async function quantize(o: QuantizeOptions, ctx: Context): Promise<QuantizeReport> {
  const started = Date.now();
  const ckpt = openCheckpoint(o.model);
  const inputs = [{ flag: 'MODEL', path: ckpt.dir }, { flag: '--stats', path: o.stats }];
  checkNotInput(o.output, inputs);
  if (!o.dryRun) checkOutputFolder(o.output, o.force);
  checkNotInput(o.report, inputs, '--report');
  // An existing --report file is replaced only with --force, and only if moe wrote it (its first key is "tool": "moe").
  if (o.report) checkFileDestination(o.report, !!o.force);
  const arch = loadArchitecture(ckpt);
  for (const t of ckpt.tensors.values()) {
    if (t.packed) throw new CheckpointError(`the model is already quantized (${t.name} is packed to ${t.packed.info.bits} bits)`, { file: ckpt.dir, hint: 'quantize the original model' });
  }
  const stats = o.stats ? new CalibrationStats(o.stats) : undefined;
  const reader = new TensorReader(ckpt);
  let be: Backend | undefined;
  let pool: RtnPool | undefined;
  let task: Task | undefined;
  try {
    stats?.checkModel(ckpt);
    const { method, choices } = checkOptions(o, stats);
    const gs = o.groupSize ?? 128;
    if (o.bits < 2) ctx.warn(lowBitsWarning(o.bits, gs, o.allocate ?? 'uniform'));
    const alpha = o.alpha ?? 1;
    const beta = o.beta ?? 1.5;
    const allocateMode = o.allocate ?? 'uniform';
    const granularity = o.granularity ?? 'expert';
    const scope = o.budgetScope ?? 'global';
    const format = o.format ?? 'packed';
    const layerRange = o.layers;
    if (layerRange) {
      const [a, b] = layerRange;
      if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a <= b && b < arch.numLayers)) throw new UsageError(`--layers ${a}-${b} is not a range of layers 0-${arch.numLayers - 1}`);
      if (allocateMode === 'lp' && scope === 'global') throw new UsageError('--layers with --allocate lp needs --budget-scope layer (a global budget needs every layer at once)');
    }
    /** Whether this run writes a tensor: all of them, or with --layers those of its layers (and the rest with layer 0). */
    const owned = (name: string): boolean => {
      if (!layerRange) return true;
      const role = arch.classify(name);
      if (role && 'layer' in role) return role.layer >= layerRange[0] && role.layer <= layerRange[1];
      return layerRange[0] === 0;
    };
    const targets = quantTargets(arch, ckpt.tensors, granularity, !!o.keepRouterFp).filter((t) => owned(t.name));
    if (targets.length === 0 && !layerRange) throw new CheckpointError('the model has no linear weights moe can quantize', { file: ckpt.dir });
    const groups = groupTargets(targets);
    be = await createBackend(o.backend ?? 'onnx', { threads: o.threads });
    // Work in weights quantized: measuring quantizes each at every allowed width, writing once more.
    const params = targets.reduce((s, t) => s + t.rows * t.cols, 0);
    const measureWeight = allocateMode === 'uniform' ? 0 : params * choices.length;
    task = ctx.task(`quantize ${path.basename(ckpt.dir)}`, measureWeight + (o.dryRun ? 0 : params));

    const factors = new Map<number, { f: Float64Array; w: Float64Array }>();
    const inputsOf = (name: string): Inputs | undefined => {
      if (!stats) return undefined;
      const src = inputStatsName(name);
      if (!stats.has(`imatrix/${src}`)) return undefined;
      const rows = stats.f64(`rows/${src}`)[0];
      const full = stats.has(`hessian/${src}`) ? stats.f32(`hessian/${src}`) : undefined;
      return { rows, diag: full ? undefined : stats.f64(`imatrix/${src}`), full };
    };
    const fallbacks = new Set<string>();
    const quantizeOne = async (w: Float32Array, t: Target, bits: number, inputs: Inputs | undefined): Promise<QuantizedMatrix> => {
      requireFinite(w, t.name, ckpt.dir);
      if (method === 'gptq') {
        if (inputs?.full && inputs.rows > 0) {
          const q = await gptq(w, t.rows, t.cols, inputs.full, { bits, groupSize: gs }, { actOrder: !!o.actOrder, damp: o.damp ?? 0.01 }, be);
          if (q.fallback) fallbacks.add(t.name);
          return q;
        }
        fallbacks.add(t.name);
      }
      return quantizeRtn(w, t.rows, t.cols, { bits, groupSize: gs });
    };
    /** f^α·w^β·‖(W−Q)X‖² per calibration row. */
    const weightedError = async (w: Float32Array, q: QuantizedMatrix, t: Target, inputs: Inputs | undefined): Promise<number> => {
      if (!inputs || inputs.rows === 0) return 0;
      const h = inputs.full ? { full: inputs.full } : { diag: inputs.diag! };
      const err = await outputError(w, dequantize(q), t.rows, t.cols, h, be);
      return (weightFactor(stats, t, alpha, beta, factors) * err) / inputs.rows;
    };

    // Fixed bits, minimum bits and the allowed choices of each group.
    const fixedBits = (g: Group): number | undefined => {
      if (g.cls === 'router') return ROUTER_BITS;
      if (g.cls === 'attn') return o.attnBits;
      if (g.cls === 'shared') return o.sharedExpertBits;
      return undefined;
    };
    const bitsOf = new Map<string, number>();
    const costOf = new Map<string, Record<string, number>>();
    let solver: QuantizeReport['solver'] = null;

    if (allocateMode === 'uniform') {
      for (const g of groups) bitsOf.set(g.key, fixedBits(g) ?? o.bits);
    } else {
      // Measure every group's weighted error at every allowed bit-width, one tensor in memory at a time.
      const allowedOf = (g: Group): number[] => {
        const fixed = fixedBits(g);
        if (fixed !== undefined) return [fixed];
        if (g.cls === 'attn' || g.cls === 'shared' || g.cls === 'dense') {
          const high = choices.filter((b) => b >= ALWAYS_ACTIVE_MIN_BITS);
          return high.length ? high : [choices[choices.length - 1]];
        }
        return choices;
      };
      const measure = ctx.progress(`measure error at ${choices.join('/')} bits`, targets.length, 'tensors', measureWeight);
      const byTarget = new Map<string, Map<number, number>>();
      const groupOf = new Map(groups.map((g) => [g.key, g]));
      for (const t of targets) {
        const allowed = allowedOf(groupOf.get(t.group)!);
        const errs = new Map<number, number>();
        if (allowed.length > 1) {
          const w = reader.f32(t.name);
          const inputs = inputsOf(t.name);
          for (const b of allowed) errs.set(b, await weightedError(w, await quantizeOne(w, t, b, inputs), t, inputs));
        }
        byTarget.set(t.name, errs);
        measure.tick();
      }
      measure.done();
      for (const g of groups) {
        const allowed = allowedOf(g);
        if (allowed.length === 1) continue;
        const c: Record<string, number> = {};
        for (const b of allowed) c[b] = g.targets.reduce((s, t) => s + byTarget.get(t.name)!.get(b)!, 0);
        costOf.set(g.key, c);
      }
      // The LP: fixed groups take their bits out of the budget; the others choose.
      const scopes = scope === 'global' ? [groups] : [...new Set(groups.map((g) => g.layer))].map((l) => groups.filter((g) => g.layer === l));
      const results: AllocResult[] = [];
      for (const scoped of scopes) {
        const free = scoped.filter((g) => costOf.has(g.key));
        let budget = o.bits * scoped.reduce((s, g) => s + g.params, 0);
        for (const g of scoped) {
          if (!costOf.has(g.key)) {
            const b = allowedOf(g)[0];
            bitsOf.set(g.key, b);
            budget -= b * g.params;
          }
        }
        if (free.length === 0) continue;
        const problem: AllocGroup[] = free.map((g) => ({
          params: g.params,
          cost: choices.map((b) => costOf.get(g.key)![b] ?? 0),
          allowed: choices.map((b) => costOf.get(g.key)![b] !== undefined),
        }));
        const r = await allocate({ choices, groups: problem, budgetBits: budget });
        if (r.status === 'infeasible') {
          const least = scoped.reduce((s, g) => s + Math.min(...allowedOf(g)) * g.params, 0) / scoped.reduce((s, g) => s + g.params, 0);
          throw new UsageError(`--bits ${o.bits} is below the least average the constraints allow (${least.toFixed(3)} bits${scope === 'layer' ? ` in layer ${scoped[0].layer}` : ''})`, {
            hint: 'raise --bits, lower --attn-bits/--shared-expert-bits, or add smaller --bit-choices',
          });
        }
        free.forEach((g, i) => bitsOf.set(g.key, choices[r.choice[i]]));
        results.push(r);
      }
      if (results.length) {
        const objective = results.reduce((s, r) => s + r.objective, 0);
        const bound = results.reduce((s, r) => s + r.bound, 0);
        solver = {
          status: results.every((r) => r.status === 'optimal') ? 'optimal' : 'feasible',
          method: [...new Set(results.map((r) => r.method))].join('+'),
          seconds: results.reduce((s, r) => s + r.seconds, 0),
          objective,
          bound,
          gap: objective > 0 ? Math.max(0, (objective - bound) / objective) : 0,
          problems: results.length,
        };
      }
    }

    // The output plan: every tensor in checkpoint order; quantized weights as packed parts or in their dtype.
    const targetOf = new Map(targets.map((t) => [t.name, t]));
    const groupBits = (t: Target) => bitsOf.get(t.group)!;
    const plan: PlannedTensor[] = [];
    const tensorMetadata = new Map<string, Record<string, string>>();
    for (const ref of ckpt.tensors.values()) {
      if (!owned(ref.name)) continue;
      const t = targetOf.get(ref.name);
      if (t && format === 'packed') {
        const parts = packedPlan(ref.name, t.rows, t.cols, groupBits(t), gs);
        plan.push(...parts);
        const [k, v] = metadataEntry(ref.name, { bits: groupBits(t), group_size: gs, shape: [t.rows, t.cols], dtype: ref.dtype, method });
        tensorMetadata.set(parts[0].name, { [k]: v });
      } else {
        plan.push({ name: ref.name, dtype: ref.dtype, shape: ref.shape });
      }
    }
    const quantizedParams = targets.reduce((s, t) => s + t.rows * t.cols, 0);
    const codeBits = targets.reduce((s, t) => s + groupBits(t) * t.rows * t.cols, 0);
    const overheadBits = targets.reduce((s, t) => s + t.rows * Math.ceil(t.cols / gs) * 24 + t.rows * (Math.ceil((t.cols * groupBits(t)) / 8) * 8 - t.cols * groupBits(t)), 0);
    const histogram: Record<string, number> = {};
    const byClass: Record<string, { params: number; average_bits: number }> = {};
    for (const t of targets) {
      const n = t.rows * t.cols;
      histogram[groupBits(t)] = (histogram[groupBits(t)] ?? 0) + n;
      const c = (byClass[t.cls] ??= { params: 0, average_bits: 0 });
      c.average_bits = (c.average_bits * c.params + groupBits(t) * n) / (c.params + n);
      c.params += n;
    }
    const report: QuantizeReport = {
      model: ckpt.dir,
      output: path.resolve(o.output),
      format,
      method,
      allocate: allocateMode,
      bits_target: o.bits,
      bit_choices: choices,
      group_size: gs,
      granularity,
      budget_scope: scope,
      alpha,
      beta,
      average_bits: quantizedParams ? codeBits / quantizedParams : 0,
      stored_bits_per_weight: quantizedParams ? (codeBits + overheadBits) / quantizedParams : 0,
      quantized_params: quantizedParams,
      total_params: [...ckpt.tensors.values()].reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0),
      bits_histogram: histogram,
      by_class: byClass,
      predicted_cost: null,
      solver,
      gptq_fallbacks: [],
      size_bytes: plan.reduce((s, t) => s + tensorBytes(t), 0),
      dry_run: !!o.dryRun,
      groups: [],
      seconds: 0,
    };
    const costAt = new Map<string, number>();
    for (const g of groups) {
      const c = costOf.get(g.key);
      if (c) costAt.set(g.key, c[bitsOf.get(g.key)!]);
    }

    if (!o.dryRun) {
      await withOutput(o.output, { force: o.force, command: 'quantize', verify: verifyWritten }, async (out) => {
        const writerOptions = layerRange
          ? { maxShardBytes: Number.MAX_SAFE_INTEGER, singleFileName: PART_FILE, metadata: { ...ckpt.metadata, format: 'pt' }, tensorMetadata }
          : { maxShardBytes: o.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES, metadata: { ...ckpt.metadata, format: 'pt' }, tensorMetadata };
        const writer = new ShardedWriter(out.tmp, plan, writerOptions);
        const bar = ctx.progress(`quantize (${method}, ${allocateMode})`, quantizedParams, 'params');
        const refs = [...ckpt.tensors.values()].filter((ref) => owned(ref.name));
        // Plain RTN into the packed format runs on worker threads straight from the stored bytes, one weight
        // ahead: the next weight is read while this one is quantized, and written while the next is.
        const fastRtn = method === 'rtn' && format === 'packed' && !(allocateMode === 'uniform' && stats);
        pool = fastRtn ? new RtnPool(o.threads ?? os.availableParallelism()) : undefined;
        const queue = refs.filter((ref) => targetOf.has(ref.name));
        // Two sets of buffers, sized for the largest weight, used in turn: one weight computed, the other read or written.
        const partsOf = (t: Target) => packedPlan(t.name, t.rows, t.cols, groupBits(t), gs);
        const largest = (part: number) => Math.max(0, ...queue.map((ref) => tensorBytes(partsOf(targetOf.get(ref.name)!)[part])));
        const slots = pool ? [0, 1].map(() => pool!.slot(Math.max(0, ...queue.map((ref) => ref.end - ref.begin)), { qweight: largest(0), scales: largest(1), qzeros: largest(2) })) : [];
        let turn = 0;
        const launch = (ref: (typeof refs)[number]) => {
          const t = targetOf.get(ref.name)!;
          const slot = slots[turn++ % 2];
          const [qweight, scales, qzeros] = partsOf(t).map(tensorBytes);
          const out = { qweight: slot.out.qweight.subarray(0, qweight), scales: slot.out.scales.subarray(0, scales), qzeros: slot.out.qzeros.subarray(0, qzeros) };
          const src = reader.bytesInto(ref.name, slot.src);
          const job = pool!.quantize(src, ref.dtype, t.rows, t.cols, { bits: groupBits(t), groupSize: gs }, out).then((bad) => ({ bad, out, src }));
          job.catch(() => undefined); // awaited in turn; an early failure must not count as unhandled
          return { name: ref.name, job };
        };
        let queued = 0; // queue[queued] is the weight this loop reaches next
        let ahead: ReturnType<typeof launch> | undefined;
        for (const ref of refs) {
          const t = targetOf.get(ref.name);
          if (!t) {
            writer.writeChunks(ref.name, reader.chunks(ref.name, COPY_CHUNK_BYTES));
            continue;
          }
          if (pool) {
            const current = ahead?.name === ref.name ? ahead : launch(ref);
            const next = queue[++queued];
            ahead = next ? launch(next) : undefined;
            const { out: parts, bad, src } = await current.job;
            if (bad >= 0) requireFinite(toFloat32(src.subarray(bad * dtypeBytes(ref.dtype), (bad + 1) * dtypeBytes(ref.dtype)), ref.dtype), ref.name, ckpt.dir, bad);
            const names = partsOf(t);
            writer.write(names[0].name, parts.qweight);
            writer.write(names[1].name, parts.scales);
            writer.write(names[2].name, parts.qzeros);
            bar.tick(t.rows * t.cols);
            continue;
          }
          const w = reader.f32(ref.name);
          const inputs = inputsOf(ref.name);
          const q = await quantizeOne(w, t, groupBits(t), inputs);
          if (allocateMode === 'uniform' && stats) costAt.set(t.group, (costAt.get(t.group) ?? 0) + (await weightedError(w, q, t, inputs)));
          if (format === 'packed') {
            const parts = packedPlan(ref.name, t.rows, t.cols, q.bits, gs);
            writer.write(parts[0].name, packCodes(q.codes, t.rows, t.cols, q.bits));
            writer.write(parts[1].name, fromFloat32(q.scales, 'BF16'));
            writer.write(parts[2].name, q.zeros);
          } else {
            writer.write(ref.name, fromFloat32(dequantize(q), ref.dtype));
          }
          bar.tick(t.rows * t.cols);
        }
        writer.finish();
        bar.done();
        // The size, as everywhere (src/io/size.ts): the bytes of the weight files written, headers included.
        report.size_bytes = fileBytes(fs.readdirSync(out.tmp).filter((n) => n.endsWith('.safetensors')).map((n) => path.join(out.tmp, n)));
        report.gptq_fallbacks = [...fallbacks].sort();
        finishReport(report, groups, bitsOf, costAt, costOf, stats !== undefined);
        if (layerRange) {
          // A part for moe assemble: its tensors, and what assemble needs to rebuild the single run's checkpoint.
          const part: PartRecord = {
            format: PART_FORMAT,
            model: ckpt.dir,
            fingerprint: fingerprint(ckpt),
            layers: layerRange,
            num_layers: arch.numLayers,
            order: [...ckpt.tensors.keys()],
            config: ckpt.config,
            source_metadata: ckpt.metadata,
            options: { format, bits: o.bits, group_size: gs, method, allocate: allocateMode, budget_scope: scope, granularity, max_shard_bytes: o.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES },
            bits: Object.fromEntries(targets.map((t) => [t.name, groupBits(t)])),
            report: summary(report),
          };
          out.writeRecord(PART_RECORD, part);
          return;
        }
        const config = { ...ckpt.config };
        if (format === 'packed') config.quantization_config = quantizationConfig(report.average_bits, gs, method, allocateMode);
        writeConfig(out, config, ckpt.dir);
        out.copyAuxFiles(ckpt.dir);
        const prior = path.join(ckpt.dir, COMPRESSION_FILE);
        if (fs.existsSync(prior)) fs.copyFileSync(prior, path.join(out.tmp, COMPRESSION_FILE)); // keeps eval's expert map after prune or merge
        out.writeRecord(QUANT_RECORD_FILE, { tool: 'moe', operation: 'quantize', source: { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: o.stats ? path.resolve(o.stats) : null }, ...summary(report), tensors: Object.fromEntries(targets.map((t) => [t.name, groupBits(t)])) });
      });
    } else {
      finishReport(report, groups, bitsOf, costAt, costOf, stats !== undefined && allocateMode === 'lp');
      report.gptq_fallbacks = [...fallbacks].sort();
    }
    report.seconds = (Date.now() - started) / 1000;
    if (o.report) fs.writeFileSync(o.report, JSON.stringify({ tool: 'moe', ...withoutTimings(report) }, null, 1) + '\n');
    return report;
  } finally {
    task?.done();
    reader.close();
    stats?.close();
    await be?.dispose();
    await pool?.close();
  }
}

function finishReport(r: QuantizeReport, groups: Group[], bitsOf: Map<string, number>, costAt: Map<string, number>, costOf: Map<string, Record<string, number>>, measured: boolean): void {
  r.groups = groups.map((g) => ({ group: g.key, class: g.cls, layer: g.layer, params: g.params, bits: bitsOf.get(g.key)!, cost: measured ? (costAt.get(g.key) ?? 0) : null, costs: costOf.get(g.key) }));
  r.predicted_cost = measured ? r.groups.reduce((s, g) => s + (g.cost ?? 0), 0) : null;
}

/** The report without the per-group list (what --json prints; --report FILE has everything). */
export function summary(r: QuantizeReport): Omit<QuantizeReport, 'groups'> & { groups: number } {
  return { ...r, groups: r.groups.length };
}

export function formatQuantize(r: QuantizeReport): string {
  const mb = (b: number) => `${(b / 1e6).toFixed(2)} MB`;
  const lines = [
    `${r.dry_run ? 'dry run: would write' : `wrote ${r.output}:`} ${r.format}, ${r.method}, ${r.allocate} allocation, ${r.average_bits.toFixed(3)} bits average (${r.stored_bits_per_weight.toFixed(3)} with scales and zeros), ${mb(r.size_bytes)}`,
    `  quantized ${(r.quantized_params / 1e6).toFixed(2)} M of ${(r.total_params / 1e6).toFixed(2)} M params; bits: ${Object.entries(r.bits_histogram)
      .map(([b, n]) => `${b}-bit ${((100 * n) / r.quantized_params).toFixed(1)}%`)
      .join(', ')}`,
    `  by class: ${Object.entries(r.by_class)
      .map(([c, v]) => `${c} ${v.average_bits.toFixed(2)}`)
      .join(', ')}`,
  ];
  if (r.solver) lines.push(`  solver: ${r.solver.status} (${r.solver.method}, ${r.solver.problems} problem(s), gap ${(100 * r.solver.gap).toFixed(4)}%, ${r.solver.seconds.toFixed(2)} s)`);
  if (r.predicted_cost !== null) lines.push(`  predicted weighted output error ${r.predicted_cost.toExponential(4)}`);
  if (r.gptq_fallbacks.length) lines.push(`  RTN instead of GPTQ for ${r.gptq_fallbacks.length} weight(s) without calibrated inputs`);
  return lines.join('\n');
}


/** What `moe quantize` wrote: a packed or dequantized checkpoint, or a GGUF file (--format gguf). */
export type QuantizeResult = { packed: QuantizeReport } | { gguf: GgufReport; text: string };

function ggmlType(text: string, name: string): GgmlType {
  const t = ggmlTypeNamed(text);
  if (!t) throw new UsageError(`${name} ${JSON.stringify(text)} is not a GGUF type moe writes`, { hint: 'use q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q4_0, f16 or bf16' });
  return t;
}

function typeMenu(text: string, name: string): GgmlType[] {
  const menu = text.split(',').map((x) => ggmlTypeNamed(x.trim()));
  if (menu.some((x) => !x)) throw new UsageError(`${name} ${JSON.stringify(text)} holds a type moe does not write`);
  return menu as GgmlType[];
}

function bitChoices(text: string, name: string): number[] {
  const choices = parseBitChoices(text);
  if (!choices) throw new UsageError(`${name} ${JSON.stringify(text)} is not a list of integers from 1 to 8`, { hint: 'e.g. --bit-choices 2,3,4,8' });
  return choices;
}

async function runQuantize(model: string, o: Values, ctx: Context): Promise<QuantizeResult> {
  if (o.format === 'gguf') {
    if (o.bits !== undefined) throw new UsageError('--format gguf takes --type (uniform) or --allocate lp --bpw B, not --bits');
    if (o.layers !== undefined) throw new UsageError('--layers writes parts of a safetensors checkpoint; --format gguf writes one file', { hint: 'assemble the parts first, then write GGUF from the result' });
    // Imported when used: src/gguf/export.ts imports from this file.
    const { exportGguf, formatGguf } = await import('../gguf/export');
    const g = o as Omit<GgufOptions, 'model' | 'menu'> & { typeMenu: GgmlType[] };
    const opts: GgufOptions = { model, output: g.output, type: g.type, allocate: g.allocate, bpw: g.bpw, menu: g.typeMenu, stats: g.stats, alpha: g.alpha, beta: g.beta, force: g.force, dryRun: g.dryRun };
    const gguf = await exportGguf(opts, ctx);
    return { gguf, text: formatGguf(gguf) };
  }
  if (o.bits === undefined) throw new UsageError('--bits is required (or --format gguf with --type)', { hint: 'e.g. moe quantize MODEL --bits 4 -o OUT' });
  return { packed: await quantize({ ...(o as Omit<QuantizeOptions, 'model'>), model }, ctx) };
}

export const quantizeSpec: CommandSpec<QuantizeResult> = {
  name: 'quantize',
  summary: 'quantize the decoder\'s linear weights (RTN or GPTQ), uniform or with bits allocated by a linear program',
  args: [MODEL_ARG],
  options: [
    { flag: '--bits <b>', type: 'number', description: 'bits per weight: exact with --allocate uniform, the average budget with --allocate lp (e.g. 2.5)' },
    output('destination folder'),
    { flag: '--group-size <n>', type: 'int', min: 1, default: '128', description: 'weights per scale and zero point, along the input dimension' },
    { flag: '--method <name>', type: { choices: () => ['rtn', 'gptq'] }, description: 'quantizer (default: gptq when the stats hold Hessians, else rtn)' },
    { flag: '--stats <dir>', type: 'string', description: 'calibration stats of this model (moe calibrate; --hessians for GPTQ)', runner: true },
    { flag: '--allocate <mode>', type: { choices: () => ['uniform', 'lp'] }, default: 'uniform', description: 'same bits everywhere, or bits per group by linear programming (MC-MoE)' },
    { flag: '--bit-choices <list>', type: 'list', parse: bitChoices, default: '2,3,4,8', description: 'bit-widths the allocation may choose' },
    { flag: '--granularity <g>', type: { choices: () => ['expert', 'projection', 'layer'] }, default: 'expert', description: 'allocation group: one expert, one projection, or all experts of a layer' },
    { flag: '--budget-scope <s>', type: { choices: () => ['global', 'layer'] }, default: 'global', description: 'meet --bits over the whole model (bits move to the layers that need them) or in every layer' },
    { flag: '--alpha <a>', type: 'number', default: '1', description: 'exponent of expert frequency in the allocation weight' },
    { flag: '--beta <b>', type: 'number', default: '1.5', description: 'exponent of mean routing weight in the allocation weight' },
    { flag: '--attn-bits <n>', type: 'int', min: 1, description: 'fixed bits for attention (default: --bits, or at least 4 under lp)' },
    { flag: '--shared-expert-bits <n>', type: 'int', min: 1, description: 'fixed bits for shared experts (default: --bits, or at least 4 under lp)' },
    { flag: '--keep-router-fp', type: 'bool', description: 'leave the router unquantized (default: 8 bits)' },
    { flag: '--act-order', type: 'bool', description: 'GPTQ: quantize columns in order of decreasing Hessian diagonal' },
    { flag: '--damp <f>', type: 'number', default: '0.01', description: 'GPTQ dampening, a fraction of the mean Hessian diagonal' },
    { flag: '--format <f>', type: { choices: () => ['packed', 'dequantized', 'gguf'] }, default: 'packed', description: 'packed integers with scales (moe eval runs them), a plain checkpoint of dequantized weights, or a llama.cpp GGUF file' },
    { flag: '--type <t>', type: 'string', parse: ggmlType, default: 'q8_0', description: 'gguf: the ggml type of every weight (norms and routers stay F32): q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q4_0, f16, bf16' },
    { flag: '--bpw <b>', type: 'number', description: 'gguf with --allocate lp: average bits per weight (blocks\' scales included), e.g. 4.5' },
    { flag: '--type-menu <list>', type: 'list', parse: typeMenu, default: 'q2_k,q3_k,q4_k,q5_k,q6_k,q8_0', description: 'gguf with --allocate lp: the types the LP may choose' },
    { flag: '--report <file>', type: 'file', description: 'write every group\'s bits and predicted error, the size and the solver\'s status as JSON' },
    { flag: '--layers <A-B>', type: 'range', description: 'only decoder layers A to B (the rest of the model with layer 0): a part for moe assemble' },
    ...COMPUTE,
    MAX_SHARD_SIZE,
    FORCE,
    dryRun('allocate and report, write nothing'),
    JSON_OUTPUT,
  ],
  examples: [
    'moe quantize ./model --bits 4 -o ./model-int4',
    'moe quantize ./model --format gguf --type q4_k -o ./model-q4_k.gguf',
    'moe quantize ./model --format gguf --allocate lp --bpw 4.5 --stats ./stats -o ./gguf',
    'moe calibrate ./model --data calib.txt --hessians -o ./stats',
    'moe quantize ./model --stats ./stats --bits 2.5 --allocate lp --report alloc.json -o ./model-2.5bit',
    'moe quantize ./model --stats ./stats --bits 4 --format dequantized -o ./model-q4-hf',
  ],
  run: ([model], o, ctx) => runQuantize(model, o, ctx),
  format: (r) => ('gguf' in r ? r.text : formatQuantize(r.packed)),
  json: (r) => ('gguf' in r ? { ...r.gguf, tensors: r.gguf.tensors.length } : summary(r.packed)),
};
