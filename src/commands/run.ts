/**
 * `moe run RECIPE.yaml`: runs a recipe's steps in order (src/recipe/recipe.ts), each writing into
 * OUTPUT/NN-kind. A step whose output holds a record (moe-step.json) with the same key (its kind, options and the
 * keys of its inputs) is reused, so an interrupted or extended run resumes where it stopped. The resolved recipe
 * is saved as OUTPUT/recipe.json, and which steps the latest run ran or reused as OUTPUT/moe-run.json (the report
 * reads it; its modification time is the run's date).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackendName } from '../backend/backend';
import { GateError } from '../errors';
import { openCheckpoint } from '../io/checkpoint';
import { checkFileDestination, checkNotInput, createFolder, withoutTimings } from '../io/output';
import { writeMarker } from '../io/ownership';
import { weightBytes, weightFiles } from '../io/size';
import { loadRecipe, Recipe, recipeInputs, Step } from '../recipe/recipe';
import { fingerprint } from '../calib/stats';
import { finalModelStep, headlineLines, RunSize } from '../report/summary';
import type { Context } from '../ui/progress';
import { calibrate } from './calibrate';
import { evalCommand, EvalReport } from './eval';
import { merge } from './merge';
import { prune } from './prune';
import { quantize } from './quantize';
import { modelNamedIn } from '../io/hf-cache';

const STEP_RECORD = 'moe-step.json';
const EVAL_FILE = 'eval.json';
/** What the latest run did with each step: { steps: [{ step, kind, status: 'ran' | 'reused' }] }. */
export const RUN_RECORD = 'moe-run.json';

export interface StepReport {
  step: number;
  kind: string;
  line: number;
  output: string;
  skipped: boolean;
  seconds: number;
  detail: string;
  /** eval steps: the figures. */
  eval?: { perplexity: number; baseline_perplexity?: number; ppl_increase_pct?: number; bytes: number; params: number; kl_mean?: number };
}

export interface RunReport {
  recipe: string;
  model: string;
  output: string;
  steps: StepReport[];
  /** The original's and the final model's weight files (src/io/size.ts); absent in a dry run. */
  size?: RunSize;
  seconds: number;
  /** --dry-run: the steps' plan only (skipped = would be reused); nothing was written. */
  dry_run?: boolean;
}

const sha = (x: unknown) => createHash('sha256').update(JSON.stringify(x)).digest('hex').slice(0, 32);

/** The original model's key: its layout and its shards' sizes and modification times. */
function modelKey(dir: string): string {
  const ckpt = openCheckpoint(dir);
  return sha({ fingerprint: fingerprint(ckpt), shards: ckpt.shards.map((s) => [path.basename(s), fs.statSync(s).size, fs.statSync(s).mtimeMs]) });
}

export async function run(file: string, ctx: Context, opts: { fresh?: boolean; dryRun?: boolean; reportHtml?: string } = {}): Promise<RunReport> {
  const started = Date.now();
  const recipe: Recipe = loadRecipe(file);
  if (opts.reportHtml) {
    // Checked before any step runs: the report is written at the end, over a report moe wrote only.
    checkNotInput(opts.reportHtml, [{ flag: 'the recipe', path: recipe.file }, ...recipeInputs(recipe)], '--report-html');
    checkFileDestination(opts.reportHtml, true);
  }
  if (!opts.dryRun) {
    createFolder(recipe.output, 'run');
    fs.writeFileSync(path.join(recipe.output, 'recipe.json'), JSON.stringify({ source: recipe.file, ...recipe }, null, 1) + '\n');
  }
  const backend = recipe.backend as BackendName | undefined;
  let model = recipe.model;
  let modelK = modelKey(model);
  let stats: { dir: string; key: string; forModel: string } | undefined;
  const reports: StepReport[] = [];
  // One bar for the whole recipe; each step's own phases show below it.
  const task = ctx.task(`run ${path.basename(file)}`, recipe.steps.length);
  const runRecord = path.join(recipe.output, RUN_RECORD);
  if (!opts.dryRun) fs.rmSync(runRecord, { force: true });
  for (let i = 0; i < recipe.steps.length; i++) {
    const s: Step = recipe.steps[i];
    const stepProgress = ctx.progress(`step ${i + 1} ${s.kind}`, 1, 'steps');
    const out = path.join(recipe.output, `${String(i + 1).padStart(2, '0')}-${s.kind}`);
    const useStats = (s.kind === 'prune' || s.kind === 'merge' || (s.kind === 'quantize' && s.options.stats !== false)) && stats?.forModel === modelK ? stats : undefined;
    const key = sha({ kind: s.kind, options: s.options, model: modelK, stats: useStats?.key ?? null, backend: backend ?? null, original: s.kind === 'eval' ? modelKey(recipe.model) : null });
    const recordFile = path.join(out, STEP_RECORD);
    const record = fs.existsSync(recordFile) ? (JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { key: string; report: StepReport }) : undefined;
    const t0 = Date.now();
    let report: StepReport;
    if (!opts.fresh && record?.key === key) {
      report = { ...record.report, skipped: true, seconds: 0 };
      if (!opts.dryRun) ctx.log(`== step ${i + 1} ${s.kind} (line ${s.line}): unchanged, skipped`);
    } else if (opts.dryRun) {
      // The keys depend on options and input keys only, never on outputs: the plan is exact without running a step.
      report = { step: i + 1, kind: s.kind, line: s.line, output: out, skipped: false, seconds: 0, detail: !record ? 'would run' : record.key === key ? 'would run again (--fresh)' : 'would run again (options or inputs changed)' };
    } else {
      ctx.log(`== step ${i + 1} ${s.kind} (line ${s.line})`);
      report = { step: i + 1, kind: s.kind, line: s.line, output: out, skipped: false, seconds: 0, detail: '' };
      const o = s.options as Record<string, never>;
      switch (s.kind) {
        case 'calibrate': {
          const r = await calibrate({ model, output: out, data: o.data, seqLen: o.seq_len ?? 512, maxTokens: o.max_tokens, samples: o.samples, hessians: o.hessians, naeeTokens: o.naee_tokens, seed: o.seed, backend, threads: recipe.threads, force: true }, ctx);
          report.detail = `${r.tokens} tokens${o.hessians ? ', with Hessians' : ''}`;
          break;
        }
        case 'prune':
        case 'merge': {
          const common = { model, stats: useStats!.dir, method: o.method, keep: o.keep, ratio: o.ratio, output: out, seed: o.seed, backend, force: true };
          const r = s.kind === 'prune' ? await prune({ ...common, protectSuperExperts: o.protect_super_experts }, ctx) : await merge({ ...common, similarity: o.similarity, linkage: o.linkage, align: o.align, router: o.router }, ctx);
          report.detail = `${r.method}: ${r.experts_before} → ${r.experts_after} experts`;
          break;
        }
        case 'quantize': {
          if (o.format === 'gguf') {
            const { exportGguf, parseGgmlType } = await import('./gguf');
            const r = await exportGguf({ model, output: out, type: o.type ? parseGgmlType(o.type) : undefined, allocate: o.allocate, bpw: o.bpw, stats: useStats?.dir, force: true }, ctx);
            report.detail = `GGUF ${r.type ?? `LP ${r.bpw_target} bpw`}: ${r.bpw.toFixed(3)} bits/weight, ${(r.file_bytes / 1e6).toFixed(2)} MB`;
          } else {
            const r = await quantize(
              {
                model,
                output: out,
                bits: o.bits,
                method: o.method,
                stats: useStats?.dir,
                allocate: o.allocate,
                groupSize: o.group_size,
                bitChoices: o.bit_choices,
                granularity: o.granularity,
                budgetScope: o.budget_scope,
                alpha: o.alpha,
                beta: o.beta,
                attnBits: o.attn_bits,
                sharedExpertBits: o.shared_expert_bits,
                keepRouterFp: o.keep_router_fp,
                actOrder: o.act_order,
                format: o.format,
                backend,
                threads: recipe.threads,
                force: true,
              },
              ctx,
            );
            report.detail = `${r.method}, ${r.allocate}: ${r.average_bits.toFixed(3)} bits average`;
          }
          break;
        }
        case 'eval': {
          const base = o.baseline === undefined ? undefined : o.baseline === 'original' ? recipe.model : modelNamedIn(o.baseline, path.dirname(recipe.file), `step ${i + 1} (line ${s.line}): eval.baseline`, recipe.file);
          const r: EvalReport = await evalCommand({ model, data: o.data, seqLen: o.seq_len ?? 2048, maxTokens: o.max_tokens, baseline: base, maxPplIncrease: o.max_ppl_increase, backend, threads: recipe.threads }, ctx);
          fs.mkdirSync(out, { recursive: true });
          writeMarker(out, 'run (eval step)');
          fs.writeFileSync(path.join(out, EVAL_FILE), JSON.stringify(withoutTimings(r), null, 1) + '\n');
          report.eval = { perplexity: r.perplexity, baseline_perplexity: r.baseline?.perplexity, ppl_increase_pct: r.baseline?.ppl_increase_pct, bytes: r.size.bytes, params: r.size.params, kl_mean: r.baseline?.kl_mean };
          report.detail = `perplexity ${r.perplexity.toFixed(2)}${r.baseline ? ` (baseline ${r.baseline.perplexity.toFixed(2)}, ${r.baseline.ppl_increase_pct >= 0 ? '+' : ''}${r.baseline.ppl_increase_pct.toFixed(2)}%)` : ''}`;
          if (r.gate && !r.gate.passed) {
            fs.writeFileSync(recordFile + '.failed', JSON.stringify(report) + '\n');
            throw new GateError(`step ${i + 1} (line ${s.line}): perplexity rose ${r.baseline!.ppl_increase_pct.toFixed(2)}% over the baseline, above the allowed ${r.gate.max_ppl_increase_pct}%`, { file: recipe.file, hint: 'compress less, or raise max_ppl_increase' });
          }
          break;
        }
      }
      report.seconds = (Date.now() - t0) / 1000;
      // The record holds no step duration (it is in the returned report): a re-run writes the same bytes.
      fs.writeFileSync(recordFile, JSON.stringify(withoutTimings({ key, report }), null, 1) + '\n');
    }
    reports.push(report);
    stepProgress.done();
    // Rewritten after every step, so a run stopped by a failure records what it did.
    if (!opts.dryRun) fs.writeFileSync(runRecord, JSON.stringify({ steps: reports.map((r) => ({ step: r.step, kind: r.kind, status: r.skipped ? 'reused' : 'ran' })) }, null, 1) + '\n');
    // What the next step receives.
    if (s.kind === 'calibrate') stats = { dir: out, key, forModel: modelK };
    if (s.kind === 'prune' || s.kind === 'merge' || s.kind === 'quantize') {
      // After a GGUF export only eval steps follow (the recipe checks it): they evaluate the .gguf file itself.
      model = s.kind === 'quantize' && s.options.format === 'gguf' && fs.existsSync(out) ? weightFiles(out)[0] : out;
      modelK = key;
    }
  }
  task.done();
  if (opts.dryRun) return { recipe: path.resolve(file), model: recipe.model, output: recipe.output, steps: reports, seconds: (Date.now() - started) / 1000, dry_run: true };
  const last = finalModelStep(reports);
  const size = { before: weightBytes(recipe.model), after: weightBytes(last < 0 ? recipe.model : reports[last].output) };
  return { recipe: path.resolve(file), model: recipe.model, output: recipe.output, steps: reports, size, seconds: (Date.now() - started) / 1000 };
}

/** `moe run --dry-run`: each step, whether it would run or its output would be reused. */
export function formatRunPlan(r: RunReport): string {
  const lines = ['dry run: nothing written', 'step  kind        line  plan'];
  for (const s of r.steps) lines.push(`${String(s.step).padStart(4)}  ${s.kind.padEnd(10)} ${String(s.line).padStart(5)}  ${s.skipped ? `reuse ${s.output} (${s.detail})` : `${s.detail} → ${s.output}`}`);
  return lines.join('\n');
}

export function formatRun(r: RunReport): string {
  const lines = ['', 'step  kind        line   seconds  result'];
  // A reused step shows "reused" where a step that ran shows its seconds.
  for (const s of r.steps) lines.push(`${String(s.step).padStart(4)}  ${s.kind.padEnd(10)} ${String(s.line).padStart(5)}  ${(s.skipped ? 'reused' : s.seconds.toFixed(2)).padStart(8)}  ${s.detail}`);
  lines.push('', ...headlineLines(r.steps, r.size));
  lines.push(`outputs in ${r.output}; ${r.seconds.toFixed(1)} s`);
  return lines.join('\n');
}
