/**
 * Data-parallel calibration: `moe calibrate --data-shard I/N` runs the I-th of N contiguous slices of the calibration
 * batches (the windows grouped as a single run groups them, --batch-tokens, so no window is split and every shard's
 * Gram products are the single run's) and writes a part: a stats folder whose tensors are the sums over its tokens
 * (the collector's LayerSums), not means. `moe calibrate --combine PART... -o STATS` adds the parts in shard order
 * and writes the stats file a single run writes: counts exactly, sums within float64 summation error (Hessians then
 * rounded to F32 as always), maxima as maxima, the NAEE sample's rows each from the shard that saw its token.
 * Part tensor names (stats.ts has the final ones):
 *   layers.L.moe.{count, soft_freq_sum, weight_sum, reap_sum, out_abs_sum, out_abs_max, act_abs_max} [E] F64
 *   layers.L.moe.out_sum [E, hidden] F64   layers.L.moe.{router_gram, coact} [E, E] F64
 *   layers.L.moe.naee_in / naee_out [n, hidden] F32 (the whole sample; rows of other shards' tokens are 0)
 *   rows/<weight> [1], imatrix/<weight> [in], hessian/<weight> [in, in]: F64
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import { CheckpointError, UsageError } from '../errors';
import { openTensorFile, TensorReader } from '../io/checkpoint';
import type { TensorRef } from '../io/safetensors';
import { fromFloat32 } from '../io/dtype';
import { checkNotInput, checkOutputFolder, withOutput } from '../io/output';
import { PlannedTensor, ShardedWriter } from '../io/writer';
import type { Architecture } from '../model/arch';
import type { Context } from '../ui/progress';
import { mulberry32 } from '../util/random';
import { hessianBytes, LayerSums, statsTensors } from './collector';
import { layerPlan, PART_FORMAT, STATS_FORMAT, STATS_JSON, STATS_TENSORS, StatsJson } from './stats';

export { PART_FORMAT };

export interface DataShard {
  index: number;
  count: number;
}

/** `I/N` (I from 0): the I-th of N slices. */
export function parseDataShard(text: string, name = '--data-shard'): DataShard {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index >= count)
    throw new UsageError(`${name} ${text}: expected I/N with 0 ≤ I < N`, {
      hint: 'e.g. --data-shard 0/4 … 3/4 (I from 0, as $JOB_COMPLETION_INDEX)',
    });
  return { index, count };
}

/** The batches [first, end) of shard I of N over `batches` batches: ⌊I·B/N⌋ to ⌊(I+1)·B/N⌋. */
export function shardBatches(batches: number, shard: DataShard): [number, number] {
  return [Math.floor((shard.index * batches) / shard.count), Math.floor(((shard.index + 1) * batches) / shard.count)];
}

/** The NAEE subsample: n global token indices, sorted, seeded (all of them when n ≥ tokens). */
export function naeeSample(tokens: number, n: number, seed: number): number[] {
  const rand = mulberry32(seed ^ 0x5eed);
  const picked = new Set<number>();
  if (n >= tokens) return [...Array(tokens).keys()];
  while (picked.size < n) picked.add(Math.floor(rand() * tokens));
  return [...picked].sort((a, b) => a - b);
}

/** A part's stats.json: the stats record (format PART_FORMAT) with the shard and what makes parts combinable. */
export interface PartJson extends StatsJson {
  data_shard: {
    index: number;
    count: number;
    /** Batches [first, end) of `of`, and the global token indices [first, end) they hold. */
    batches: [number, number];
    of: number;
    tokens: [number, number];
    batch_tokens: number;
    samples: number | null;
  };
}

/** The part's name of each summed statistic, and the stats file's name of the statistic made from it. */
const FINAL_NAME: Record<string, string> = {
  soft_freq_sum: 'soft_freq',
  reap_sum: 'reap',
  out_abs_sum: 'out_abs_mean',
  out_sum: 'out_mean',
  router_gram: 'router_cos',
};
const PART_NAME = Object.fromEntries(Object.entries(FINAL_NAME).map(([part, final]) => [final, part]));

/** A stats tensor as a part holds it (toPart) or back: renamed, float64 where the part keeps a sum of F32 ones. */
function asPart(t: PlannedTensor, toPart: boolean): PlannedTensor {
  const m = /^(layers\.\d+\.moe\.)(\w+)$/.exec(t.name);
  const renamed = m && (toPart ? PART_NAME : FINAL_NAME)[m[2]];
  const name = renamed ? m![1] + renamed : t.name;
  const summed = t.name.startsWith('hessian/') || ['out_mean', 'out_sum'].includes(m?.[2] ?? '');
  return { name, dtype: summed ? (toPart ? 'F64' : 'F32') : t.dtype, shape: t.shape };
}

/** Every tensor of a part for one layer, in the stats file's order (stats.layerPlan), as the part names it. */
export function partPlan(
  arch: Architecture,
  layer: number,
  naee: number,
  hessians: boolean,
  inDims: Map<string, number>,
): PlannedTensor[] {
  return layerPlan(arch, layer, naee, hessians, inDims).map((t) => asPart(t, true));
}

const bytesOf = (a: Float64Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** A layer's sums as a part stores them (partPlan's names). */
export function partTensors(layer: number, s: LayerSums): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const p = `layers.${layer}.moe`;
  if (s.count.length) {
    const vectors: Record<string, Float64Array> = {
      count: s.count,
      soft_freq_sum: s.softFreq,
      weight_sum: s.weightSum,
      reap_sum: s.reapSum,
      out_abs_sum: s.outAbsSum,
      out_abs_max: s.outAbsMax,
      act_abs_max: s.actAbsMax,
      out_sum: s.outSum,
      router_gram: s.gram,
      coact: s.coact,
    };
    for (const [k, v] of Object.entries(vectors)) out.set(`${p}.${k}`, bytesOf(v));
    out.set(`${p}.naee_in`, fromFloat32(s.naeeIn, 'F32'));
    out.set(`${p}.naee_out`, fromFloat32(s.naeeOut, 'F32'));
  }
  for (const [w, acc] of s.linears) {
    out.set(`rows/${w}`, bytesOf(Float64Array.of(acc.rows)));
    out.set(`imatrix/${w}`, bytesOf(acc.sumsq));
    if (acc.xtx) out.set(`hessian/${w}`, bytesOf(acc.xtx));
  }
  return out;
}

/** One part, opened. */
interface Part {
  dir: string;
  json: PartJson;
  reader: TensorReader;
  /** The tensors in file order. */
  layout: TensorRef[];
}

/** The keys every part must share (what makes their sums parts of one run). */
const SAME = (j: PartJson) => ({
  fingerprint: j.fingerprint,
  data: { ...j.data, file: undefined },
  hessians: j.hessians,
  all_experts: j.all_experts ?? false,
  hessian_weighting: j.hessian_weighting ?? 'none',
  naee_tokens: j.naee_tokens,
  seed: j.seed,
  moe_layers: j.moe_layers,
  experts: j.experts,
  top_k: j.top_k,
  linears: j.linears,
  shards: j.data_shard.count,
  batches: j.data_shard.of,
  batch_tokens: j.data_shard.batch_tokens,
  samples: j.data_shard.samples,
});

function openPart(dir: string): Part {
  const file = path.join(dir, STATS_JSON);
  if (!fs.existsSync(file))
    throw new CheckpointError('not a calibration part (no stats.json)', {
      file: dir,
      hint: 'make parts with moe calibrate MODEL --data-shard I/N -o PART',
    });
  let json: PartJson;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8')) as PartJson;
  } catch (e) {
    throw new CheckpointError(`stats.json is not valid JSON (${(e as Error).message})`, { file });
  }
  if (json.format !== PART_FORMAT)
    throw new CheckpointError(
      json.format === STATS_FORMAT
        ? 'a complete stats folder, not a data-shard part'
        : `format ${JSON.stringify(json.format)} is not ${PART_FORMAT}`,
      { file, hint: 'combine the folders written by moe calibrate --data-shard I/N' },
    );
  const ckpt = openTensorFile(path.join(dir, STATS_TENSORS));
  const layout = [...ckpt.tensors.values()].sort((a, b) => a.begin - b.begin);
  return { dir, json, reader: new TensorReader(ckpt), layout };
}

/** The parts in shard order; refuses parts of different runs, missing or duplicated shards. */
function orderedParts(parts: Part[]): Part[] {
  const first = parts[0];
  const key = JSON.stringify(SAME(first.json));
  for (const p of parts.slice(1))
    if (JSON.stringify(SAME(p.json)) !== key)
      throw new CheckpointError(
        `${p.dir} is a part of another calibration than ${first.dir} (model, data, options or N differ)`,
        { file: path.join(p.dir, STATS_JSON), hint: 'combine the parts of one run: the same model, data and options' },
      );
  const n = first.json.data_shard.count;
  const byIndex = new Map<number, Part>();
  for (const p of parts) {
    const i = p.json.data_shard.index;
    const twice = byIndex.get(i);
    if (twice)
      throw new UsageError(`shard ${i}/${n} is given twice: ${twice.dir} and ${p.dir}`, {
        hint: 'give each part once',
      });
    byIndex.set(i, p);
  }
  const missing = [...Array(n).keys()].filter((i) => !byIndex.has(i));
  if (missing.length)
    throw new UsageError(
      `missing shard${missing.length > 1 ? 's' : ''} ${missing.map((i) => `${i}/${n}`).join(', ')}`,
      {
        hint: `--combine needs all ${n} parts`,
      },
    );
  return [...Array(n).keys()].map((i) => byIndex.get(i)!);
}

const f64 = (r: TensorReader, name: string) => new Float64Array(r.bytes(name).slice().buffer);

/** Σ over the parts (in shard order) of a float64 tensor. */
function sum(parts: Part[], name: string): Float64Array {
  const total = f64(parts[0].reader, name);
  for (const p of parts.slice(1)) {
    const v = f64(p.reader, name);
    for (let i = 0; i < total.length; i++) total[i] += v[i];
  }
  return total;
}

function max(parts: Part[], name: string): Float64Array {
  const m = f64(parts[0].reader, name);
  for (const p of parts.slice(1)) {
    const v = f64(p.reader, name);
    for (let i = 0; i < m.length; i++) m[i] = Math.max(m[i], v[i]);
  }
  return m;
}

/** A MoE layer's sums over all parts; the NAEE rows each from the part whose tokens hold the sampled token. */
function moeSums(parts: Part[], layer: number, naee: number[], tokens: number): LayerSums {
  const p = `layers.${layer}.moe`;
  const naeeRows = (which: string) => {
    const out = parts[0].reader.f32(`${p}.${which}`).slice();
    const h = naee.length ? out.length / naee.length : 0;
    for (const part of parts.slice(1)) {
      const [t0, t1] = part.json.data_shard.tokens;
      const rows = naee.map((t, r) => (t >= t0 && t < t1 ? r : -1)).filter((r) => r >= 0);
      if (!rows.length) continue;
      const v = part.reader.f32(`${p}.${which}`);
      for (const r of rows) out.set(v.subarray(r * h, (r + 1) * h), r * h);
    }
    return out;
  };
  return {
    tokens,
    count: sum(parts, `${p}.count`),
    softFreq: sum(parts, `${p}.soft_freq_sum`),
    weightSum: sum(parts, `${p}.weight_sum`),
    reapSum: sum(parts, `${p}.reap_sum`),
    outSum: sum(parts, `${p}.out_sum`),
    outAbsSum: sum(parts, `${p}.out_abs_sum`),
    outAbsMax: max(parts, `${p}.out_abs_max`),
    actAbsMax: max(parts, `${p}.act_abs_max`),
    gram: sum(parts, `${p}.router_gram`),
    coact: sum(parts, `${p}.coact`),
    naeeIn: naeeRows('naee_in'),
    naeeOut: naeeRows('naee_out'),
    linears: new Map(),
  };
}

export interface CombineReport {
  output: string;
  parts: number;
  windows: number;
  tokens: number;
  tensors: number;
  dry_run: boolean;
  seconds: number;
}

/**
 * Writes the stats folder of the whole run from its parts: the tensors of part 0's file order renamed to the stats
 * file's (FINAL_NAME), one MoE layer's small sums or one Hessian in memory at a time.
 */
export async function combineParts(
  dirs: string[],
  o: { output: string; force?: boolean; dryRun?: boolean },
  ctx: Context,
): Promise<CombineReport> {
  const started = Date.now();
  if (!dirs.length)
    throw new UsageError('--combine needs the part folders', { hint: 'moe calibrate --combine P0 P1 … -o STATS' });
  checkNotInput(
    o.output,
    dirs.map((d) => ({ flag: '--combine', path: d })),
  );
  if (!o.dryRun) checkOutputFolder(o.output, o.force);
  const opened: Part[] = [];
  try {
    for (const d of dirs) opened.push(openPart(d));
    const parts = orderedParts(opened);
    const j = parts[0].json;
    const naee = naeeSample(j.data.tokens, j.naee_tokens, j.seed);
    const layout = parts[0].layout;
    const plan = layout.map((t) => asPart(t, false));
    const report: CombineReport = {
      output: path.resolve(o.output),
      parts: parts.length,
      windows: j.data.windows,
      tokens: j.data.tokens,
      tensors: plan.length,
      dry_run: !!o.dryRun,
      seconds: 0,
    };
    if (o.dryRun) return report;
    const progress = ctx.progress(`combine ${parts.length} calibration parts`, layout.length, 'tensors');
    try {
      await withOutput(o.output, { force: o.force, command: 'calibrate --combine' }, (out) => {
        const writer = new ShardedWriter(out.tmp, plan, {
          maxShardBytes: Number.MAX_SAFE_INTEGER,
          singleFileName: STATS_TENSORS,
          metadata: { format: STATS_FORMAT },
        });
        let moe: { layer: number; tensors: Map<string, Uint8Array> } | undefined;
        layout.forEach((t, i) => {
          const m = /^layers\.(\d+)\.moe\./.exec(t.name);
          let bytes: Uint8Array;
          if (m) {
            const layer = Number(m[1]);
            if (moe?.layer !== layer)
              moe = { layer, tensors: statsTensors(layer, moeSums(parts, layer, naee, j.data.tokens)) };
            bytes = moe.tensors.get(plan[i].name)!;
          } else if (t.name.startsWith('hessian/')) bytes = hessianBytes(sum(parts, t.name));
          else bytes = bytesOf(sum(parts, t.name));
          writer.write(plan[i].name, bytes);
          progress.tick(1);
        });
        writer.finish();
        const { data_shard: _shard, ...rest } = j;
        const { file, ...data } = rest.data;
        const json: StatsJson & { data_shards: number } = {
          ...rest,
          format: STATS_FORMAT,
          data: { file, ...data },
          data_shards: parts.length,
        };
        out.writeRecord(STATS_JSON, json);
      });
    } finally {
      progress.done();
    }
    report.seconds = (Date.now() - started) / 1000;
    return report;
  } finally {
    for (const p of opened) p.reader.close();
  }
}
