/**
 * `moe merge MODEL --stats STATS --method msmoe|hcsmoe|average --keep K -o OUT`: merges each MoE layer's routed
 * experts into K, writing a plain checkpoint (the same contract as prune: experts renumbered, router rows
 * chosen or averaged per group, config updated, moe-compression.json listing each group's members and weights).
 */
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { Backend, BackendName } from '../backend/backend';
import { CalibrationStats, fingerprint } from '../calib/stats';
import { UsageError } from '../errors';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import { formatMB, weightBytes } from '../io/size';
import { checkNotInput, checkOutputFolder } from '../io/output';
import { DEFAULT_MAX_SHARD_BYTES } from '../io/writer';
import { fromFloat32 } from '../io/dtype';
import { computedExpert, LayerReduction, SELECT_SHARE, sourceBytes, writeReducedOutput } from '../model/reduce';
import { ExpertWeights, loadExpert } from '../model/experts';
import type { Architecture } from '../model/arch';
import { loadArchitecture } from '../model/registry';
import type { Linkage } from '../merge/grouping';
import {
  GroupInput,
  LayerRouter,
  MergedGroup,
  MergeMethod,
  MergeParams,
  resolveMergeParams,
  SIMILARITIES,
} from '../merge/method';
import { LINKAGES, mergeMethod, mergeMethodNames, ROUTER_MODES, RouterMode, Similarity } from '../merge/methods';
import type { Context, Task } from '../ui/progress';
import { keepAllWarning, resolveKeep } from '../prune/keep';
import type { RecalibrationMode } from '../prune/router-recal';
import {
  checkRecalibration,
  formatRecalibration,
  RECALIBRATE_OPTION,
  recalibrateWritten,
  RouterRecalibrationReport,
} from './reduce-recal';
import { CommandSpec, MODEL_ARG, reductionOptions } from './spec';

export type { MergedGroup } from '../merge/method';

export interface MergeOptions {
  model: string;
  stats: string;
  method: string;
  keep?: number;
  ratio?: number;
  output: string;
  similarity?: Similarity;
  linkage?: Linkage;
  align?: boolean;
  router?: RouterMode;
  dominantWeight?: number;
  refit?: boolean;
  refitRidge?: number;
  /** Further parameters a method declares (src/merge/method.ts), by name. */
  params?: Record<string, string | boolean>;
  seed?: number;
  /** Refit the merged routers toward the original's routing after writing (src/prune/router-recal.ts). */
  recalibrateRouter?: RecalibrationMode;
  backend?: BackendName;
  threads?: number;
  maxShardBytes?: number;
  force?: boolean;
  dryRun?: boolean;
}

export interface MergeReport {
  model: string;
  output: string;
  method: string;
  /** The method's similarity parameter ('none' when it declares none). */
  similarity: string;
  align: boolean;
  /** dominant, or weighted when the method averages router rows. */
  router: string;
  experts_before: number;
  experts_after: number;
  dry_run: boolean;
  /** The written weight files' bytes (src/io/size.ts); 0 in a dry run. */
  size_bytes: number;
  /** Per layer: the groups, and with --refit the relative output error on the calibration samples before/after. */
  layers: { layer: number; groups: MergedGroup[]; refit?: { error_before: number; error_after: number } }[];
  router_recalibration?: RouterRecalibrationReport;
  seconds: number;
}

export async function merge(opts: MergeOptions, ctx: Context): Promise<MergeReport> {
  const started = Date.now();
  const method = mergeMethod(opts.method);
  if (!method)
    throw new UsageError(`unknown --method ${JSON.stringify(opts.method)}`, {
      hint: `use one of ${mergeMethodNames().join(', ')}`,
    });
  const params = resolveMergeParams(method, givenParams(opts));
  const ckpt = openCheckpoint(opts.model);
  checkNotInput(opts.output, [
    { flag: 'MODEL', path: ckpt.dir },
    { flag: '--stats', path: opts.stats },
  ]);
  if (!opts.dryRun) checkOutputFolder(opts.output, opts.force);
  const arch = loadArchitecture(ckpt);
  checkRecalibration(arch, opts.recalibrateRouter);
  if (arch.routing.inputScaled && method.refineLayer && (method.refines?.(params) ?? true))
    throw new UsageError(
      `${arch.modelType}: --refit is not defined for experts that take the routing weight on their input`,
      {
        hint: 'merge without --refit (the refit fits output-weighted experts)',
      },
    );
  const K = resolveKeep(arch, opts.keep, opts.ratio);
  if (K === arch.numExperts)
    ctx.warn(keepAllWarning(K, opts.keep === undefined ? `--ratio ${opts.ratio}` : `--keep ${K}`, 'merged'));
  const stats = new CalibrationStats(opts.stats);
  const reader = new TensorReader(ckpt);
  const be = await createBackend(opts.backend ?? 'onnx', { threads: opts.threads });
  let task: Task | undefined;
  try {
    stats.checkModel(ckpt);
    // Work in source bytes: grouping by weights or outputs reads every expert once; by the stats alone it is quick.
    const groupWeight = sourceBytes(ckpt) * ((method.readsExperts?.(params) ?? true) ? 1 : SELECT_SHARE);
    task = ctx.task(`merge ${path.basename(ckpt.dir)}`, groupWeight + (opts.dryRun ? 0 : sourceBytes(ckpt)));
    const progress = ctx.progress(`group experts (${method.name})`, arch.moeLayers.length, 'layers', groupWeight);
    const layers: MergeReport['layers'] = [];
    const plan = new Map<number, LayerReduction>();
    for (const layer of arch.moeLayers) {
      const input: GroupInput = { layer, stats, reader, arch, be, seed: opts.seed ?? 0 };
      const freq = stats.frequency(layer);
      const sim = await method.similarity(input, params);
      const reap = stats.vector(layer, 'reap');
      const grouping = { freq, reap, sim, E: arch.numExperts, keep: K, routingGroups: arch.routing.nGroup };
      const groups = method.groups(grouping, params);
      const merged: MergedGroup[] = groups.map((g) => ({ ...g, weights: method.weights(freq, g, params, grouping) }));
      const entry = { layer, groups: merged };
      layers.push(entry);
      plan.set(layer, layerReduction(method, params, input, merged, entry));
      progress.tick();
    }
    progress.done();
    const report: MergeReport = {
      model: ckpt.dir,
      output: path.resolve(opts.output),
      method: method.name,
      similarity: String(params.similarity ?? 'none'),
      align: params.align === true,
      router: layers.some((l) => l.groups.some((g) => method.routerWeights(g, params))) ? 'weighted' : 'dominant',
      experts_before: arch.numExperts,
      experts_after: K,
      dry_run: !!opts.dryRun,
      size_bytes: 0,
      layers,
      seconds: 0,
    };
    if (!opts.dryRun) {
      await writeMerged({ opts, method, params, ckpt, arch, K, plan, reader, stats, be, ctx }, report);
      report.size_bytes = weightBytes(opts.output);
    }
    report.seconds = (Date.now() - started) / 1000;
    return report;
  } finally {
    task?.done();
    reader.close();
    stats.close();
    await be.dispose();
  }
}

/** What writing a merge needs from the run. */
interface MergeWrite {
  opts: MergeOptions;
  method: MergeMethod;
  params: MergeParams;
  ckpt: Checkpoint;
  arch: Architecture;
  K: number;
  plan: Map<number, LayerReduction>;
  reader: TensorReader;
  stats: CalibrationStats;
  be: Backend;
  ctx: Context;
}

/** The merged checkpoint, its moe-compression.json record and, when asked, the recalibrated routers. */
async function writeMerged(x: MergeWrite, report: MergeReport): Promise<void> {
  const { opts, method, params, ckpt, arch, K, plan, reader, stats, be, ctx } = x;
  const layers = report.layers;
  const maxShardBytes = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  const write = { output: opts.output, force: opts.force, command: 'merge', maxShardBytes };
  const mode = opts.recalibrateRouter ?? 'off';
  if (mode !== 'off' && params.refit === true)
    ctx.warn(
      '--recalibrate-router after --refit on moves the routing the refit fitted the experts to; measured on both trained fixtures it undoes most of the refit (README)',
    );
  const recalibrate =
    mode === 'off'
      ? undefined
      : async (dir: string) => {
          const members = new Map(layers.map((l) => [l.layer, l.groups.map((g) => g.members)]));
          report.router_recalibration = await recalibrateWritten(dir, mode, members, {
            ckpt,
            arch,
            reader,
            stats,
            be,
            ctx,
          });
        };
  await writeReducedOutput(
    ckpt,
    arch,
    plan,
    K,
    write,
    ctx,
    () => ({
      operation: 'merge',
      method: method.name,
      paper: method.paper ?? null,
      // The same keys for every method, linkage included (as always recorded), then any further parameters.
      params: {
        keep: K,
        similarity: report.similarity,
        align: report.align,
        router: report.router,
        linkage: params.linkage ?? opts.linkage ?? 'average',
        seed: opts.seed ?? 0,
        recalibrate_router: mode,
        ...params,
      },
      experts_before: arch.numExperts,
      experts_after: K,
      // For routing comparisons an expert stands for its representative.
      kept: Object.fromEntries(layers.map((l) => [String(l.layer), l.groups.map((g) => g.dominant)])),
      groups: Object.fromEntries(
        layers.map((l) => [
          String(l.layer),
          l.groups.map((g) => ({ members: g.members, weights: g.weights, alignment: g.alignment ?? null })),
        ]),
      ),
      source: { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: path.resolve(opts.stats) },
      router_recalibration: report.router_recalibration ?? null,
    }),
    recalibrate,
  );
}

/** The merge options given (undefined left out), by parameter name, for resolveMergeParams. */
function givenParams(opts: MergeOptions): Record<string, unknown> {
  const named = {
    similarity: opts.similarity,
    linkage: opts.linkage,
    align: opts.align,
    router: opts.router,
    'dominant-weight': opts.dominantWeight,
    refit: opts.refit,
    'refit-ridge': opts.refitRidge,
  };
  return Object.fromEntries(Object.entries({ ...opts.params, ...named }).filter(([, v]) => v !== undefined));
}

/**
 * One layer's plan for writeReducedOutput: expert i is a copy of its group's dominant expert, or, for a group of two
 * or more, the method's merge in the dominant expert's dtype; router rows (and DeepSeek's
 * correction bias) are the dominant's, or the weighted mean of the members' where the method gives router weights.
 * When the method refines the layer (refineLayer, e.g. --refit), every expert is computed: the layer's experts are
 * merged once, refined together, and written from that.
 */
function layerReduction(
  method: MergeMethod,
  params: MergeParams,
  input: GroupInput,
  groups: MergedGroup[],
  entry: MergeReport['layers'][number],
) {
  const { reader, arch, layer } = input;
  const routerWeights = groups.map((g) => method.routerWeights(g, params));
  const router = routerOf(reader, arch, layer, groups, routerWeights);
  const refines = !!method.refineLayer && (method.refines?.(params) ?? true);
  const merges = (g: MergedGroup) => g.members.length > 1;
  const mergeOne = async (g: MergedGroup): Promise<ExpertWeights> => {
    if (!merges(g)) return loadExpert(reader, arch, layer, g.dominant);
    const merged = await method.merge(g, input, params);
    g.alignment = merged.alignment;
    return merged.expert;
  };
  let all: Promise<ExpertWeights[]> | undefined;
  const refined = () =>
    (all ??= (async () => {
      const experts: ExpertWeights[] = [];
      for (const g of groups) experts.push(await mergeOne(g));
      const r = await method.refineLayer!(experts, router, input, params);
      entry.refit = { error_before: r.errorBefore, error_after: r.errorAfter };
      return r.experts;
    })());
  const r: LayerReduction = {
    copyOf: groups.map((g) => g.dominant),
    computed: new Set(groups.map((g, i) => (refines || merges(g) ? i : -1)).filter((i) => i >= 0)),
    compute: async (i) => {
      const g = groups[i];
      const expert = refines ? (await refined())[i] : await mergeOne(g);
      return computedExpert(reader, arch, layer, g.dominant, expert, `merge method ${method.name}`);
    },
  };
  if (routerWeights.every((w) => w === undefined)) return r;
  r.router = fromFloat32(router.rows, reader.dtype(arch.routerKey(layer)));
  const biasKey = arch.correctionBiasKey(layer);
  if (biasKey && router.bias) r.correctionBias = fromFloat32(router.bias, reader.dtype(biasKey));
  return r;
}

/** The merged layer's router rows [K, hidden] and correction bias in float32: dominant rows or weighted means. */
function routerOf(
  reader: TensorReader,
  arch: Architecture,
  layer: number,
  groups: MergedGroup[],
  weights: (number[] | undefined)[],
): LayerRouter {
  const h = arch.hidden;
  const rows = reader.f32(arch.routerKey(layer));
  const out = new Float32Array(groups.length * h);
  groups.forEach((g, i) => {
    const w = weights[i];
    if (!w) out.set(rows.subarray(g.dominant * h, (g.dominant + 1) * h), i * h);
    else
      g.members.forEach((e, m) => {
        for (let j = 0; j < h; j++) out[i * h + j] += w[m] * rows[e * h + j];
      });
  });
  const biasKey = arch.correctionBiasKey(layer);
  if (!biasKey) return { rows: out };
  const bias = reader.f32(biasKey);
  const merged = (g: MergedGroup, i: number) =>
    weights[i]?.reduce((s, x, m) => s + x * bias[g.members[m]], 0) ?? bias[g.dominant];
  return { rows: out, bias: Float32Array.from(groups, merged) };
}

export function formatMerge(r: MergeReport): string {
  const lines = [
    `${r.dry_run ? 'dry run: would merge' : `wrote ${r.output}: merged`} ${r.experts_before} → ${r.experts_after} experts per MoE layer by ${r.method} (similarity ${r.similarity}, alignment ${r.align ? 'on' : 'off'}, router ${r.router}${r.dry_run ? '' : `, ${formatMB(r.size_bytes)}`}, ${r.seconds.toFixed(1)} s)`,
  ];
  for (const l of r.layers) {
    const groups = l.groups.map((g) => `[${g.members.join(',')}]`).join(' ');
    const aligned = l.groups.flatMap((g) => g.alignment ?? []);
    const score = aligned.length
      ? `  alignment ${(aligned.reduce((s, a) => s + a.score_before, 0) / aligned.length).toFixed(3)} → ${(aligned.reduce((s, a) => s + a.score_after, 0) / aligned.length).toFixed(3)} (${aligned[0].method})`
      : '';
    const refit = l.refit ? `  refit error ${l.refit.error_before.toFixed(4)} → ${l.refit.error_after.toFixed(4)}` : '';
    lines.push(`  layer ${String(l.layer).padStart(3)}  ${groups}${score}${refit}`);
  }
  if (r.router_recalibration) lines.push(formatRecalibration(r.router_recalibration));
  return lines.join('\n');
}

export const mergeSpec: CommandSpec<MergeReport> = {
  name: 'merge',
  summary:
    "merge each MoE layer's routed experts into K (M-SMoE with neuron alignment, HC-SMoE) and write a plain checkpoint",
  args: [MODEL_ARG],
  options: [
    {
      flag: '--method <name>',
      type: { choices: mergeMethodNames },
      required: true,
      description: 'how experts are grouped and merged',
    },
    {
      flag: '--similarity <kind>',
      type: { choices: () => SIMILARITIES },
      description: "expert similarity (default: expert-output, the experts' outputs on the calibrated sample)",
    },
    { flag: '--linkage <kind>', type: { choices: () => LINKAGES }, default: 'average', description: 'hcsmoe linkage' },
    {
      flag: '--align <on|off>',
      type: 'onoff',
      description: 'neuron alignment before averaging (default: on for msmoe and hcsmoe)',
    },
    {
      flag: '--router <mode>',
      type: { choices: () => ROUTER_MODES },
      description: "router row per merged expert: the dominant expert's or the frequency-weighted mean",
    },
    {
      flag: '--dominant-weight <w>',
      type: 'number',
      description:
        "anchored: the dominant expert's weight in its group's merge, 0 to 1 (default 0.9; 1 is REAP's prune)",
    },
    {
      flag: '--refit <on|off>',
      type: 'onoff',
      description: "least-squares refit of the merged experts' down projections to the layer's calibrated output",
    },
    {
      flag: '--refit-ridge <r>',
      type: 'number',
      description: 'refit ridge as a share of the mean activation Gram diagonal (default 0.1)',
    },
    { flag: '--seed <n>', type: 'int', default: '0', description: 'seed for the random projection of wide alignments' },
    RECALIBRATE_OPTION,
    ...reductionOptions('print the groups and write nothing'),
  ],
  examples: [
    'moe merge ./model --stats ./stats --method msmoe --ratio 0.5 -o ./model-msmoe50',
    'moe merge ./model --stats ./stats --method hcsmoe --keep 4 --linkage complete --dry-run',
    'moe merge ./model --stats ./stats --method anchored --keep 4 --refit on --recalibrate-router ls -o ./model-anchored4',
  ],
  run: ([model], o, ctx) => merge({ ...(o as Omit<MergeOptions, 'model'>), model }, ctx),
  format: formatMerge,
};
