/**
 * `moe quantize MODEL --bits B -o OUT`: round-to-nearest or GPTQ quantization of every linear weight in the
 * decoder layers (attention, router, routed and shared experts, dense MLPs), asymmetric per group along the input
 * dimension, with the bits either uniform or allocated by a linear program over groups (MC-MoE: experts that are
 * used more, weigh more in routing, or lose more at fewer bits get more). Writes the packed layout
 * (src/quant/format.ts) or a plain checkpoint of dequantized weights in the original dtype.
 * This file checks options and destinations and orchestrates: measure → allocate → plan (src/quant/quant-plan.ts),
 * then the writers (src/quant/execute.ts) and the records.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { Backend, BackendName } from '../backend/backend';
import { CalibrationStats, fingerprint } from '../calib/stats';
import { CheckpointError, UsageError } from '../errors';
import {
  Checkpoint,
  nestedConfig,
  openCheckpoint,
  storedName,
  storedTensorMetadata,
  TensorReader,
} from '../io/checkpoint';
import {
  checkFileDestination,
  checkNotInput,
  checkOutputFolder,
  OutputFolder,
  withOutput,
  withoutTimings,
} from '../io/output';
import { fileBytes } from '../io/size';
import type { TensorRef } from '../io/safetensors';
import { withoutFp8Config } from '../io/fp8';
import { withoutIntQuantConfig } from '../io/intquant';
import type { Architecture } from '../model/arch';
import { COMPRESSION_FILE } from '../model/reduce';
import { loadArchitecture } from '../model/registry';
import { plainWriter } from '../model/fused';
import { sourceWeight, writePlan } from '../quant/execute';
import type { Fold } from '../quant/execute';
import { awqReport, AwqReport, AwqRun, layerRanges, runAwq } from '../quant/awq-run';
import type { AwqFold } from '../quant/awq';
import { quantizationConfig } from '../quant/format';
import * as gptqFormat from '../quant/gptq-format';
import { verifyGptq } from '../io/gptq';
import { GRANULARITIES, Granularity, Group, groupTargets, quantTargets, Target, TargetClass } from '../quant/plan';
import {
  checkGgufGranularity,
  defaultGranularity,
  engineGranularityWarning,
  GRANULARITY_HELP,
} from '../quant/granularity';
import { BitRules, BitsChoice, buildPlan, chooseBits, CostTable, measureCosts, QuantPlan } from '../quant/quant-plan';
import type { QuantFormat } from '../quant/quant-plan';
import { checkCtRun, checkCtWeight, ctQuantizationConfig, verifyCtWritten } from '../quant/compressed-tensors';
import { Quantizer } from '../quant/quantizer';
import { Weighting } from '../quant/weighting';
import type { Context, Task } from '../ui/progress';
import { writeConfig } from '../io/config-text';
import { withoutMxfp4Config } from '../io/mxfp4';
import { DEFAULT_MAX_SHARD_BYTES, PlannedTensor } from '../io/writer';
import { verifyWritten } from '../model/verify';
import { PART_FILE, PART_FORMAT, PART_RECORD, PartRecord, QUANT_RECORD_FILE } from '../quant/records';
import type { GgufOptions, GgufReport } from './gguf';
import { alignWrittenRouters, RouterAlignmentReport } from './quantize-align';
import { DEFAULT_GGUF_MENU, GgmlType, parseGgmlType } from '../gguf/quants';
import { parseBitChoices } from '../quant/plan';
import { CommandSpec, COMPUTE, dryRun, FORCE, JSON_OUTPUT, MAX_SHARD_SIZE, MODEL_ARG, output, Values } from './spec';

export const DEFAULT_BIT_CHOICES = [2, 3, 4, 8];
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
  /** Refit each router to the original's routing after quantizing (src/quant/router-align.ts); needs stats. */
  alignRouter?: boolean;
  format?: QuantFormat;
  /** Symmetric grids (zero point 2^(bits−1)): the default of compressed-tensors, asymmetric elsewhere. */
  grid?: 'symmetric' | 'asymmetric';
  actOrder?: boolean;
  damp?: number;
  /** AWQ: per-input-channel scales searched on the stats and folded into norms and producers (src/quant/awq.ts). */
  awq?: boolean;
  report?: string;
  dryRun?: boolean;
  backend?: BackendName;
  threads?: number;
  maxShardBytes?: number;
  force?: boolean;
  /**
   * Only the decoder layers A..B (and, with layer 0, the tensors outside the layers): a partial output for
   * `moe assemble`.
   */
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
  format: QuantFormat;
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
  solver: {
    status: string;
    method: string;
    seconds: number;
    objective: number;
    bound: number;
    gap: number;
    problems: number;
  } | null;
  /** Weights quantized by RTN although GPTQ was asked (no calibrated rows, or a Hessian that would not factor). */
  gptq_fallbacks: string[];
  /** --align-router: routing agreement with the original on the calibration tokens, before and after the fit. */
  router_alignment?: RouterAlignmentReport;
  /** --awq: the scale groups searched (α and loss per group in --report FILE), and those not formed with why. */
  awq: AwqReport | null;
  size_bytes: number;
  dry_run: boolean;
  groups: GroupReport[];
  seconds: number;
}

function checkOptions(
  o: QuantizeOptions,
  stats: CalibrationStats | undefined,
): { method: 'rtn' | 'gptq'; choices: number[] } {
  const choices = o.bitChoices ?? DEFAULT_BIT_CHOICES;
  const gs = o.groupSize ?? 128;
  if (!Number.isInteger(gs) || gs < 1) throw new UsageError(`--group-size ${gs} must be a positive integer`);
  if (!(o.bits > 0)) throw new UsageError(`--bits ${o.bits} must be positive`);
  for (const [flag, b] of [
    ['--attn-bits', o.attnBits],
    ['--shared-expert-bits', o.sharedExpertBits],
  ] as const) {
    if (b !== undefined && !(Number.isInteger(b) && b >= 1 && b <= 8))
      throw new UsageError(`${flag} ${b} must be an integer from 1 to 8`);
  }
  const allocateMode = o.allocate ?? 'uniform';
  if (allocateMode === 'uniform' && !(Number.isInteger(o.bits) && o.bits >= 1 && o.bits <= 8)) {
    throw new UsageError(`--bits ${o.bits} is not a whole number of bits from 1 to 8`, {
      hint: 'fractional averages need --allocate lp --stats STATS',
    });
  }
  if (allocateMode === 'lp') {
    if (!stats)
      throw new UsageError(
        '--allocate lp needs --stats (expert frequencies and the measured error of each bit-width)',
        { hint: 'make them with moe calibrate MODEL --data FILE -o STATS' },
      );
    if (o.bits < choices[0] || o.bits > choices[choices.length - 1])
      throw new UsageError(`--bits ${o.bits} is outside the bit choices ${choices.join(',')}`, {
        hint: 'change --bits or --bit-choices',
      });
  }
  if (o.alignRouter && !stats)
    throw new UsageError('--align-router refits the routers on the calibration tokens: it needs --stats', {
      hint: 'make them with moe calibrate MODEL --data FILE -o STATS',
    });
  if (o.alignRouter && o.layers)
    throw new UsageError('--align-router needs every layer in order; --layers writes one part', {
      hint: 'quantize the whole model, or drop --align-router',
    });
  if (o.awq && !stats)
    throw new UsageError('--awq needs --stats (AWQ searches its scales on calibrated activations)', {
      hint: 'make them with moe calibrate MODEL --data FILE -o STATS (--hessians for the full output error)',
    });
  const hasHessians = !!stats?.json.hessians;
  const method = o.method ?? (hasHessians ? 'gptq' : 'rtn');
  if (method === 'gptq' && !hasHessians) {
    throw new UsageError(
      stats
        ? `the stats in ${stats.dir} hold no Hessians, which GPTQ needs`
        : 'GPTQ needs calibrated Hessians (--stats)',
      { hint: 're-run moe calibrate with --hessians, or use --method rtn' },
    );
  }
  return { method, choices };
}

/** Below 2 bits moe still quantizes (1-bit codes are valid), but the model rarely survives it: said, not refused. */
export function lowBitsWarning(bits: number, groupSize: number, allocate: string): string {
  const what =
    allocate === 'lp'
      ? `an average of ${bits} bits gives many groups 1 bit, 2 levels per group of ${groupSize} weights`
      : `1 bit keeps 2 levels per group of ${groupSize} weights`;
  return `--bits ${bits} is below 2: ${what}, which usually breaks the model (perplexity rises by orders of magnitude); 3 or 4 bits is the usual choice`;
}

/** The options of one run with their defaults, checked. */
interface Settings {
  method: 'rtn' | 'gptq';
  choices: number[];
  groupSize: number;
  alpha: number;
  beta: number;
  allocate: 'uniform' | 'lp';
  granularity: Granularity;
  scope: 'global' | 'layer';
  format: QuantFormat;
  rules: BitRules;
}

function settings(o: QuantizeOptions, stats: CalibrationStats | undefined, arch: Architecture, ctx: Context): Settings {
  const { method, choices } = checkOptions(o, stats);
  const groupSize = o.groupSize ?? 128;
  if (o.bits < 2) ctx.warn(lowBitsWarning(o.bits, groupSize, o.allocate ?? 'uniform'));
  const s: Settings = {
    method,
    choices,
    groupSize,
    alpha: o.alpha ?? 1,
    beta: o.beta ?? 1.5,
    allocate: o.allocate ?? 'uniform',
    granularity: o.granularity ?? defaultGranularity(o.format ?? 'packed'),
    scope: o.budgetScope ?? 'global',
    format: o.format ?? 'packed',
    rules: { bits: o.bits, choices, attnBits: o.attnBits, sharedExpertBits: o.sharedExpertBits },
  };
  if (o.layers) {
    const [a, b] = o.layers;
    if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a <= b && b < arch.numLayers))
      throw new UsageError(`--layers ${a}-${b} is not a range of layers 0-${arch.numLayers - 1}`);
    if (s.allocate === 'lp' && s.scope === 'global')
      throw new UsageError(
        '--layers with --allocate lp needs --budget-scope layer (a global budget needs every layer at once)',
      );
  }
  return s;
}

/** Whether this run writes a tensor: all of them, or with --layers those of its layers (and the rest with layer 0). */
function ownedBy(arch: Architecture, range: [number, number] | undefined): (name: string) => boolean {
  return (name) => {
    if (!range) return true;
    const role = arch.classify(name);
    if (role && 'layer' in role) return role.layer >= range[0] && role.layer <= range[1];
    return range[0] === 0;
  };
}

function checkDestinations(o: QuantizeOptions, ckpt: Checkpoint): void {
  const inputs = [
    { flag: 'MODEL', path: ckpt.dir },
    { flag: '--stats', path: o.stats },
  ];
  checkNotInput(o.output, inputs);
  if (!o.dryRun) checkOutputFolder(o.output, o.force);
  checkNotInput(o.report, inputs, '--report');
  // An existing --report file is replaced only with --force, and only if moe wrote it (its first key is "tool": "moe").
  if (o.report) checkFileDestination(o.report, !!o.force);
}

/**
 * How a written output is checked. compressed-tensors and GPTQ: the tensors against the plan (under their stored
 * names), then the output re-opened by moe's reader of the format, which resolves every module's scheme from the
 * config.
 */
function verifierOf(format: string, ckpt: Checkpoint, planned: PlannedTensor[]): (dir: string) => void {
  const sn = storedName(ckpt) ?? ((n: string) => n);
  const storedPlan = planned.map((t) => ({ ...t, name: sn(t.name) }));
  const reopen = (check: (dir: string) => void) => (dir: string) => {
    check(dir);
    openCheckpoint(dir);
  };
  if (format === 'gptq') return reopen(verifyGptq);
  if (format === 'compressed-tensors') return reopen((dir) => verifyCtWritten(dir, storedPlan));
  return verifyWritten;
}

/** A checkpoint moe already packed is refused: quantization starts from the original weights. */
function checkNotPacked(ckpt: Checkpoint): void {
  for (const t of ckpt.tensors.values()) {
    if (t.packed)
      throw new CheckpointError(`the model is already quantized (${t.name} is packed to ${t.packed.info.bits} bits)`, {
        file: ckpt.dir,
        hint: 'quantize the original model',
      });
  }
}

/** --allocate lp: every group's weighted error at every allowed bit-width, one tensor in memory at a time. */
async function measureLp(
  targets: Target[],
  groups: Group[],
  x: { s: Settings; quantizer: Quantizer; reader: TensorReader; ctx: Context; measureWeight: number; fold?: Fold },
): Promise<{ costs: CostTable; byTarget: Map<string, Map<number, number>> }> {
  const bar = x.ctx.progress(
    `measure error at ${x.s.choices.join('/')} bits`,
    targets.length,
    'tensors',
    x.measureWeight,
  );
  const measured = await measureCosts(
    targets,
    groups,
    x.s.rules,
    (t, bits) => errorsAt(x.quantizer, x, t, bits),
    () => bar.tick(),
  );
  bar.done();
  return measured;
}

/** Allocate: fixed groups take their bits out of the budget; the others choose. Refused below the least average. */
async function allocateBits(
  groups: Group[],
  costs: CostTable | undefined,
  o: QuantizeOptions,
  s: Settings,
): Promise<Extract<BitsChoice, { ok: true }>> {
  const chosen = await chooseBits(groups, s.rules, costs, s.scope);
  if (!chosen.ok) {
    throw new UsageError(
      `--bits ${o.bits} is below the least average the constraints allow (${chosen.least.toFixed(3)} bits${s.scope === 'layer' ? ` in layer ${chosen.scope[0].layer}` : ''})`,
      {
        hint: 'raise --bits, lower --attn-bits/--shared-expert-bits, or add smaller --bit-choices',
      },
    );
  }
  return chosen;
}

/**
 * The weights this run quantizes, with the engine formats' checks: GPTQ and compressed-tensors leave the router
 * unquantized (engines run it in the model's dtype); GPTQ also the weights its packing cannot hold ("-:" in the
 * config's dynamic), compressed-tensors lists them in `ignore`.
 */
function formatTargets(o: QuantizeOptions, s: Settings, arch: Architecture, ckpt: Checkpoint): Target[] {
  const gptq = s.format === 'gptq';
  const ct = s.format === 'compressed-tensors';
  if (gptq) gptqFormat.checkGptqOptions(o);
  if (gptq) gptqFormat.checkNotFused(arch, ckpt.tensors, ckpt.dir);
  if (ct) checkCtRun(!!o.layers, ckpt.dir);
  const all = quantTargets(arch, ckpt.tensors, s.granularity, !!o.keepRouterFp || !!o.alignRouter || gptq || ct);
  const targets = gptq ? gptqFormat.gptqTargets(all, o) : all;
  if (ct) targets.forEach((t) => checkCtWeight(t.name, t.cols, s.groupSize, ckpt.dir));
  return targets;
}

/** The quantizer of a run; with --awq, the scales searched first and the quantizer reading through their fold. */
async function quantizerOf(
  o: QuantizeOptions,
  s: Settings,
  x: Omit<AwqRun, 'rules' | 'allocate' | 'groupSize'> & { dir: string },
): Promise<{ quantizer: Quantizer; awq?: { fold: AwqFold; weighting: Weighting } }> {
  const awq = o.awq ? await runAwq({ ...x, rules: s.rules, allocate: s.allocate, groupSize: s.groupSize }) : undefined;
  const quantizer = new Quantizer(
    {
      method: s.method,
      groupSize: s.groupSize,
      actOrder: !!o.actOrder,
      damp: o.damp ?? 0.01,
      dir: x.dir,
      symmetric: x.symmetric,
    },
    awq?.weighting ?? x.weighting,
    x.be,
  );
  return { quantizer, awq };
}

export async function quantize(o: QuantizeOptions, ctx: Context): Promise<QuantizeReport> {
  const started = Date.now();
  const ckpt = openCheckpoint(o.model);
  checkDestinations(o, ckpt);
  const arch = loadArchitecture(ckpt);
  checkNotPacked(ckpt);
  const stats = o.stats ? new CalibrationStats(o.stats) : undefined;
  const reader = new TensorReader(ckpt);
  let be: Backend | undefined;
  let task: Task | undefined;
  try {
    stats?.checkModel(ckpt);
    const s = settings(o, stats, arch, ctx);
    const owned = ownedBy(arch, o.layers);
    const targets = formatTargets(o, s, arch, ckpt).filter((t) => owned(t.name));
    if (targets.length === 0 && !o.layers)
      throw new CheckpointError('the model has no linear weights moe can quantize', { file: ckpt.dir });
    const groups = groupTargets(targets);
    be = await createBackend(o.backend ?? 'onnx', { threads: o.threads });
    // Work in weights quantized: measuring quantizes each at every allowed width, writing once more.
    const params = targets.reduce((sum, t) => sum + t.rows * t.cols, 0);
    const measureWeight = s.allocate === 'uniform' ? 0 : params * s.choices.length;
    const awqWeight = o.awq ? params : 0; // the search rounds each weight at 20 scales, about one quantization
    task = ctx.task(`quantize ${path.basename(ckpt.dir)}`, awqWeight + measureWeight + (o.dryRun ? 0 : params));
    const symmetric = (o.grid ?? (s.format === 'compressed-tensors' ? 'symmetric' : 'asymmetric')) === 'symmetric';
    const { quantizer, awq } = await quantizerOf(o, s, {
      arch,
      reader,
      weighting: new Weighting(stats, s.alpha, s.beta),
      targets,
      groups,
      symmetric,
      owned,
      be,
      ctx,
      weight: awqWeight,
      dir: ckpt.dir,
    });

    // Measure (lp): every group's weighted error at every allowed bit-width, one tensor in memory at a time.
    const measured =
      s.allocate === 'lp'
        ? await measureLp(targets, groups, { s, quantizer, reader, ctx, measureWeight, fold: awq?.fold })
        : undefined;
    const chosen = await allocateBits(groups, measured?.costs, o, s);
    const mixed = engineGranularityWarning(s.format, s.granularity, targets, chosen.bits);
    if (mixed) ctx.warn(mixed);
    const refs = [...ckpt.tensors.values()].filter((ref) => owned(ref.name));
    const plan = buildPlan({
      format: s.format,
      method: s.method,
      groupSize: s.groupSize,
      symmetric,
      granularity: s.granularity,
      tensors: refs,
      targets,
      groups,
      bits: chosen.bits,
      ...measured,
      solver: chosen.solver,
    });
    const report = reportOf(plan, s, o, ckpt);
    report.awq = awq ? awqReport(awq.fold) : null;
    if (!o.dryRun) {
      const verify = verifierOf(s.format, ckpt, plan.tensors);
      await withOutput(o.output, { force: o.force, command: 'quantize', verify }, async (out) => {
        const costs = await writeTensors(out, plan, {
          o,
          s,
          ckpt,
          arch,
          refs,
          reader,
          quantizer,
          measure: s.allocate === 'uniform' && !!stats,
          ctx,
          fold: awq?.fold,
        });
        report.size_bytes = shardBytes(out.tmp);
        report.gptq_fallbacks = [...quantizer.fallbacks].sort();
        finishReport(report, plan, new Map([...plan.predicted, ...costs]), stats !== undefined);
        writeRecords(out, report, plan, { o, s, ckpt, arch });
        if (o.alignRouter) {
          // the written checkpoint is read back (config included), its routers refitted in place
          const run = { ckpt, arch, reader, stats: stats!, be: be!, ctx };
          report.router_alignment = await alignWrittenRouters(out.tmp, run);
          writeRecords(out, report, plan, { o, s, ckpt, arch });
        }
      });
    } else {
      finishReport(report, plan, plan.predicted, stats !== undefined && s.allocate === 'lp');
      report.gptq_fallbacks = [...quantizer.fallbacks].sort();
    }
    report.seconds = (Date.now() - started) / 1000;
    if (o.report)
      fs.writeFileSync(o.report, JSON.stringify({ tool: 'moe', ...withoutTimings(report) }, null, 1) + '\n');
    return report;
  } finally {
    task?.done();
    reader.close();
    stats?.close();
    await be?.dispose();
  }
}

/** The size, as everywhere (src/io/size.ts): the bytes of the weight files written, headers included. */
function shardBytes(dir: string): number {
  return fileBytes(
    fs
      .readdirSync(dir)
      .filter((n) => n.endsWith('.safetensors'))
      .map((n) => path.join(dir, n)),
  );
}

/** The weighted error of weight t at each of `bits`. */
async function errorsAt(
  quantizer: Quantizer,
  src: { reader: TensorReader; fold?: Fold },
  t: Target,
  bits: number[],
): Promise<Map<number, number>> {
  const w = sourceWeight(src, t.name);
  const inputs = quantizer.weighting.inputs(t.name);
  const errs = new Map<number, number>();
  for (const b of bits)
    errs.set(b, await quantizer.weightedError(w, await quantizer.quantize(w, t, b, inputs), t, inputs));
  return errs;
}

interface Run {
  o: QuantizeOptions;
  s: Settings;
  ckpt: Checkpoint;
}

/** The plan's tensors into the output's shards (or, with --layers, one part file); the measured costs when asked. */
async function writeTensors(
  out: OutputFolder,
  plan: QuantPlan,
  x: Run & {
    arch: Architecture;
    refs: TensorRef[];
    reader: TensorReader;
    quantizer: Quantizer;
    measure: boolean;
    ctx: Context;
    fold?: Fold;
  },
): Promise<Map<string, number>> {
  const { o, ckpt } = x;
  const metadata = { ...ckpt.metadata, format: 'pt' };
  const writerOptions = o.layers
    ? {
        maxShardBytes: Number.MAX_SAFE_INTEGER,
        singleFileName: PART_FILE,
        metadata,
        tensorMetadata: plan.tensorMetadata,
      }
    : {
        maxShardBytes: o.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES,
        metadata,
        tensorMetadata: storedTensorMetadata(ckpt, plan.tensorMetadata),
        storedName: storedName(ckpt),
      };
  // A plain checkpoint of a model that stores its experts fused is written fused (transformers' layout); moe's
  // packed format and --layers parts keep one tensor per expert.
  const writer = plainWriter(out.tmp, x.arch, plan.tensors, writerOptions, plan.format !== 'dequantized' || !!o.layers);
  const bar = x.ctx.progress(`quantize (${plan.method}, ${x.s.allocate})`, plan.quantizedParams, 'params');
  const gptq = plan.format === 'gptq' ? { inexact: 0, zeroZeros: 0 } : undefined;
  const costs = await writePlan({
    gptq,
    plan,
    refs: x.refs,
    reader: x.reader,
    writer,
    quantizer: x.quantizer,
    measure: x.measure,
    threads: o.threads,
    bar,
    fold: x.fold,
  });
  writer.finish();
  bar.done();
  if (gptq) gptqFormat.warnings(gptq).forEach((w) => x.ctx.warn(w));
  return costs;
}

/** The part record (with --layers), or the config, auxiliary files and quantization record of a whole model. */
function writeRecords(
  out: OutputFolder,
  report: QuantizeReport,
  plan: QuantPlan,
  x: Run & { arch: Architecture },
): void {
  const { o, s, ckpt } = x;
  const bits = Object.fromEntries(plan.weights.map((t) => [t.name, t.bits]));
  if (o.layers) {
    // A part for moe assemble: its tensors, and what assemble needs to rebuild the single run's checkpoint.
    const part: PartRecord = {
      format: PART_FORMAT,
      model: ckpt.dir,
      fingerprint: fingerprint(ckpt),
      layers: o.layers,
      num_layers: x.arch.numLayers,
      order: [...ckpt.tensors.keys()],
      config: ckpt.config,
      source_metadata: ckpt.metadata,
      options: {
        format: s.format,
        bits: o.bits,
        group_size: s.groupSize,
        method: s.method,
        allocate: s.allocate,
        budget_scope: s.scope,
        granularity: s.granularity,
        max_shard_bytes: o.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES,
        ...(o.awq ? { awq: true } : {}),
      },
      bits,
      report: summary(report),
    };
    const n = ckpt.nesting;
    if (n) part.nesting = { outer: n.outer, prefix: n.prefix, head: n.head, beside: [...n.beside] };
    out.writeRecord(PART_RECORD, part);
    return;
  }
  // Every tensor written is plain or moe-packed: a source's FP8 or MXFP4 declaration does not describe the output.
  const config = withoutIntQuantConfig(withoutFp8Config(withoutMxfp4Config({ ...ckpt.config })));
  if (s.format === 'packed')
    config.quantization_config = quantizationConfig(report.average_bits, s.groupSize, s.method, s.allocate);
  const quantized = new Set(plan.weights.map((w) => w.name));
  // Module names in the config are the stored ones (a nested language model's `model.language_model.…`).
  const sn = storedName(ckpt) ?? ((n: string) => n);
  if (s.format === 'gptq')
    config.quantization_config = gptqFormat.gptqConfig(
      plan.weights.map((w) => ({ ...w, name: sn(w.name) })),
      gptqFormat.gptqSkipped(x.arch, ckpt.tensors, quantized).map(sn),
      s.groupSize,
    );
  if (s.format === 'compressed-tensors') {
    const quantized = new Set(plan.weights.map((t) => t.name));
    const linear = [...ckpt.tensors.values()].filter((t) => t.shape.length === 2 && t.name.endsWith('.weight'));
    const ignore = linear.filter((t) => !quantized.has(t.name)).map((t) => sn(t.name));
    config.quantization_config = ctQuantizationConfig(
      new Map(Object.entries(bits).map(([n, b]) => [sn(n), b])),
      ignore,
      s.groupSize,
      plan.symmetric,
    );
  }
  writeConfig(out, nestedConfig(ckpt, config), ckpt.dir);
  out.copyAuxFiles(ckpt.dir);
  const prior = path.join(ckpt.dir, COMPRESSION_FILE);
  // keeps eval's expert map after prune or merge
  if (fs.existsSync(prior)) fs.copyFileSync(prior, path.join(out.tmp, COMPRESSION_FILE));
  const source = { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: o.stats ? path.resolve(o.stats) : null };
  out.writeRecord(QUANT_RECORD_FILE, { tool: 'moe', operation: 'quantize', source, ...summary(report), tensors: bits });
}

/** The report of a plan (sizes before writing: the stored tensors' bytes; the per-group list comes at the end). */
function reportOf(plan: QuantPlan, s: Settings, o: QuantizeOptions, ckpt: Checkpoint): QuantizeReport {
  return {
    model: ckpt.dir,
    output: path.resolve(o.output),
    format: s.format,
    method: s.method,
    allocate: s.allocate,
    bits_target: o.bits,
    bit_choices: s.choices,
    group_size: s.groupSize,
    granularity: s.granularity,
    budget_scope: s.scope,
    alpha: s.alpha,
    beta: s.beta,
    average_bits: plan.averageBits,
    stored_bits_per_weight: plan.storedBitsPerWeight,
    quantized_params: plan.quantizedParams,
    total_params: [...ckpt.tensors.values()].reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0),
    bits_histogram: plan.bitsHistogram,
    by_class: plan.byClass,
    predicted_cost: null,
    solver: plan.solver,
    gptq_fallbacks: [],
    awq: null,
    size_bytes: plan.tensorBytes,
    dry_run: !!o.dryRun,
    groups: [],
    seconds: 0,
  };
}

function finishReport(r: QuantizeReport, plan: QuantPlan, costAt: Map<string, number>, measured: boolean): void {
  r.groups = plan.groups.map((g) => ({
    group: g.key,
    class: g.cls,
    layer: g.layer,
    params: g.params,
    bits: plan.bits.get(g.key)!,
    cost: measured ? (costAt.get(g.key) ?? 0) : null,
    costs: plan.costs.get(g.key),
  }));
  r.predicted_cost = measured ? r.groups.reduce((sum, g) => sum + (g.cost ?? 0), 0) : null;
}

/** The report without the per-group list (what --json prints; --report FILE has everything). */
export function summary(
  r: QuantizeReport,
): Omit<QuantizeReport, 'groups' | 'awq'> & { groups: number; awq: Omit<AwqReport, 'by_group'> | null } {
  if (!r.awq) return { ...r, groups: r.groups.length, awq: null };
  const { by_group, ...awq } = r.awq;
  return { ...r, groups: r.groups.length, awq };
}

export function formatQuantize(r: QuantizeReport): string {
  const mb = (b: number) => `${(b / 1e6).toFixed(2)} MB`;
  const lines = [
    `${r.dry_run ? 'dry run: would write' : `wrote ${r.output}:`} ${r.format}, ${r.method}, ${r.allocate} allocation${r.allocate === 'lp' ? ` (${r.granularity} groups)` : ''}, ${r.average_bits.toFixed(3)} bits average (${r.stored_bits_per_weight.toFixed(3)} with scales and zeros), ${mb(r.size_bytes)}`,
    `  quantized ${(r.quantized_params / 1e6).toFixed(2)} M of ${(r.total_params / 1e6).toFixed(2)} M params; bits: ${Object.entries(
      r.bits_histogram,
    )
      .map(([b, n]) => `${b}-bit ${((100 * n) / r.quantized_params).toFixed(1)}%`)
      .join(', ')}`,
    `  by class: ${Object.entries(r.by_class)
      .map(([c, v]) => `${c} ${v.average_bits.toFixed(2)}`)
      .join(', ')}`,
  ];
  if (r.solver)
    lines.push(
      `  solver: ${r.solver.status} (${r.solver.method}, ${r.solver.problems} problem(s), gap ${(100 * r.solver.gap).toFixed(4)}%, ${r.solver.seconds.toFixed(2)} s)`,
    );
  if (r.predicted_cost !== null) lines.push(`  predicted weighted output error ${r.predicted_cost.toExponential(4)}`);
  if (r.awq)
    lines.push(
      `  AWQ: ${r.awq.groups} scale groups, mean α ${r.awq.mean_alpha.toFixed(3)}, searched output error ${r.awq.loss.toExponential(4)} (α = 0: ${r.awq.loss_alpha0.toExponential(4)})${r.awq.skipped.length ? `; not formed: ${r.awq.skipped.map((k) => `${k.kind} (${k.reason}; layers ${layerRanges(k.layers)})`).join(', ')}` : ''}`,
    );
  if (r.gptq_fallbacks.length)
    lines.push(`  RTN instead of GPTQ for ${r.gptq_fallbacks.length} weight(s) without calibrated inputs`);
  const a = r.router_alignment;
  if (a)
    lines.push(
      `  routers refitted: routing agreement ${(100 * a.before).toFixed(1)}% → ${(100 * a.after).toFixed(1)}% on ${a.tokens} calibration tokens (mean over MoE layers)`,
    );
  return lines.join('\n');
}

/** What `moe quantize` wrote: a packed or dequantized checkpoint, or a GGUF file (--format gguf). */
export type QuantizeResult = { packed: QuantizeReport } | { gguf: GgufReport; text: string };

function ggmlType(text: string, name: string): GgmlType {
  const t = parseGgmlType(text);
  if (!t)
    throw new UsageError(`${name} ${JSON.stringify(text)} is not a GGUF type moe writes`, {
      hint: 'use q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q4_0, f16 or bf16',
    });
  return t;
}

function typeMenu(text: string, name: string): GgmlType[] {
  const menu = text.split(',').map((x) => parseGgmlType(x.trim()));
  if (menu.some((x) => !x)) throw new UsageError(`${name} ${JSON.stringify(text)} holds a type moe does not write`);
  return menu as GgmlType[];
}

function bitChoices(text: string, name: string): number[] {
  const choices = parseBitChoices(text);
  if (!choices)
    throw new UsageError(`${name} ${JSON.stringify(text)} is not a list of integers from 1 to 8`, {
      hint: 'e.g. --bit-choices 2,3,4,8',
    });
  return choices;
}

async function runQuantize(model: string, o: Values, ctx: Context): Promise<QuantizeResult> {
  if (o.format === 'gguf') {
    if (o.bits !== undefined)
      throw new UsageError('--format gguf takes --type (uniform) or --allocate lp --bpw B, not --bits');
    if (o.awq)
      throw new UsageError('--awq is not implemented for --format gguf', {
        hint: 'use --awq with --format packed, dequantized, compressed-tensors or gptq',
      });
    if (o.layers !== undefined)
      throw new UsageError('--layers writes parts of a safetensors checkpoint; --format gguf writes one file', {
        hint: 'assemble the parts first, then write GGUF from the result',
      });
    checkGgufGranularity(o.granularity as Granularity | undefined);
    if (o.alignRouter)
      throw new UsageError('--align-router writes safetensors checkpoints; --format gguf does not take it yet', {
        hint: 'quantize with --align-router to packed or dequantized, or drop it',
      });
    const { exportGguf, formatGguf } = await import('./gguf');
    const g = o as Omit<GgufOptions, 'model' | 'menu'> & { typeMenu: GgmlType[] };
    const opts: GgufOptions = {
      model,
      output: g.output,
      type: g.type,
      allocate: g.allocate,
      bpw: g.bpw,
      menu: g.typeMenu,
      stats: g.stats,
      alpha: g.alpha,
      beta: g.beta,
      force: g.force,
      dryRun: g.dryRun,
      threads: o.threads as number | undefined,
    };
    const gguf = await exportGguf(opts, ctx);
    return { gguf, text: formatGguf(gguf) };
  }
  if (o.bits === undefined)
    throw new UsageError('--bits is required (or --format gguf with --type)', {
      hint: 'e.g. moe quantize MODEL --bits 4 -o OUT',
    });
  return { packed: await quantize({ ...(o as Omit<QuantizeOptions, 'model'>), model }, ctx) };
}

export const quantizeSpec: CommandSpec<QuantizeResult> = {
  name: 'quantize',
  summary: "quantize the decoder's linear weights (RTN or GPTQ), uniform or with bits allocated by a linear program",
  args: [MODEL_ARG],
  options: [
    {
      flag: '--bits <b>',
      type: 'number',
      description: 'bits per weight: exact with --allocate uniform, the average budget with --allocate lp (e.g. 2.5)',
    },
    output('destination folder'),
    {
      flag: '--group-size <n>',
      type: 'int',
      min: 1,
      default: '128',
      description: 'weights per scale and zero point, along the input dimension',
    },
    {
      flag: '--method <name>',
      type: { choices: () => ['rtn', 'gptq'] },
      description: 'quantizer (default: gptq when the stats hold Hessians, else rtn)',
    },
    {
      flag: '--stats <dir>',
      type: 'string',
      description: 'calibration stats of this model (moe calibrate; --hessians for GPTQ)',
      runner: true,
    },
    {
      flag: '--allocate <mode>',
      type: { choices: () => ['uniform', 'lp'] },
      default: 'uniform',
      description: 'same bits everywhere, or bits per group by linear programming (MC-MoE)',
    },
    {
      flag: '--bit-choices <list>',
      type: 'list',
      parse: bitChoices,
      default: DEFAULT_BIT_CHOICES.join(','),
      description: 'bit-widths the allocation may choose',
    },
    {
      flag: '--granularity <g>',
      type: { choices: () => GRANULARITIES },
      description: GRANULARITY_HELP,
    },
    {
      flag: '--budget-scope <s>',
      type: { choices: () => ['global', 'layer'] },
      default: 'global',
      description: 'meet --bits over the whole model (bits move to the layers that need them) or in every layer',
    },
    {
      flag: '--alpha <a>',
      type: 'number',
      default: '1',
      description: 'exponent of expert frequency in the allocation weight',
    },
    {
      flag: '--beta <b>',
      type: 'number',
      default: '1.5',
      description: 'exponent of mean routing weight in the allocation weight',
    },
    {
      flag: '--attn-bits <n>',
      type: 'int',
      min: 1,
      description: 'fixed bits for attention (default: --bits, or at least 4 under lp)',
    },
    {
      flag: '--shared-expert-bits <n>',
      type: 'int',
      min: 1,
      description: 'fixed bits for shared experts (default: --bits, or at least 4 under lp)',
    },
    { flag: '--keep-router-fp', type: 'bool', description: 'leave the router unquantized (default: 8 bits)' },
    {
      flag: '--align-router',
      type: 'bool',
      description:
        "keep the router unquantized and refit it, layer by layer, so the quantized model routes the calibration tokens as the original does (EAQuant's router alignment; needs --stats)",
    },
    {
      flag: '--act-order',
      type: 'bool',
      description: 'GPTQ: quantize columns in order of decreasing Hessian diagonal',
    },
    {
      flag: '--awq',
      type: 'bool',
      description:
        'AWQ: search per-input-channel scales on the stats (--stats) and fold them into the norms and producing projections before quantizing (RTN or GPTQ)',
    },
    {
      flag: '--damp <f>',
      type: 'number',
      default: '0.01',
      description: 'GPTQ dampening, a fraction of the mean Hessian diagonal',
    },
    {
      flag: '--format <f>',
      type: { choices: () => ['packed', 'dequantized', 'compressed-tensors', 'gguf', 'gptq'] },
      default: 'packed',
      description:
        'packed integers with scales (moe eval runs them), a plain checkpoint of dequantized weights, compressed-tensors pack-quantized (transformers, vLLM, SGLang), a llama.cpp GGUF file, or GPTQ v1 (GPTQModel, vLLM, transformers; 2/3/4/8 bits)',
    },
    {
      flag: '--grid <g>',
      type: { choices: () => ['symmetric', 'asymmetric'] },
      description:
        'symmetric (zero point 2^(bits-1), what fused-MoE kernels run) or asymmetric grids; default: symmetric for compressed-tensors, else asymmetric',
    },
    {
      flag: '--type <t>',
      type: 'string',
      parse: ggmlType,
      default: 'q8_0',
      description:
        'gguf: the ggml type of every weight (norms and routers stay F32): q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q4_0, f16, bf16',
    },
    {
      flag: '--bpw <b>',
      type: 'number',
      description: "gguf with --allocate lp: average bits per weight (blocks' scales included), e.g. 4.5",
    },
    {
      flag: '--type-menu <list>',
      type: 'list',
      parse: typeMenu,
      default: DEFAULT_GGUF_MENU.join(',').toLowerCase(),
      description: 'gguf with --allocate lp: the types the LP may choose',
    },
    {
      flag: '--report <file>',
      type: 'file',
      description: "write every group's bits and predicted error, the size and the solver's status as JSON",
    },
    {
      flag: '--layers <A-B>',
      type: 'range',
      description: 'only decoder layers A to B (the rest of the model with layer 0): a part for moe assemble',
    },
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
    'moe quantize ./model --stats ./stats --bits 3 --awq --method rtn -o ./model-awq-3bit',
  ],
  run: ([model], o, ctx) => runQuantize(model, o, ctx),
  format: (r) => ('gguf' in r ? r.text : formatQuantize(r.packed)),
  json: (r) => ('gguf' in r ? { ...r.gguf, tensors: r.gguf.tensors.length } : summary(r.packed)),
};
