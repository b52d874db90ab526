/**
 * `moe calibrate MODEL --data FILE -o STATS`: runs the model once over calibration text, layer by layer, and
 * records what prune, merge and quantize need (see src/calib/stats.ts for the file).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { Backend, BackendName } from '../backend/backend';
import { HESSIAN_WEIGHTINGS, HessianWeighting } from '../calib/affinity';
import type { LayerCollector } from '../calib/collector';
import { calibrateLayers } from '../calib/pipeline';
import {
  combineParts,
  CombineReport,
  DataShard,
  naeeSample,
  parseDataShard,
  PART_FORMAT,
  PartJson,
  partPlan,
  partTensors,
  shardBatches,
} from '../calib/shards';
import { fingerprint, layerPlan, STATS_FORMAT, STATS_JSON, STATS_TENSORS, StatsJson } from '../calib/stats';
import { UsageError } from '../errors';
import { loadWindows, positionsWarning, sampleWindows } from '../eval/data';
import { batches } from '../eval/perplexity';
import { loadTokenizer, TextTokenizer } from '../eval/tokenizer';
import { imbalance, SelfSample, selfSample } from '../calib/ebss';
import { Decoder } from '../model/forward/decode';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import { checkNotInput, checkOutputFolder, OutputFolder, withOutput } from '../io/output';
import { PlannedTensor, ShardedWriter } from '../io/writer';
import type { Architecture } from '../model/arch';
import { ForwardPass } from '../model/forward/model';
import { loadArchitecture } from '../model/registry';
import { announceTokenizing, Context } from '../ui/progress';
import { CommandSpec, COMPUTE, dryRun, FORCE, JSON_OUTPUT, MODEL_ARG, output } from './spec';

/** --batch-tokens' default: tokens run through a layer at once (and the unit --data-shard slices). */
const BATCH_TOKENS = 4096;

export const DEFAULT_CALIB_TEXT = path.join(__dirname, '..', '..', 'fixtures', 'text', 'calib.txt');

export interface CalibrateOptions {
  model: string;
  output: string;
  data?: string;
  seqLen: number;
  maxTokens?: number;
  samples?: number;
  seed?: number;
  hessians?: boolean;
  allExperts?: boolean;
  hessianWeighting?: HessianWeighting;
  /** Calibrate on N sequences the model generates itself (EBSS, src/calib/ebss.ts) instead of --data. */
  selfSample?: number;
  sampleWidth?: number;
  sampleTau?: number;
  sampleNoRepeat?: number;
  naeeTokens?: number;
  backend?: BackendName;
  threads?: number;
  batchTokens?: number;
  activationBudgetBytes?: number;
  force?: boolean;
  dryRun?: boolean;
  /** --data-shard I/N: write the part of the I-th of N slices of the batches (src/calib/shards.ts). */
  dataShard?: DataShard;
  /** --data-shards N: run the N shards one after another here and combine them. */
  dataShards?: number;
}

export interface LayerSummary {
  layer: number;
  seconds: number;
  most_used?: { expert: number; frequency: number }[];
  least_used?: { expert: number; frequency: number }[];
  /** MoE layers: tokens routed to each expert, and the tokens its linear inputs saw (all of them: --all-experts). */
  routed_tokens?: number[];
  observed_tokens?: number[];
}

/** What --self-sample generated. */
export interface SelfSampleReport {
  sequences: number;
  length: number;
  width: number;
  tau: number | null;
  /** n-grams of this many tokens never repeat within a sequence (0: no rule). */
  no_repeat: number;
  /** Mean over sequences: the chosen tokens' mean log-probability, and the imbalance (src/calib/ebss.ts). */
  mean_log_prob: number;
  imbalance: number;
  seconds: number;
}

export interface CalibrateReport {
  model: string;
  output: string;
  data: string;
  /** --data-shard: this part's shard, its batches [first, end) of `of` (windows and tokens are the shard's). */
  data_shard?: { index: number; count: number; batches: [number, number]; of: number };
  self_sample?: SelfSampleReport;
  windows: number;
  tokens: number;
  /**
   * Mean over MoE layers of the coefficient of variation of the routed counts (std / mean over experts): 0 when
   * every expert got as many tokens.
   */
  imbalance: number | null;
  hessians: boolean;
  all_experts: boolean;
  hessian_weighting: HessianWeighting;
  naee_tokens: number;
  spilled: boolean;
  dry_run: boolean;
  layers: LayerSummary[];
  seconds: number;
}

/** What the write step needs: the options, the model, the sampled windows and the stats plan of every layer. */
interface CalibrateRun {
  opts: CalibrateOptions;
  ckpt: Checkpoint;
  arch: Architecture;
  be: Backend;
  reader: TensorReader;
  data: string;
  /** sha256 of the data file (self-sampling: of the file written). */
  dataSha?: string;
  windows: Int32Array[];
  /** --self-sample: how to generate the windows (then empty until generated). */
  selfSample?: SelfSampleSpec;
  /** The task's work units the self-sampling phase is worth. */
  sampleWeight: number;
  tokens: number;
  naee: number[];
  seed: number;
  inDims: Map<string, number>;
  plans: PlannedTensor[][];
  report: CalibrateReport;
  ctx: Context;
  /** --data-shard: the part's batches and the global token indices [first, end) they hold. */
  shard?: { of: DataShard; batches: [number, number]; total: number; tokens: [number, number] };
}

interface SelfSampleSpec {
  sequences: number;
  width: number;
  tau: number;
  noRepeat: number;
  tokenizer: TextTokenizer;
}

/** The file --self-sample writes in the stats folder: the generated windows, pre-tokenized (a --data input). */
export const SELF_SAMPLE_FILE = 'self-sample.json';

/** Generates the self-sampled windows (EBSS) and writes them to the stats folder being written. */
async function generateWindows(out: OutputFolder, r: CalibrateRun, spec: SelfSampleSpec): Promise<void> {
  const { arch, opts } = r;
  const tok = spec.tokenizer;
  const special = new Set(tok.specialIds?.() ?? []);
  const allowed = new Uint8Array(arch.vocab);
  for (let i = 0; i < arch.vocab; i++) allowed[i] = !special.has(i) && (tok.hasId?.(i) ?? true) ? 1 : 0;
  const prefix = tok.encodeWithSpecial ? tok.encodeWithSpecial('') : [];
  const started = Date.now();
  const progress = r.ctx.progress('self-sampling', spec.sequences * opts.seqLen, 'tokens', r.sampleWeight);
  const dec = new Decoder(r.reader, arch, r.be);
  const samples = await selfSample(dec, {
    samples: spec.sequences,
    length: opts.seqLen,
    width: spec.width,
    tau: spec.tau,
    noRepeat: spec.noRepeat,
    seed: r.seed,
    prefix,
    allowed,
    moeLayers: arch.moeLayers,
    experts: arch.numExperts,
    onToken: () => progress.tick(),
  });
  progress.done();
  r.windows = samples.map((s) => s.ids);
  const bytes = Buffer.from(`[\n${r.windows.map((w) => `[${w.join(',')}]`).join(',\n')}\n]\n`);
  fs.writeFileSync(path.join(out.tmp, SELF_SAMPLE_FILE), bytes);
  r.dataSha = createHash('sha256').update(bytes).digest('hex');
  const mean = (f: (s: SelfSample) => number) => samples.reduce((a, s) => a + f(s), 0) / samples.length;
  r.report.self_sample = {
    sequences: spec.sequences,
    length: opts.seqLen,
    width: spec.width,
    tau: Number.isFinite(spec.tau) ? spec.tau : null,
    no_repeat: spec.noRepeat,
    mean_log_prob: mean((s) => s.meanLogProb),
    imbalance: mean((s) => s.sigma),
    seconds: (Date.now() - started) / 1000,
  };
}

/** Runs the layers over the windows, writing each layer's stats as it is done, then the stats record. */
async function writeStats(out: OutputFolder, r: CalibrateRun, started: number): Promise<void> {
  if (r.selfSample) await generateWindows(out, r, r.selfSample);
  const { opts, plans, report, shard } = r;
  const writer = new ShardedWriter(out.tmp, plans.flat(), {
    maxShardBytes: Number.MAX_SAFE_INTEGER,
    singleFileName: STATS_TENSORS,
    metadata: { format: shard ? PART_FORMAT : STATS_FORMAT },
  });
  const fp = new ForwardPass(r.reader, r.arch, r.be);
  const { spilled } = await calibrateLayers(
    fp,
    r.be,
    r.windows,
    r.inDims,
    {
      batchTokens: opts.batchTokens ?? BATCH_TOKENS,
      activationBudgetBytes: opts.activationBudgetBytes ?? 2e9,
      hessians: report.hessians,
      allExperts: report.all_experts,
      weighting: report.hessian_weighting,
      naeeTokens: r.naee,
      batchRange: shard?.batches,
    },
    r.ctx,
    ({ layer, collector, seconds }) => {
      // a part stores the sums; the stats file the means made from them
      const tensors = shard ? partTensors(layer, collector.sums()) : collector.tensors(plans[layer]);
      for (const t of plans[layer]) writer.write(t.name, tensors.get(t.name)!);
      report.layers.push({ layer, seconds, ...usage(collector, r.arch, report.tokens) });
    },
  );
  writer.finish();
  report.imbalance = layersImbalance(report.layers);
  report.spilled = spilled;
  report.seconds = (Date.now() - started) / 1000;
  const json = statsJson(r);
  if (!shard) return out.writeRecord(STATS_JSON, json);
  const part: PartJson = {
    ...json,
    format: PART_FORMAT,
    data_shard: {
      index: shard.of.index,
      count: shard.of.count,
      batches: shard.batches,
      of: shard.total,
      tokens: shard.tokens,
      batch_tokens: opts.batchTokens ?? BATCH_TOKENS,
      samples: opts.samples ?? null,
    },
  };
  out.writeRecord(STATS_JSON, part);
}

/** The stats file's record: where the stats come from (model, text, sampling) and what they hold. */
function statsJson(r: CalibrateRun): StatsJson {
  const { opts, arch } = r;
  return {
    format: STATS_FORMAT,
    fingerprint: fingerprint(r.ckpt),
    model: r.ckpt.dir,
    data: {
      file: path.resolve(r.data),
      sha256: r.dataSha ?? createHash('sha256').update(fs.readFileSync(r.data)).digest('hex'),
      windows: r.windows.length,
      tokens: r.tokens,
      seq_len: opts.seqLen,
      max_tokens: opts.maxTokens ?? null,
      ...(r.selfSample && {
        self_sample: {
          width: r.selfSample.width,
          tau: Number.isFinite(r.selfSample.tau) ? r.selfSample.tau : null,
          no_repeat: r.selfSample.noRepeat,
          imbalance: r.report.self_sample!.imbalance,
        },
      }),
    },
    hessians: r.report.hessians,
    all_experts: r.report.all_experts,
    hessian_weighting: r.report.hessian_weighting,
    naee_tokens: r.naee.length,
    seed: r.seed,
    moe_layers: arch.moeLayers,
    experts: arch.numExperts,
    top_k: arch.topK,
    linears: r.plans
      .flat()
      .filter((t) => t.name.startsWith('imatrix/'))
      .map((t) => t.name.slice('imatrix/'.length)),
  };
}

/** The --self-sample options, checked against the data options they replace (and the other option conflicts). */
function selfSampleOptions(opts: CalibrateOptions): { width: number; tau: number; noRepeat: number } | undefined {
  if (opts.samples !== undefined && opts.maxTokens !== undefined)
    throw new UsageError('give --max-tokens or --samples, not both');
  const weighting = opts.hessianWeighting ?? 'none';
  if (weighting !== 'none' && !opts.hessians)
    throw new UsageError(`--hessian-weighting ${weighting} weighs the Hessians: it needs --hessians`, {
      hint: 'add --hessians, or drop --hessian-weighting',
    });
  if (opts.dataShard && opts.selfSample !== undefined)
    throw new UsageError('--data-shard splits the windows of --data; --self-sample generates its own', {
      hint: 'calibrate on --data to shard, or self-sample on one machine',
    });
  if (opts.selfSample === undefined) {
    const given = { '--sample-width': opts.sampleWidth, '--sample-tau': opts.sampleTau };
    const tuned = Object.entries({ ...given, '--sample-no-repeat': opts.sampleNoRepeat }).find(
      ([, v]) => v !== undefined,
    )?.[0];
    if (tuned) throw new UsageError(`${tuned} tunes --self-sample`, { hint: 'add --self-sample N, or drop it' });
    return undefined;
  }
  if (opts.data !== undefined)
    throw new UsageError('give --data or --self-sample, not both', {
      hint: 'self-sampling generates the calibration text itself',
    });
  if (opts.samples !== undefined || opts.maxTokens !== undefined)
    throw new UsageError(`${opts.samples !== undefined ? '--samples' : '--max-tokens'} picks from --data`, {
      hint: '--self-sample N generates N sequences of --seq-len tokens',
    });
  const tau = opts.sampleTau ?? 1.2;
  if (!(tau > 0)) throw new UsageError(`--sample-tau ${tau} must be above 0`, { hint: 'Infinity: likelihood only' });
  return { width: opts.sampleWidth ?? 4, tau, noRepeat: opts.sampleNoRepeat ?? 0 };
}

/**
 * What calibrate runs on: the windows of --data (sampled), or, with --self-sample, the plan of the sequences to
 * generate (the windows come once the model is open for writing).
 */
function calibrationSource(
  opts: CalibrateOptions,
  ckpt: Checkpoint,
  arch: Architecture,
  data: string,
  sampling: { width: number; tau: number; noRepeat: number } | undefined,
  seed: number,
  ctx: Context,
): { windows: Int32Array[]; sampler?: SelfSampleSpec } {
  if (sampling) {
    if (arch.moeLayers.length === 0)
      throw new UsageError('--self-sample balances the experts, and this model has no MoE layer', {
        file: ckpt.dir,
        hint: 'calibrate on --data',
      });
    const tokenizer = loadTokenizer(ckpt.dir);
    const prefix = tokenizer.encodeWithSpecial ? tokenizer.encodeWithSpecial('').length : 0;
    if (opts.seqLen <= prefix)
      throw new UsageError(`--seq-len ${opts.seqLen} leaves no token after the tokenizer's ${prefix} leading ones`);
    const positions = positionsWarning(
      { windows: [new Int32Array(opts.seqLen)], sourceTokens: 0, kind: 'text' },
      opts.seqLen,
      ckpt.config,
    );
    if (positions) ctx.warn(positions);
    arch.checkWindow(opts.seqLen);
    return { windows: [], sampler: { sequences: opts.selfSample!, ...sampling, tokenizer } };
  }
  const set = loadWindows(
    data,
    announceTokenizing(ctx, data, () => loadTokenizer(ckpt.dir)),
    arch.vocab,
    { seqLen: opts.seqLen, maxTokens: opts.maxTokens },
  );
  const positions = positionsWarning(set, opts.seqLen, ckpt.config);
  if (positions) ctx.warn(positions);
  arch.checkWindow(set.windows.reduce((n, w) => Math.max(n, w.length), 0)); // before any tensor is read
  return { windows: sampleWindows(set.windows, opts.samples, seed) };
}

/** --data-shard I/N: the part's batches of the single run's (refused when there are fewer than N). */
function shardOf(windows: Int32Array[], batchTokens: number, of: DataShard) {
  const all = batches(windows, batchTokens);
  if (all.length < of.count)
    throw new UsageError(
      `--data-shard ${of.index}/${of.count}: the data makes ${all.length} batch${all.length === 1 ? '' : 'es'} of --batch-tokens ${batchTokens}, fewer than ${of.count} shards`,
      { hint: `use at most ${all.length} shards, or a smaller --batch-tokens` },
    );
  const [first, end] = shardBatches(all.length, of);
  const count = (gs: Int32Array[][]) => gs.reduce((s, g) => s + g.length * g[0].length, 0);
  const t0 = count(all.slice(0, first));
  const mine = all.slice(first, end);
  return {
    of,
    batches: [first, end] as [number, number],
    total: all.length,
    tokens: [t0, t0 + count(mine)] as [number, number],
    windows: mine.reduce((s, g) => s + g.length, 0),
  };
}

/**
 * --data-shards N: the N parts written one after another to a folder beside the output, combined into it, removed.
 * The report adds up the parts' (each layer's routed counts are exact sums).
 */
async function calibrateShards(opts: CalibrateOptions, n: number, ctx: Context): Promise<CalibrateReport> {
  if (opts.dataShard) throw new UsageError('give --data-shard or --data-shards, not both');
  if (opts.dryRun) return calibrate({ ...opts, dataShards: undefined }, ctx);
  checkOutputFolder(opts.output, opts.force);
  const out = path.resolve(opts.output);
  const tmp = fs.mkdtempSync(path.join(path.dirname(out), `.${path.basename(out)}.parts-`));
  try {
    const reports: CalibrateReport[] = [];
    for (let index = 0; index < n; index++) {
      const part = path.join(tmp, `part-${index}`);
      reports.push(
        await calibrate({ ...opts, dataShards: undefined, dataShard: { index, count: n }, output: part }, ctx),
      );
    }
    await combineParts(
      reports.map((r) => r.output),
      { output: opts.output, force: opts.force },
      ctx,
    );
    const tokens = reports.reduce((s, r) => s + r.tokens, 0);
    const layers = reports[0].layers.map((l, i) => {
      const sum = (k: 'routed_tokens' | 'observed_tokens') =>
        l[k] && l[k]!.map((_, e) => reports.reduce((s, r) => s + r.layers[i][k]![e], 0));
      const routed = sum('routed_tokens');
      return {
        layer: l.layer,
        seconds: reports.reduce((s, r) => s + r.layers[i].seconds, 0),
        ...(routed && { ...ranked(routed, tokens), routed_tokens: routed, observed_tokens: sum('observed_tokens') }),
      };
    });
    const { data_shard: _s, ...first } = reports[0];
    return {
      ...first,
      output: out,
      windows: reports.reduce((s, r) => s + r.windows, 0),
      tokens,
      imbalance: layersImbalance(layers),
      spilled: reports.some((r) => r.spilled),
      layers,
      seconds: reports.reduce((s, r) => s + r.seconds, 0),
    };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

export async function calibrate(opts: CalibrateOptions, ctx: Context): Promise<CalibrateReport> {
  if (opts.dataShards !== undefined && opts.dataShards > 1) return calibrateShards(opts, opts.dataShards, ctx);
  const started = Date.now();
  const sampling = selfSampleOptions(opts);
  const ckpt = openCheckpoint(opts.model);
  const arch = loadArchitecture(ckpt);
  const data = sampling ? path.join(path.resolve(opts.output), SELF_SAMPLE_FILE) : (opts.data ?? DEFAULT_CALIB_TEXT);
  checkNotInput(opts.output, [
    { flag: 'MODEL', path: ckpt.dir },
    ...(sampling ? [] : [{ flag: '--data', path: data }]),
  ]);
  if (!opts.dryRun) checkOutputFolder(opts.output, opts.force);
  if (!opts.data && !sampling)
    ctx.warn(
      `no --data: calibrating on the bundled generic text (${path.relative(process.cwd(), data)}); use text like your model's real inputs`,
    );
  const seed = opts.seed ?? 0;
  const { windows, sampler } = calibrationSource(opts, ckpt, arch, data, sampling, seed, ctx);
  const tokens = sampler ? sampler.sequences * opts.seqLen : windows.reduce((s, w) => s + w.length, 0);
  const shard = opts.dataShard && shardOf(windows, opts.batchTokens ?? BATCH_TOKENS, opts.dataShard);
  const naee = naeeSample(tokens, opts.naeeTokens ?? 1024, seed);
  const hessians = !!opts.hessians;
  const weighting = opts.hessianWeighting ?? 'none';
  const inDims = new Map(
    [...ckpt.tensors.values()].filter((t) => t.shape.length === 2).map((t) => [t.name, t.shape[1]]),
  );
  const plans = [...Array(arch.numLayers).keys()].map((l) =>
    (shard ? partPlan : layerPlan)(arch, l, naee.length, hessians, inDims),
  );
  const report: CalibrateReport = {
    model: ckpt.dir,
    output: path.resolve(opts.output),
    data: path.resolve(data),
    ...(shard && {
      data_shard: { index: shard.of.index, count: shard.of.count, batches: shard.batches, of: shard.total },
    }),
    windows: sampler ? sampler.sequences : shard ? shard.windows : windows.length,
    tokens: shard ? shard.tokens[1] - shard.tokens[0] : tokens,
    imbalance: null,
    hessians,
    all_experts: !!opts.allExperts,
    hessian_weighting: weighting,
    naee_tokens: naee.length,
    spilled: false,
    dry_run: !!opts.dryRun,
    layers: [],
    seconds: 0,
  };
  if (opts.dryRun) {
    const bytes = plans
      .flat()
      .reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'F64' ? 8 : 4), 0);
    const source = sampler
      ? `${sampler.sequences} self-sampled sequences of ${opts.seqLen} tokens (beam width ${sampler.width})`
      : `${windows.length} windows (${tokens} tokens)`;
    ctx.log(
      `dry run: would calibrate ${arch.numLayers} layers on ${source} and write ${(bytes / 1e6).toFixed(1)} MB of stats`,
    );
    return report;
  }
  const be = await createBackend(opts.backend ?? 'onnx', { threads: opts.threads });
  const reader = new TensorReader(ckpt);
  // Every token through every layer: the pipeline's phases are the layers, counted in tokens. Self-sampling runs
  // every token of every beam through every layer, one at a time.
  const sampleWeight = sampler ? arch.numLayers * tokens * sampler.width : 0;
  const task = ctx.task(`calibrate ${path.basename(ckpt.dir)}`, arch.numLayers * report.tokens + sampleWeight);
  try {
    await withOutput(opts.output, { force: opts.force, command: 'calibrate' }, (out) =>
      writeStats(
        out,
        {
          opts,
          ckpt,
          arch,
          be,
          reader,
          data,
          windows,
          selfSample: sampler,
          sampleWeight,
          tokens,
          naee,
          seed,
          inDims,
          plans,
          report,
          ctx,
          shard,
        },
        started,
      ),
    );
  } finally {
    task.done();
    reader.close();
    await be.dispose();
  }
  return report;
}

function usage(collector: LayerCollector, arch: Architecture, tokens: number): Omit<LayerSummary, 'layer' | 'seconds'> {
  const count = collector.count;
  if (count.length === 0) return {};
  // the rows gate_proj's input statistics saw (up_proj shares them)
  const observed = [...count].map(
    (_, e) => collector.linears.get(arch.expertKey(collector.layer, e, 'gate'))?.rows ?? 0,
  );
  return { ...ranked([...count], tokens), routed_tokens: [...count], observed_tokens: observed };
}

/** The report's imbalance: over the MoE layers' routed counts (src/calib/ebss.ts); null without MoE layers. */
function layersImbalance(layers: LayerSummary[]): number | null {
  const moe = layers.filter((l) => l.routed_tokens);
  if (!moe.length) return null;
  return imbalance(Float64Array.from(moe.flatMap((l) => l.routed_tokens!)), moe.length, moe[0].routed_tokens!.length);
}

/** The three most and least used experts of a layer, by their share of the tokens. */
function ranked(count: number[], tokens: number): Pick<LayerSummary, 'most_used' | 'least_used'> {
  const order = count
    .map((c, expert) => ({ expert, frequency: c / tokens }))
    .sort((a, b) => b.frequency - a.frequency || a.expert - b.expert);
  return { most_used: order.slice(0, 3), least_used: order.slice(-3).reverse() };
}

export function formatCalibrate(r: CalibrateReport): string {
  if (r.dry_run) return `dry run: ${r.windows} windows, ${r.tokens} tokens (nothing written)`;
  const lines = [
    `wrote ${r.output}: ${r.windows} windows, ${r.tokens} tokens, ${r.seconds.toFixed(1)} s${r.spilled ? ' (activations spilled to disk)' : ''}`,
  ];
  const s = r.self_sample;
  if (s)
    lines.push(
      `  self-sampled ${s.sequences} sequences of ${s.length} tokens (beam width ${s.width}, tau ${s.tau ?? 'inf'}) in ${s.seconds.toFixed(1)} s: ` +
        `mean log-prob ${s.mean_log_prob.toFixed(3)}, imbalance ${s.imbalance.toFixed(3)} per sequence`,
    );
  if (r.imbalance !== null)
    lines.push(`  expert imbalance ${r.imbalance.toFixed(3)} (coefficient of variation of the routed counts; 0: even)`);
  for (const l of r.layers) {
    const f = (x: { expert: number; frequency: number }) => `${x.expert}:${(100 * x.frequency).toFixed(1)}%`;
    const seen = l.observed_tokens?.length ? `  observed ≥ ${Math.min(...l.observed_tokens)} tokens each` : '';
    lines.push(
      `  layer ${String(l.layer).padStart(3)}  ${l.seconds.toFixed(1).padStart(6)} s${l.most_used ? `  most ${l.most_used.map(f).join(' ')}  least ${l.least_used!.map(f).join(' ')}${seen}` : '  dense'}`,
    );
  }
  return lines.join('\n');
}

export const calibrateSpec: CommandSpec<CalibrateReport | CombineReport> = {
  name: 'calibrate',
  summary: 'run the model once over calibration text and record the statistics prune, merge and quantize use',
  args: [{ name: '[model]', description: `${MODEL_ARG.description} (not with --combine)` }],
  options: [
    output('stats folder to write (stats.safetensors + stats.json)'),
    {
      flag: '--data <file>',
      type: 'path',
      description: 'calibration data: .txt, .jsonl or pre-tokenized .json (default: the bundled generic text)',
    },
    {
      flag: '--seq-len <n>',
      type: 'int',
      min: 2,
      default: '2048',
      description:
        'window length in tokens (deepseek_v32: at most its index_topk; longer windows are refused until sparse attention is implemented)',
    },
    { flag: '--max-tokens <n>', type: 'int', min: 2, description: 'use the first N tokens of the data' },
    {
      flag: '--samples <n>',
      type: 'int',
      min: 1,
      description: 'use N windows picked at random (seeded) from the data',
    },
    { flag: '--seed <n>', type: 'int', default: '0', description: 'seed for --samples and the NAEE subsample' },
    { flag: '--hessians', type: 'bool', description: 'also record XᵀX of every linear input (needed by GPTQ; large)' },
    {
      flag: '--all-experts',
      type: 'bool',
      description:
        "every routed expert's input statistics (imatrix, Hessian) also cover the tokens not routed to it; the forward and the routing statistics stay the routed ones (costs E/k times the experts' compute)",
    },
    {
      flag: '--hessian-weighting <rule>',
      type: { choices: () => HESSIAN_WEIGHTINGS },
      default: 'none',
      description:
        "gate: each token counts in a routed expert's Hessian by its routing weight (its router probability when not routed to it), MoEQuant's AGQ; needs --hessians",
    },
    {
      flag: '--self-sample <n>',
      type: 'int',
      min: 1,
      description:
        "calibrate on N sequences of --seq-len tokens the model writes itself, steered toward using every expert evenly (MoEQuant's EBSS); written to the stats folder as self-sample.json; replaces --data",
    },
    {
      flag: '--sample-width <w>',
      type: 'int',
      min: 1,
      description: 'beams of --self-sample (default 4; each token costs w single-token passes)',
    },
    {
      flag: '--sample-tau <t>',
      type: 'number',
      description:
        'balance temperature of --self-sample (default 1.2): lower favours expert balance, higher likelihood (Infinity: likelihood only)',
    },
    {
      flag: '--sample-no-repeat <n>',
      type: 'int',
      min: 0,
      description:
        'never repeat an n-gram of N tokens within a self-sampled sequence, as beam search often loops (default 0: off, as in the paper)',
    },
    {
      flag: '--naee-tokens <n>',
      type: 'int',
      default: '1024',
      description: 'MoE-block inputs and outputs kept per layer for NAEE',
    },
    ...COMPUTE,
    {
      flag: '--batch-tokens <n>',
      type: 'int',
      min: 1,
      default: String(BATCH_TOKENS),
      description: 'tokens run through a layer at once',
    },
    {
      flag: '--activation-memory <size>',
      key: 'activationBudgetBytes',
      type: 'size',
      default: '2GB',
      description: 'hidden states kept in memory between layers; beyond this they spill to a temporary file',
    },
    {
      flag: '--data-shard <I/N>',
      type: 'string',
      parse: (text, name) => parseDataShard(text, name),
      cliOnly: true,
      description:
        'calibrate only the I-th (from 0) of N contiguous slices of the batches and write a part for --combine (docs/layer-sharding.md)',
    },
    {
      flag: '--data-shards <n>',
      type: 'int',
      min: 1,
      description:
        'run N data shards one after another and combine them (what N machines compute, on this one; a recipe step: data_shards: N)',
    },
    {
      flag: '--combine <parts...>',
      type: 'list',
      listOf: 'path',
      parse: (text) => text.split(','),
      cliOnly: true,
      description: 'combine the parts written by --data-shard I/N (every I once) into the stats folder -o; no MODEL',
    },
    { ...FORCE, description: 'replace an existing stats folder' },
    dryRun('print what would be done and write nothing'),
    JSON_OUTPUT,
  ],
  examples: [
    'moe calibrate ./model --data calib.txt --seq-len 512 --max-tokens 65536 -o ./stats',
    'moe calibrate ./model --data calib.jsonl --samples 128 --hessians -o ./stats-gptq',
    'moe calibrate ./model --data calib.txt --hessians --all-experts --hessian-weighting gate -o ./stats-agq',
    'moe calibrate ./model --self-sample 128 --seq-len 512 --hessians -o ./stats-ebss',
    'moe calibrate ./model --data calib.txt --hessians --data-shard 0/4 -o ./part-0   # … 3/4 on other machines',
    'moe calibrate --combine ./part-0 ./part-1 ./part-2 ./part-3 -o ./stats',
  ],
  run: ([model], o, ctx) => {
    const parts = o.combine as string[] | undefined;
    if (parts) {
      if (model) throw new UsageError('--combine takes the part folders, not a MODEL', { hint: 'drop MODEL' });
      return combineParts(parts, { output: o.output as string, force: !!o.force, dryRun: !!o.dryRun }, ctx);
    }
    if (!model) throw new UsageError('missing MODEL', { hint: 'moe calibrate MODEL -o STATS (or --combine PART...)' });
    return calibrate({ ...(o as Omit<CalibrateOptions, 'model'>), model }, ctx);
  },
  format: (r) => ('parts' in r ? formatCombine(r) : formatCalibrate(r)),
};

function formatCombine(r: CombineReport): string {
  if (r.dry_run) return `dry run: would combine ${r.parts} parts (${r.tokens} tokens) into ${r.output}`;
  return `wrote ${r.output}: ${r.parts} parts combined, ${r.windows} windows, ${r.tokens} tokens, ${r.seconds.toFixed(1)} s`;
}
