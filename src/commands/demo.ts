/**
 * `moe demo` (what `npm start` runs): the main job on the bundled trained fixture: inspect, calibrate on the
 * calibration text, prune (REAP) and merge (M-SMoE) to half the experts, quantize (GPTQ at 4 bits, GPTQ with bits
 * allocated by the LP at 3 on average, and the pruned model by RTN at 4), evaluate each against the original on the
 * held-out text, and check a bf16 → f32 → bf16 round trip. Prints a summary table.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InternalError } from '../errors';
import { openCheckpoint, TensorReader } from '../io/checkpoint';
import { formatMB } from '../io/size';
import type { Context } from '../ui/progress';
import { formatBytes } from '../ui/progress';
import { calibrate } from './calibrate';
import { convert } from './convert';
import { evalCommand, EvalReport } from './eval';
import { formatInspect, inspect, InspectReport } from './inspect';
import { merge } from './merge';
import { prune } from './prune';
import { quantize } from './quantize';
import { CommandSpec, COMPUTE, JSON_OUTPUT } from './spec';
import type { BackendName } from '../backend/backend';

export const FIXTURE_MODEL = path.join(__dirname, '..', '..', 'fixtures', 'tiny-moe');
const TEXT = path.join(__dirname, '..', '..', 'fixtures', 'text');

export interface DemoRow {
  model: string;
  params: number;
  bytes: number;
  perplexity: number;
  ppl_increase_pct: number;
  kl_mean: number;
  top1_agreement: number;
}

export interface DemoReport {
  model: string;
  inspect: InspectReport;
  steps: { name: string; seconds: number; detail: string }[];
  results: DemoRow[];
  round_trip_identical: boolean;
}

type Compute = { backend?: BackendName; threads?: number };

/** Runs one step, logging its name first and recording its time and a one-line detail of its result. */
type Timed = <T>(name: string, f: () => Promise<T> | T, detail: (r: T) => string) => Promise<T>;

/** What every step needs: the model, the compute options, the quiet context, the work folder and the timer. */
interface DemoRun {
  model: string;
  compute: Compute;
  quietCtx: Context;
  timed: Timed;
  work: string;
  info: InspectReport;
  /** The experts kept by prune and merge: half, at least top-k. */
  half: number;
}

/** The compressed models, each a folder under the work folder. */
interface DemoModels {
  pruned: string;
  merged: string;
  q4: string;
  lp3: string;
  prunedQ4: string;
}

/** Calibrates, then prunes, merges and quantizes the model three ways. */
async function compress(d: DemoRun): Promise<DemoModels> {
  const { model, compute, quietCtx, timed, work, half } = d;
  const stats = path.join(work, 'stats');
  await timed(
    'calibrate (16k tokens, Hessians)',
    () =>
      calibrate(
        {
          model,
          output: stats,
          data: path.join(TEXT, 'calib.txt'),
          seqLen: 256,
          maxTokens: 16384,
          naeeTokens: 512,
          hessians: true,
          ...compute,
        },
        quietCtx,
      ),
    (r) => `${r.tokens} tokens`,
  );
  const pruned = path.join(work, 'prune-reap');
  await timed(
    `prune: REAP → ${half} experts`,
    () => prune({ model, stats, method: 'reap', keep: half, output: pruned, ...compute }, quietCtx),
    (r) => `kept ${r.layers.map((l) => `[${l.kept.join(',')}]`).join(' ')}`,
  );
  const merged = path.join(work, 'merge-msmoe');
  await timed(
    `merge: M-SMoE → ${half} experts`,
    () => merge({ model, stats, method: 'msmoe', keep: half, output: merged, ...compute }, quietCtx),
    (r) => `${r.layers[0].groups.map((g) => `[${g.members.join(',')}]`).join(' ')} in layer ${r.layers[0].layer}`,
  );
  const q4 = path.join(work, 'gptq-4');
  const bitsText = (r: { average_bits: number; stored_bits_per_weight: number }) =>
    `${r.average_bits.toFixed(2)} bits average (${r.stored_bits_per_weight.toFixed(2)} with scales)`;
  await timed(
    'quantize: GPTQ 4-bit',
    () => quantize({ model, stats, bits: 4, output: q4, ...compute }, quietCtx),
    bitsText,
  );
  const lp3 = path.join(work, 'gptq-lp-3');
  await timed(
    'quantize: GPTQ, LP-allocated 3-bit average',
    () => quantize({ model, stats, bits: 3, allocate: 'lp', output: lp3, ...compute }, quietCtx),
    (r) =>
      `${bitsText(r)}; ${Object.entries(r.bits_histogram)
        .map(([b, n]) => `${b}-bit ${((100 * n) / r.quantized_params).toFixed(0)}%`)
        .join(', ')}`,
  );
  const prunedQ4 = path.join(work, 'prune-reap-rtn-4');
  await timed(
    `quantize: the REAP-pruned model, RTN 4-bit`,
    () => quantize({ model: pruned, bits: 4, method: 'rtn', output: prunedQ4, ...compute }, quietCtx),
    bitsText,
  );
  return { pruned, merged, q4, lp3, prunedQ4 };
}

/** Evaluates the original and every compressed model against the original on the held-out text, in table order. */
async function evaluate(d: DemoRun, m: DemoModels): Promise<DemoRow[]> {
  const { model, compute, quietCtx, timed, info, half } = d;
  const results: DemoRow[] = [];
  const evalOne = async (name: string, dir: string) => {
    const r: EvalReport = await timed(
      `eval ${name}`,
      () =>
        evalCommand(
          {
            model: dir,
            baseline: dir === model ? undefined : model,
            data: path.join(TEXT, 'eval.txt'),
            seqLen: 256,
            maxTokens: 8192,
            ...compute,
          },
          quietCtx,
        ),
      (e) => `perplexity ${e.perplexity.toFixed(2)}`,
    );
    results.push({
      model: name,
      params: r.size.params,
      bytes: r.size.bytes,
      perplexity: r.perplexity,
      ppl_increase_pct: r.baseline?.ppl_increase_pct ?? 0,
      kl_mean: r.baseline?.kl_mean ?? 0,
      top1_agreement: r.baseline?.top1_agreement ?? 1,
    });
  };
  await evalOne('original', model);
  await evalOne(`prune REAP ${half}/${info.experts_per_layer[0]}`, m.pruned);
  await evalOne(`merge M-SMoE ${half}/${info.experts_per_layer[0]}`, m.merged);
  await evalOne('GPTQ 4-bit', m.q4);
  await evalOne('GPTQ LP 3-bit average', m.lp3);
  await evalOne(`REAP ${half}/${info.experts_per_layer[0]} + RTN 4-bit`, m.prunedQ4);
  return results;
}

/** Converts bf16 → f32 (sharded) → bf16 and checks every tensor came back bit-identical. */
async function roundTrip(d: DemoRun): Promise<boolean> {
  const { model, quietCtx, timed, work, info } = d;
  const f32 = path.join(work, 'f32');
  const back = path.join(work, 'bf16');
  await timed(
    'convert bf16 → f32 (sharded) → bf16',
    async () => {
      await convert({ model, output: f32, dtype: 'f32', maxShardBytes: Math.ceil(info.bytes / 2) }, quietCtx);
      return convert({ model: f32, output: back, dtype: 'bf16' }, quietCtx);
    },
    (r) => `${formatBytes(r.bytes_out)}`,
  );
  return timed(
    'verify round trip',
    () => sameTensors(model, back),
    (same) => (same ? 'every tensor bit-identical' : 'MISMATCH'),
  );
}

/** `compute`: the backend and threads every step that runs the model uses (--backend, --threads). */
export async function demo(ctx: Context, model = FIXTURE_MODEL, compute: Compute = {}): Promise<DemoReport> {
  const steps: DemoReport['steps'] = [];
  const timed: Timed = async (name, f, detail) => {
    ctx.log(`== ${name}`);
    const t0 = Date.now();
    const r = await f();
    steps.push({ name, seconds: (Date.now() - t0) / 1000, detail: detail(r) });
    return r;
  };
  const quietCtx: Context = { ...ctx, log: () => {} };
  const info = await timed(
    'inspect',
    () => inspect({ model }),
    (r) =>
      `${(r.params_total / 1e6).toFixed(2)} M params, ${r.moe_layers.length} MoE layers × ${r.experts_per_layer[0]} experts, top-${r.top_k}`,
  );
  ctx.log(formatInspect(info));
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-demo-'));
  try {
    const half = Math.max(info.top_k, Math.round(info.experts_per_layer[0] / 2));
    const d: DemoRun = { model, compute, quietCtx, timed, work, info, half };
    const models = await compress(d);
    const results = await evaluate(d, models);
    const identical = await roundTrip(d);
    if (!identical) throw new InternalError('demo: the bf16 → f32 → bf16 round trip changed a tensor');
    return { model, inspect: info, steps, results, round_trip_identical: identical };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** True when both checkpoints hold the same tensor names with byte-identical data. */
export function sameTensors(a: string, b: string): boolean {
  const ca = openCheckpoint(a);
  const cb = openCheckpoint(b);
  if (ca.tensors.size !== cb.tensors.size) return false;
  const ra = new TensorReader(ca);
  const rb = new TensorReader(cb);
  try {
    for (const [name, t] of ca.tensors) {
      const u = cb.tensors.get(name);
      if (!u || u.dtype !== t.dtype || u.shape.join() !== t.shape.join()) return false;
      if (!Buffer.from(ra.bytes(name)).equals(Buffer.from(rb.bytes(name)))) return false;
    }
    return true;
  } finally {
    ra.close();
    rb.close();
  }
}

export function formatDemo(r: DemoReport): string {
  const lines = ['', 'model                        params      size   perplexity      Δ   KL (nats)   top-1'];
  for (const x of r.results) {
    lines.push(
      `${x.model.padEnd(26)} ${(x.params / 1e6).toFixed(2).padStart(6)} M ${formatMB(x.bytes).padStart(9)} ${x.perplexity.toFixed(2).padStart(12)} ${`${x.ppl_increase_pct >= 0 ? '+' : ''}${x.ppl_increase_pct.toFixed(1)}%`.padStart(7)} ${x.kl_mean.toFixed(4).padStart(11)} ${(100 * x.top1_agreement).toFixed(1).padStart(6)}%`,
    );
  }
  lines.push('', 'step                                       seconds  result');
  for (const s of r.steps) lines.push(`${s.name.padEnd(42)} ${s.seconds.toFixed(2).padStart(7)}  ${s.detail}`);
  lines.push(
    '',
    'eval: fixtures/text/eval.txt, first 8192 tokens, windows of 256; calibration: first 16384 tokens of calib.txt',
  );
  return lines.join('\n');
}

export const demoSpec: CommandSpec<DemoReport> = {
  name: 'demo',
  summary: 'run the bundled demo on the fixture model (what `npm start` runs)',
  args: [],
  options: [...COMPUTE, JSON_OUTPUT],
  examples: [
    'moe demo                            # inspect, calibrate, prune, merge, quantize and evaluate fixtures/tiny-moe',
    "moe demo --json | jq '.results[] | {model, perplexity}'",
  ],
  run: (_args, o, ctx) =>
    demo(ctx, FIXTURE_MODEL, { backend: o.backend as BackendName, threads: o.threads as number | undefined }),
  format: formatDemo,
};
