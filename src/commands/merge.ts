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
import { openCheckpoint, TensorReader } from '../io/checkpoint';
import { formatMB, weightBytes } from '../io/size';
import { checkNotInput, checkOutputFolder } from '../io/output';
import { DEFAULT_MAX_SHARD_BYTES } from '../io/writer';
import { fromFloat32 } from '../io/dtype';
import type { Architecture, Proj } from '../model/arch';
import { LayerReduction, SELECT_SHARE, sourceBytes, writeReducedOutput } from '../model/reduce';
import { loadArchitecture } from '../model/registry';
import { expertOutputs, ExpertWeights, loadExpert } from '../model/experts';
import { alignExperts, permuteExpert } from '../merge/align';
import { cosineMatrix, Linkage, memberWeights, MergeGroup } from '../merge/grouping';
import { MERGE_METHODS, mergeMethod, Similarity } from '../merge/methods';
import type { Context, Task } from '../ui/progress';
import { keepAllWarning, resolveKeep } from '../prune/keep';

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
  router?: 'dominant' | 'weighted';
  seed?: number;
  backend?: BackendName;
  maxShardBytes?: number;
  force?: boolean;
  dryRun?: boolean;
}

export interface MergedGroup extends MergeGroup {
  weights: number[];
  /** Per aligned member: the matching used and the mean neuron-feature cosine before and after. */
  alignment?: { member: number; method: 'exact' | 'approximate'; score_before: number; score_after: number }[];
}

export interface MergeReport {
  model: string;
  output: string;
  method: string;
  similarity: Similarity;
  align: boolean;
  router: 'dominant' | 'weighted';
  experts_before: number;
  experts_after: number;
  dry_run: boolean;
  /** The written weight files' bytes (src/io/size.ts); 0 in a dry run. */
  size_bytes: number;
  layers: { layer: number; groups: MergedGroup[] }[];
  seconds: number;
}

/**
 * Pairwise similarity of a layer's experts [E, E]:
 *  - router-logits: cosine of the experts' router-logit columns over the calibration tokens (M-SMoE's default);
 *  - expert-output: cosine of the experts' outputs on the same calibration tokens (every expert run on the
 *    calibrated MoE-block input sample, as HC-SMoE compares experts by their outputs on common inputs);
 *  - weights: cosine of the flattened weights.
 */
async function similarity(kind: Similarity, stats: CalibrationStats, reader: TensorReader, arch: Architecture, layer: number, be: Backend): Promise<Float64Array> {
  const E = arch.numExperts;
  if (kind === 'router-logits') return stats.f64(`layers.${layer}.moe.router_cos`);
  if (kind === 'expert-output') {
    const x = stats.f32(`layers.${layer}.moe.naee_in`);
    const n = x.length / arch.hidden;
    if (n === 0) throw new UsageError('--similarity expert-output needs calibrated MoE-block samples, and these stats have none', { file: stats.dir, hint: 're-run moe calibrate with --naee-tokens > 0' });
    const outputs = new Float32Array(E * n * arch.hidden);
    (await expertOutputs(be, reader, arch, layer, x, n)).forEach((y, e) => outputs.set(y, e * n * arch.hidden));
    return cosineMatrix(outputs, E, n * arch.hidden);
  }
  // weights: cosine of the flattened [gate; up; down] of each pair, accumulated projection by projection.
  const gram = new Float64Array(E * E);
  for (const p of ['gate', 'up', 'down'] as Proj[]) {
    const ws = [...Array(E).keys()].map((e) => reader.f32(arch.expertKey(layer, e, p)));
    for (let a = 0; a < E; a++) {
      for (let b = a; b < E; b++) {
        let s = 0;
        for (let i = 0; i < ws[a].length; i++) s += ws[a][i] * ws[b][i];
        gram[a * E + b] += s;
        if (a !== b) gram[b * E + a] += s;
      }
    }
  }
  const cos = new Float64Array(E * E);
  for (let a = 0; a < E; a++) for (let b = 0; b < E; b++) cos[a * E + b] = gram[a * E + b] / Math.sqrt(gram[a * E + a] * gram[b * E + b] || 1);
  return cos;
}

export async function merge(opts: MergeOptions, ctx: Context): Promise<MergeReport> {
  const started = Date.now();
  const method = mergeMethod(opts.method);
  if (!method) throw new UsageError(`unknown --method ${JSON.stringify(opts.method)}`, { hint: `use one of ${MERGE_METHODS.map((m) => m.name).join(', ')}` });
  const ckpt = openCheckpoint(opts.model);
  checkNotInput(opts.output, [{ flag: 'MODEL', path: ckpt.dir }, { flag: '--stats', path: opts.stats }]);
  if (!opts.dryRun) checkOutputFolder(opts.output, opts.force);
  const arch = loadArchitecture(ckpt);
  const K = resolveKeep(arch, opts.keep, opts.ratio);
  if (K === arch.numExperts) ctx.warn(keepAllWarning(K, opts.keep === undefined ? `--ratio ${opts.ratio}` : `--keep ${K}`, 'merged'));
  const sim = opts.similarity ?? method.defaults.similarity;
  const align = opts.align ?? method.defaults.align;
  const routerMode = opts.router ?? method.defaults.router;
  const stats = new CalibrationStats(opts.stats);
  const reader = new TensorReader(ckpt);
  const be = await createBackend(opts.backend ?? 'onnx');
  const h = arch.hidden;
  const width = arch.expertWidth;
  let task: Task | undefined;
  try {
    stats.checkModel(ckpt);
    // Work in source bytes: grouping by weights or outputs reads every expert once; by the stats alone it is quick.
    const groupWeight = sourceBytes(ckpt) * (sim === 'router-logits' ? SELECT_SHARE : 1);
    task = ctx.task(`merge ${path.basename(ckpt.dir)}`, groupWeight + (opts.dryRun ? 0 : sourceBytes(ckpt)));
    const progress = ctx.progress(`group experts (${method.name})`, arch.moeLayers.length, 'layers', groupWeight);
    const layers: MergeReport['layers'] = [];
    const plan = new Map<number, LayerReduction>();
    for (const layer of arch.moeLayers) {
      const freq = stats.frequency(layer);
      const groups = method.groups(freq, await similarity(sim, stats, reader, arch, layer, be), arch.numExperts, K, arch.routing.nGroup, opts.linkage ?? 'average');
      const merged: MergedGroup[] = groups.map((g) => ({ ...g, weights: memberWeights(freq, g.members, method.defaults.uniform) }));
      layers.push({ layer, groups: merged });
      plan.set(layer, reduction(layer, merged));
      progress.tick();
    }
    progress.done();
    const report: MergeReport = {
      model: ckpt.dir,
      output: path.resolve(opts.output),
      method: method.name,
      similarity: sim,
      align,
      router: routerMode,
      experts_before: arch.numExperts,
      experts_after: K,
      dry_run: !!opts.dryRun,
      size_bytes: 0,
      layers,
      seconds: 0,
    };
    if (!opts.dryRun) {
      await writeReducedOutput(ckpt, arch, plan, K, { output: opts.output, force: opts.force, command: 'merge', maxShardBytes: opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES }, ctx, () => ({
        operation: 'merge',
        method: method.name,
        paper: method.paper ?? null,
        params: { keep: K, similarity: sim, align, router: routerMode, linkage: opts.linkage ?? 'average', seed: opts.seed ?? 0 },
        experts_before: arch.numExperts,
        experts_after: K,
        // For routing comparisons an expert stands for its representative.
        kept: Object.fromEntries(layers.map((l) => [String(l.layer), l.groups.map((g) => g.dominant)])),
        groups: Object.fromEntries(layers.map((l) => [String(l.layer), l.groups.map((g) => ({ members: g.members, weights: g.weights, alignment: g.alignment ?? null }))])),
        source: { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: path.resolve(opts.stats) },
      }));
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

  function reduction(layer: number, groups: MergedGroup[]): LayerReduction {
    const computed = new Set(groups.map((g, i) => (g.members.length > 1 ? i : -1)).filter((i) => i >= 0));
    const r: LayerReduction = {
      copyOf: groups.map((g) => g.dominant),
      computed,
      compute: async (i) => {
        const g = groups[i];
        const dominant = loadExpert(reader, arch, layer, g.dominant);
        const sum: ExpertWeights = { gate: new Float32Array(dominant.gate.length), up: new Float32Array(dominant.up.length), down: new Float32Array(dominant.down.length) };
        g.alignment = [];
        for (let m = 0; m < g.members.length; m++) {
          let w = m === 0 ? dominant : loadExpert(reader, arch, layer, g.members[m]);
          if (m > 0 && align) {
            const a = await alignExperts(be, dominant, w, width, h, opts.seed ?? 0);
            g.alignment.push({ member: g.members[m], method: a.method, score_before: a.scoreBefore, score_after: a.scoreAfter });
            w = permuteExpert(w, a.perm, width, h);
          }
          for (const p of ['gate', 'up', 'down'] as Proj[]) for (let j = 0; j < sum[p].length; j++) sum[p][j] += g.weights[m] * w[p][j];
        }
        const dtype = (p: Proj) => reader.dtype(arch.expertKey(layer, g.dominant, p));
        return { gate: fromFloat32(sum.gate, dtype('gate')), up: fromFloat32(sum.up, dtype('up')), down: fromFloat32(sum.down, dtype('down')) };
      },
    };
    if (routerMode === 'weighted') {
      const rows = reader.f32(arch.routerKey(layer));
      const out = new Float32Array(groups.length * h);
      groups.forEach((g, i) => g.members.forEach((e, m) => {
        for (let j = 0; j < h; j++) out[i * h + j] += g.weights[m] * rows[e * h + j];
      }));
      r.router = fromFloat32(out, reader.dtype(arch.routerKey(layer)));
      const biasKey = arch.correctionBiasKey(layer);
      if (biasKey) {
        const bias = reader.f32(biasKey);
        r.correctionBias = fromFloat32(Float32Array.from(groups, (g) => g.members.reduce((s, e, m) => s + g.weights[m] * bias[e], 0)), reader.dtype(biasKey));
      }
    }
    return r;
  }
}

export function formatMerge(r: MergeReport): string {
  const lines = [`${r.dry_run ? 'dry run: would merge' : `wrote ${r.output}: merged`} ${r.experts_before} → ${r.experts_after} experts per MoE layer by ${r.method} (similarity ${r.similarity}, alignment ${r.align ? 'on' : 'off'}, router ${r.router}${r.dry_run ? '' : `, ${formatMB(r.size_bytes)}`}, ${r.seconds.toFixed(1)} s)`];
  for (const l of r.layers) {
    const groups = l.groups.map((g) => `[${g.members.join(',')}]`).join(' ');
    const aligned = l.groups.flatMap((g) => g.alignment ?? []);
    const score = aligned.length ? `  alignment ${(aligned.reduce((s, a) => s + a.score_before, 0) / aligned.length).toFixed(3)} → ${(aligned.reduce((s, a) => s + a.score_after, 0) / aligned.length).toFixed(3)} (${aligned[0].method})` : '';
    lines.push(`  layer ${String(l.layer).padStart(3)}  ${groups}${score}`);
  }
  return lines.join('\n');
}
