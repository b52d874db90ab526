/**
 * `moe prune MODEL --stats STATS --method M --keep K -o OUT`: drops the same number of routed experts in every
 * MoE layer (a Hugging Face config holds one expert count) and writes a plain checkpoint with the kept experts
 * renumbered 0..K−1, the router rows and biases sliced to match, and a moe-compression.json record.
 */
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { Backend, BackendName } from '../backend/backend';
import { CalibrationStats, fingerprint } from '../calib/stats';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import { formatMB, weightBytes } from '../io/size';
import { checkNotInput, checkOutputFolder } from '../io/output';
import { DEFAULT_MAX_SHARD_BYTES } from '../io/writer';
import { computedExpert, LayerReduction, SELECT_SHARE, sourceBytes, writeReducedOutput } from '../model/reduce';
import type { Architecture } from '../model/arch';
import { loadArchitecture } from '../model/registry';
import { withTopK } from '../model/top-k';
import { keepAllWarning, resolveKeep } from '../prune/keep';
import { LayerChoice, pruneMethod, pruneMethodNames } from '../prune/methods';
import { ReconstructionProblem } from '../prune/reconstruct';
import { checkConstraints, KeepConstraints } from '../prune/select';
import { SUPER_EXPERT_FACTOR, superExperts } from '../prune/super-experts';
import type { Context, Task } from '../ui/progress';
import type { RecalibrationMode } from '../prune/router-recal';
import { DEFAULT_RECOMBINE_THRESHOLD, recombineLayer, RecombinedLayer } from '../prune/dern';
import { InternalError, UsageError } from '../errors';
import {
  checkRecalibration,
  formatRecalibration,
  RECALIBRATE_OPTION,
  recalibrateWritten,
  RouterRecalibrationReport,
} from './reduce-recal';
import { CommandSpec, MODEL_ARG, reductionOptions } from './spec';

export const DEFAULT_NAEE_LIMIT = 20000;

export interface PruneOptions {
  model: string;
  stats: string;
  method: string;
  keep?: number;
  ratio?: number;
  output: string;
  protectSuperExperts?: boolean;
  superFactor?: number;
  naeeLimit?: number;
  /** Also compute the NAEE reconstruction loss of the kept set for methods other than naee. */
  loss?: boolean;
  seed?: number;
  backend?: BackendName;
  threads?: number;
  maxShardBytes?: number;
  force?: boolean;
  dryRun?: boolean;
  /** Recombine the dropped experts' neurons into the kept experts after any selection (src/prune/dern.ts). */
  recombine?: boolean;
  /** DERN's compatibility threshold τ in chance spreads (default DEFAULT_RECOMBINE_THRESHOLD). */
  recombineThreshold?: number;
  /** Experts each token routes to in the output (num_experts_per_tok; default the model's own). */
  topK?: number;
  /** Refit the kept routers toward the original's routing after writing (src/prune/router-recal.ts). */
  recalibrateRouter?: RecalibrationMode;
}

export interface PrunedLayer {
  layer: number;
  kept: number[];
  dropped: number[];
  super_experts: number[];
  search: LayerChoice['search'];
  scores?: number[];
  /** Mean squared error of the layer's routed output on the calibration samples with only the kept experts. */
  reconstruction_loss?: number;
  evaluated?: number;
  /** Neuron recombination (dern, --recombine): the dropped experts' segments merged in, of how many. */
  recombined?: { segments: number; merged: number; experts_changed: number[] };
}

export interface PruneReport {
  model: string;
  output: string;
  method: string;
  experts_before: number;
  experts_after: number;
  /** Experts per token in the output, and in the model. */
  top_k: number;
  top_k_before: number;
  dry_run: boolean;
  protect_super_experts: boolean;
  layers: PrunedLayer[];
  bytes_written: number;
  router_recalibration?: RouterRecalibrationReport;
  /** The written weight files' bytes (src/io/size.ts); 0 in a dry run. */
  size_bytes: number;
  seconds: number;
}

/** What the steps of one prune run share. */
interface PruneRun {
  opts: PruneOptions;
  method: NonNullable<ReturnType<typeof pruneMethod>>;
  ckpt: Checkpoint;
  arch: Architecture;
  K: number;
  stats: CalibrationStats;
  reader: TensorReader;
  needProblem: boolean;
  ctx: Context;
  be?: Backend;
  report?: PruneReport;
  recombine: boolean;
}

/** Each MoE layer's kept experts (and, when a reconstruction problem is needed, its loss), one layer at a time. */
async function selectLayers(x: PruneRun, be: Backend | undefined, selectWeight: number): Promise<PrunedLayer[]> {
  const { opts, method, arch, K, stats, reader, needProblem, ctx } = x;
  const problems = new Map<number, ReconstructionProblem>();
  const problem = async (layer: number) => {
    if (!problems.has(layer)) {
      const xs = stats.f32(`layers.${layer}.moe.naee_in`);
      problems.set(layer, await ReconstructionProblem.build(be!, reader, arch, layer, xs, xs.length / arch.hidden));
    }
    return problems.get(layer)!;
  };
  const layers: PrunedLayer[] = [];
  const progress = ctx.progress(`select experts (${method.name})`, arch.moeLayers.length, 'layers', selectWeight);
  for (const layer of arch.moeLayers) {
    const supers = superExperts(stats, layer, opts.superFactor ?? SUPER_EXPERT_FACTOR);
    const c: KeepConstraints = {
      experts: arch.numExperts,
      keep: K,
      groups: arch.routing.nGroup,
      protect: new Set(opts.protectSuperExperts ? supers : []),
    };
    checkConstraints(c, layer);
    const choice = await method.select(layer, c, {
      stats,
      seed: opts.seed ?? 0,
      naeeLimit: opts.naeeLimit ?? DEFAULT_NAEE_LIMIT,
      problem,
    });
    const kept = choice.kept;
    layers.push({
      layer,
      kept,
      dropped: [...Array(arch.numExperts).keys()].filter((e) => !kept.includes(e)),
      super_experts: supers,
      search: choice.search,
      scores: choice.scores,
      reconstruction_loss: needProblem ? (await problem(layer)).loss(kept) : undefined,
      evaluated: choice.evaluated,
    });
    problems.delete(layer);
    if (x.recombine) layers[layers.length - 1].recombined = await recombination(x, layer, kept, be!);
    progress.tick();
  }
  progress.done();
  return layers;
}

const recombineThreshold = (opts: PruneOptions) => opts.recombineThreshold ?? DEFAULT_RECOMBINE_THRESHOLD;

/** One layer's neuron recombination: what it merges at selection, the weights again when the writer asks. */
async function recombination(x: PruneRun, layer: number, kept: number[], be: Backend) {
  const r = await recombineLayer(
    x.reader,
    x.arch,
    layer,
    kept,
    x.stats.frequency(layer),
    recombineThreshold(x.opts),
    be,
  );
  const changed = r.experts.map((e, i) => (e ? i : -1)).filter((i) => i >= 0);
  return { segments: r.segments, merged: r.recombined, experts_changed: changed };
}

/**
 * A layer's plan: copies of the kept experts, and with recombination the changed ones computed (recombined again
 * when the writer reaches the layer, so only one layer's experts are held at a time; the result is deterministic).
 */
function layerPlan(x: PruneRun, l: PrunedLayer): LayerReduction {
  const changed = l.recombined?.experts_changed ?? [];
  if (changed.length === 0) return { copyOf: l.kept };
  const { reader, arch, opts } = x;
  let made: Promise<RecombinedLayer> | undefined;
  const recombined = () =>
    (made ??= recombineLayer(
      reader,
      arch,
      l.layer,
      l.kept,
      x.stats.frequency(l.layer),
      recombineThreshold(opts),
      x.be!,
    ));
  return {
    copyOf: l.kept,
    computed: new Set(changed),
    compute: async (i) => {
      const e = (await recombined()).experts[i];
      if (!e) throw new InternalError(`recombination of layer ${l.layer} changed expert ${i} once but not again`);
      return computedExpert(reader, arch, l.layer, l.kept[i], e, 'DERN recombination');
    },
  };
}

/** The checkpoint with only the kept experts, and its moe-compression.json record; the bytes written. */
async function writePruned(x: PruneRun, layers: PrunedLayer[]): Promise<number> {
  const { opts, method, ckpt, arch, K, ctx } = x;
  const mode = opts.recalibrateRouter ?? 'off';
  const plan = new Map<number, LayerReduction>(layers.map((l) => [l.layer, layerPlan(x, l)]));
  const written = await writeReducedOutput(
    ckpt,
    arch,
    plan,
    K,
    {
      output: opts.output,
      force: opts.force,
      command: 'prune',
      maxShardBytes: opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES,
    },
    ctx,
    () => ({
      operation: 'prune',
      method: method.name,
      paper: method.paper ?? null,
      params: {
        keep: K,
        ratio: opts.ratio ?? null,
        protect_super_experts: !!opts.protectSuperExperts,
        super_factor: opts.superFactor ?? SUPER_EXPERT_FACTOR,
        seed: opts.seed ?? 0,
        naee_limit: opts.naeeLimit ?? DEFAULT_NAEE_LIMIT,
        recalibrate_router: mode,
        top_k: arch.topK,
        recombine: x.recombine,
        recombine_threshold: x.recombine ? recombineThreshold(opts) : null,
      },
      experts_before: arch.numExperts,
      experts_after: K,
      kept: Object.fromEntries(layers.map((l) => [String(l.layer), l.kept])),
      source: { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: path.resolve(opts.stats) },
      router_recalibration: x.report?.router_recalibration ?? null,
    }),
    mode === 'off'
      ? undefined
      : async (dir) => {
          const members = new Map(layers.map((l) => [l.layer, l.kept.map((e) => [e])]));
          x.report!.router_recalibration = await recalibrateWritten(dir, mode, members, { ...x, be: x.be! });
        },
  );
  return written.bytes;
}

export async function prune(opts: PruneOptions, ctx: Context): Promise<PruneReport> {
  const started = Date.now();
  const method = pruneMethod(opts.method);
  if (!method)
    throw new UsageError(`unknown --method ${JSON.stringify(opts.method)}`, {
      hint: `use one of ${pruneMethodNames().join(', ')}`,
    });
  const ckpt = openCheckpoint(opts.model);
  checkNotInput(opts.output, [
    { flag: 'MODEL', path: ckpt.dir },
    { flag: '--stats', path: opts.stats },
  ]);
  if (!opts.dryRun) checkOutputFolder(opts.output, opts.force);
  const source = loadArchitecture(ckpt);
  // The output's routing: the model's own top-k or --top-k (written as num_experts_per_tok; K must allow it).
  const arch = withTopK(source, opts.topK);
  checkRecalibration(arch, opts.recalibrateRouter);
  const K = resolveKeep(arch, opts.keep, opts.ratio);
  if (K === arch.numExperts)
    ctx.warn(keepAllWarning(K, opts.keep === undefined ? `--ratio ${opts.ratio}` : `--keep ${K}`, 'pruned'));
  const stats = new CalibrationStats(opts.stats);
  let be: Backend | undefined;
  const reader = new TensorReader(ckpt);
  // The predicted loss is part of every dry-run plan; writing runs compute it only when asked (it runs every expert).
  const needProblem = method.name === 'naee' || !!opts.loss || !!opts.dryRun;
  // Work in source bytes: choosing from the stats alone is quick; running every expert costs about a full read.
  const recalibrate = !opts.dryRun && (opts.recalibrateRouter ?? 'off') !== 'off';
  const recombine = !!method.recombines || !!opts.recombine;
  const selectWeight = sourceBytes(ckpt) * (needProblem || recombine ? 1 : SELECT_SHARE);
  const run: PruneRun = { opts, method, ckpt, arch, K, stats, reader, needProblem, ctx, recombine };
  let task: Task | undefined;
  try {
    stats.checkModel(ckpt);
    task = ctx.task(`prune ${path.basename(ckpt.dir)}`, selectWeight + (opts.dryRun ? 0 : sourceBytes(ckpt)));
    if (needProblem || recalibrate || recombine)
      be = await createBackend(opts.backend ?? 'onnx', { threads: opts.threads });
    run.be = be;
    const layers = await selectLayers(run, be, selectWeight);
    if (layers.some((l) => l.search === 'greedy'))
      ctx.warn(
        `NAEE: more than ${opts.naeeLimit ?? DEFAULT_NAEE_LIMIT} subsets per layer, searched greedily (dropping one expert at a time)`,
      );
    const report: PruneReport = {
      model: ckpt.dir,
      output: path.resolve(opts.output),
      method: method.name,
      experts_before: arch.numExperts,
      experts_after: K,
      top_k: arch.topK,
      top_k_before: source.topK,
      dry_run: !!opts.dryRun,
      protect_super_experts: !!opts.protectSuperExperts,
      layers,
      bytes_written: 0,
      size_bytes: 0,
      seconds: 0,
    };
    run.report = report;
    if (!opts.dryRun) {
      report.bytes_written = await writePruned(run, layers);
      report.size_bytes = weightBytes(opts.output);
    }
    report.seconds = (Date.now() - started) / 1000;
    return report;
  } finally {
    task?.done();
    reader.close();
    stats.close();
    await be?.dispose();
  }
}

export function formatPrune(r: PruneReport): string {
  const lines = [
    `${r.dry_run ? 'dry run: would prune' : `wrote ${r.output}: pruned`} ${r.experts_before} → ${r.experts_after} experts per MoE layer by ${r.method}${r.top_k !== r.top_k_before ? `, top-k ${r.top_k_before} → ${r.top_k}` : ''}${r.dry_run ? '' : ` (${formatMB(r.size_bytes)}, ${r.seconds.toFixed(1)} s)`}`,
  ];
  for (const l of r.layers) {
    const loss = l.reconstruction_loss !== undefined ? `  loss ${l.reconstruction_loss.toExponential(3)}` : '';
    const supers = l.super_experts.length ? `  super ${l.super_experts.join(',')}` : '';
    const rc = l.recombined;
    const merged = rc
      ? `  recombined ${rc.merged}/${rc.segments} neurons into ${rc.experts_changed.length} experts`
      : '';
    const scores = l.scores ? `  scores ${l.scores.map((x) => x.toPrecision(3)).join(' ')}` : '';
    lines.push(
      `  layer ${String(l.layer).padStart(3)}  keep ${l.kept.join(',')}${loss}${supers}${merged}${l.search === 'greedy' ? '  (greedy)' : ''}${scores}`,
    );
  }
  if (r.router_recalibration) lines.push(formatRecalibration(r.router_recalibration));
  return lines.join('\n');
}

export const pruneSpec: CommandSpec<PruneReport> = {
  name: 'prune',
  summary: 'drop routed experts (the same number in every MoE layer) and write a plain checkpoint',
  args: [MODEL_ARG],
  options: [
    {
      flag: '--method <name>',
      type: { choices: pruneMethodNames },
      required: true,
      description: 'how experts are chosen',
    },
    {
      flag: '--protect-super-experts',
      type: 'bool',
      description: 'never drop super experts (extreme down_proj outputs)',
    },
    {
      flag: '--super-factor <f>',
      type: 'number',
      default: '5',
      description: 'super expert: largest |down_proj output| above F × the layer median',
    },
    {
      flag: '--naee-limit <n>',
      type: 'int',
      min: 1,
      default: '20000',
      description: 'NAEE tries every subset up to this many per layer, else searches greedily',
    },
    { flag: '--loss', type: 'bool', description: "report every layer's NAEE reconstruction loss for any method" },
    { flag: '--seed <n>', type: 'int', default: '0', description: 'seed (random method)' },
    {
      flag: '--recombine',
      type: 'bool',
      description:
        "after any selection, merge the dropped experts' neurons into the kept experts (DERN; dern does this)",
    },
    {
      flag: '--recombine-threshold <t>',
      type: 'number',
      default: String(DEFAULT_RECOMBINE_THRESHOLD),
      description:
        'DERN: merge a dropped neuron only when its compatibility with a kept neuron reaches T (in chance spreads)',
    },
    {
      flag: '--top-k <k>',
      type: 'int',
      min: 1,
      description: "experts each token routes to in the output (num_experts_per_tok; default the model's own)",
    },
    RECALIBRATE_OPTION,
    ...reductionOptions("print each layer's plan and write nothing"),
  ],
  examples: [
    'moe prune ./model --stats ./stats --method reap --ratio 0.5 -o ./model-reap50',
    'moe prune ./model --stats ./stats --method naee --keep 6 --protect-super-experts --dry-run',
    'moe prune ./model --stats ./stats --method reap --keep 4 --recalibrate-router ls -o ./model-reap4-recal',
    'moe prune ./model --stats ./stats --method dern --ratio 0.5 -o ./model-dern50',
    'moe prune ./model --stats ./stats --method reap --keep 6 --top-k 1 -o ./model-reap6-top1',
  ],
  run: ([model], o, ctx) => prune({ ...(o as Omit<PruneOptions, 'model'>), model }, ctx),
  format: formatPrune,
};
