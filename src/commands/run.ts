/**
 * `moe run RECIPE.yaml`: runs a recipe's steps in order (src/commands/recipe.ts), each writing into
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
import { EVAL_FILE, RECIPE_RECORD, RUN_RECORD, STEP_RECORD, stepFolder } from '../recipe/layout';
import { loadRecipe, Recipe, recipeInputs, Step, stepValues } from './recipe';
import { fingerprint } from '../calib/stats';
import { finalModelStep, headlineLines, RunSize, StepTaskResult, stepTasks, taskDetail } from '../report/summary';
import type { Context } from '../ui/progress';
import { CalibrateReport, calibrateSpec } from './calibrate';
import { EvalReport, evalSpec } from './eval';
import { mergeSpec } from './merge';
import { pruneSpec } from './prune';
import { quantizeSpec } from './quantize';
import { CommandSpec, COMPUTE, dryRun, JSON_OUTPUT, Values } from './spec';
import { modelNamedIn } from '../io/hf-cache';

export interface StepReport {
  step: number;
  kind: string;
  line: number;
  output: string;
  skipped: boolean;
  seconds: number;
  detail: string;
  /** eval steps: the figures. */
  eval?: {
    perplexity: number;
    baseline_perplexity?: number;
    ppl_increase_pct?: number;
    bytes: number;
    params: number;
    kl_mean?: number;
    /** tasks: per task, the accuracy (and the baseline's). */
    tasks?: Record<string, StepTaskResult>;
  };
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
  return sha({
    fingerprint: fingerprint(ckpt),
    shards: ckpt.shards.map((s) => [path.basename(s), fs.statSync(s).size, fs.statSync(s).mtimeMs]),
  });
}

export interface RunOptions {
  fresh?: boolean;
  dryRun?: boolean;
  reportHtml?: string;
  /** Override the recipe's top-level backend and threads. */
  backend?: BackendName;
  threads?: number;
}

/** What the runner gives a step besides its recipe options. */
interface StepInput {
  model: string;
  output: string;
  stats?: string;
  backend?: BackendName;
  threads?: number;
}

/**
 * Runs one step through its command's spec: the recipe's options (defaults filled in, src/commands/recipe.ts) plus
 * what the runner supplies. Fills the report's detail; returns the gate's failure of an eval step, if any.
 */
async function runStep(
  recipe: Recipe,
  s: Step,
  input: StepInput,
  report: StepReport,
  ctx: Context,
): Promise<GateError | undefined> {
  const values = { ...stepValues(s), ...input, force: true, dryRun: false };
  switch (s.kind) {
    case 'calibrate': {
      const r = (await calibrateSpec.run([input.model], values, ctx)) as CalibrateReport;
      report.detail = `${r.tokens} tokens${r.hessians ? ', with Hessians' : ''}`;
      return;
    }
    case 'prune':
    case 'merge': {
      const r = await (s.kind === 'prune' ? pruneSpec : mergeSpec).run([input.model], values, ctx);
      report.detail = `${r.method}: ${r.experts_before} → ${r.experts_after} experts`;
      return;
    }
    case 'quantize': {
      const r = await quantizeSpec.run([input.model], values, ctx);
      if ('gguf' in r)
        report.detail = `GGUF ${r.gguf.type ?? `LP ${r.gguf.bpw_target} bpw`}: ${r.gguf.bpw.toFixed(3)} bits/weight, ${(r.gguf.file_bytes / 1e6).toFixed(2)} MB`;
      else report.detail = `${r.packed.method}, ${r.packed.allocate}: ${r.packed.average_bits.toFixed(3)} bits average`;
      return;
    }
    case 'eval':
      return evalStep(recipe, s, values, report, ctx);
  }
}

async function evalStep(
  recipe: Recipe,
  s: Step,
  values: Values,
  report: StepReport,
  ctx: Context,
): Promise<GateError | undefined> {
  const b = values.baseline as string | undefined;
  const where = `step ${report.step} (line ${s.line}): eval.baseline`;
  const baseline =
    b === undefined
      ? undefined
      : b === 'original'
        ? recipe.model
        : modelNamedIn(b, path.dirname(recipe.file), where, recipe.file);
  const r = (await evalSpec.run([values.model as string], { ...values, baseline }, ctx)) as EvalReport;
  const out = values.output as string;
  fs.mkdirSync(out, { recursive: true });
  writeMarker(out, 'run (eval step)');
  fs.writeFileSync(path.join(out, EVAL_FILE), JSON.stringify(withoutTimings(r), null, 1) + '\n');
  report.eval = {
    perplexity: r.perplexity,
    baseline_perplexity: r.baseline?.perplexity,
    ppl_increase_pct: r.baseline?.ppl_increase_pct,
    bytes: r.size.bytes,
    params: r.size.params,
    kl_mean: r.baseline?.kl_mean,
  };
  const base = r.baseline
    ? ` (baseline ${r.baseline.perplexity.toFixed(2)}, ${r.baseline.ppl_increase_pct >= 0 ? '+' : ''}${r.baseline.ppl_increase_pct.toFixed(2)}%)`
    : '';
  report.detail = `perplexity ${r.perplexity.toFixed(2)}${base}`;
  if (r.tasks) {
    report.eval.tasks = stepTasks(r.tasks);
    report.detail += taskDetail(report.eval.tasks);
  }
  if (r.gate && !r.gate.passed) {
    const what = `step ${report.step} (line ${s.line}): perplexity rose ${r.baseline!.ppl_increase_pct.toFixed(2)}% over the baseline, above the allowed ${r.gate.max_ppl_increase_pct}%`;
    return new GateError(what, { file: recipe.file, hint: 'compress less, or raise max_ppl_increase' });
  }
  return accGateFailure(recipe, s, report, r);
}

/** An eval step's max_acc_drop gate: the task that dropped most, when it dropped more than allowed. */
function accGateFailure(recipe: Recipe, s: Step, report: StepReport, r: EvalReport): GateError | undefined {
  if (!r.acc_gate || r.acc_gate.passed) return undefined;
  const [name, t] = Object.entries(r.tasks!).sort((x, y) => y[1].baseline!.acc_drop - x[1].baseline!.acc_drop)[0];
  const what = `step ${report.step} (line ${s.line}): accuracy on task ${name} dropped ${t.baseline!.acc_drop.toFixed(2)} points below the baseline's, more than the allowed ${r.acc_gate.max_acc_drop}`;
  return new GateError(what, { file: recipe.file, hint: 'compress less, or raise max_acc_drop' });
}

/** Before any step: the --report-html destination checked, the output folder made and the recipe saved in it. */
function prepareRun(recipe: Recipe, opts: RunOptions): void {
  if (opts.reportHtml) {
    // Checked before any step runs: the report is written at the end, over a report moe wrote only.
    checkNotInput(
      opts.reportHtml,
      [{ flag: 'the recipe', path: recipe.file }, ...recipeInputs(recipe)],
      '--report-html',
    );
    checkFileDestination(opts.reportHtml, true);
  }
  if (!opts.dryRun) {
    createFolder(recipe.output, 'run');
    fs.writeFileSync(
      path.join(recipe.output, RECIPE_RECORD),
      JSON.stringify({ source: recipe.file, ...recipe }, null, 1) + '\n',
    );
  }
}

/** One step of a run: where it writes, its key, and what the runner gives it. */
interface StepPlan {
  i: number;
  s: Step;
  out: string;
  key: string;
  input: StepInput;
}

/** A step reused (its record has the same key), planned (--dry-run), or run and recorded. */
async function doStep(recipe: Recipe, p: StepPlan, opts: RunOptions, ctx: Context): Promise<StepReport> {
  const { i, s, out, key } = p;
  const recordFile = path.join(out, STEP_RECORD);
  const record = fs.existsSync(recordFile)
    ? (JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { key: string; report: StepReport })
    : undefined;
  const t0 = Date.now();
  let report: StepReport;
  if (!opts.fresh && record?.key === key) {
    report = { ...record.report, skipped: true, seconds: 0 };
    if (!opts.dryRun) ctx.log(`== step ${i + 1} ${s.kind} (line ${s.line}): unchanged, skipped`);
  } else if (opts.dryRun) {
    // The keys depend on options and input keys only, never on outputs: the plan is exact without running a step.
    report = {
      step: i + 1,
      kind: s.kind,
      line: s.line,
      output: out,
      skipped: false,
      seconds: 0,
      detail: !record
        ? 'would run'
        : record.key === key
          ? 'would run again (--fresh)'
          : 'would run again (options or inputs changed)',
    };
  } else {
    ctx.log(`== step ${i + 1} ${s.kind} (line ${s.line})`);
    report = { step: i + 1, kind: s.kind, line: s.line, output: out, skipped: false, seconds: 0, detail: '' };
    const failed = await runStep(recipe, s, p.input, report, ctx);
    if (failed) {
      fs.writeFileSync(recordFile + '.failed', JSON.stringify(report) + '\n');
      throw failed;
    }
    report.seconds = (Date.now() - t0) / 1000;
    // The record holds no step duration (it is in the returned report): a re-run writes the same bytes.
    fs.writeFileSync(recordFile, JSON.stringify(withoutTimings({ key, report }), null, 1) + '\n');
  }
  return report;
}

/** OUTPUT/moe-run.json: which steps the run so far ran and which it reused. */
function writeRunRecord(runRecord: string, reports: StepReport[]): void {
  fs.writeFileSync(
    runRecord,
    JSON.stringify(
      { steps: reports.map((r) => ({ step: r.step, kind: r.kind, status: r.skipped ? 'reused' : 'ran' })) },
      null,
      1,
    ) + '\n',
  );
}

export async function run(file: string, ctx: Context, opts: RunOptions = {}): Promise<RunReport> {
  const started = Date.now();
  const recipe: Recipe = loadRecipe(file);
  prepareRun(recipe, opts);
  const backend = opts.backend ?? (recipe.backend as BackendName | undefined);
  let model = recipe.model;
  // The original's key, computed once: eval steps compare against the original, whatever the model they receive.
  const originalK = modelKey(recipe.model);
  let modelK = originalK;
  let stats: { dir: string; key: string; forModel: string } | undefined;
  const reports: StepReport[] = [];
  // One bar for the whole recipe; each step's own phases show below it.
  const task = ctx.task(`run ${path.basename(file)}`, recipe.steps.length);
  const runRecord = path.join(recipe.output, RUN_RECORD);
  if (!opts.dryRun) fs.rmSync(runRecord, { force: true });
  for (let i = 0; i < recipe.steps.length; i++) {
    const s: Step = recipe.steps[i];
    const stepProgress = ctx.progress(`step ${i + 1} ${s.kind}`, 1, 'steps');
    const out = stepFolder(recipe.output, i, s.kind);
    const useStats =
      (s.kind === 'prune' || s.kind === 'merge' || (s.kind === 'quantize' && s.options.stats !== false)) &&
      stats?.forModel === modelK
        ? stats
        : undefined;
    const key = sha({
      kind: s.kind,
      options: s.options,
      model: modelK,
      stats: useStats?.key ?? null,
      backend: backend ?? null,
      original: s.kind === 'eval' ? originalK : null,
    });
    const input: StepInput = {
      model,
      output: out,
      stats: useStats?.dir,
      backend,
      threads: opts.threads ?? recipe.threads,
    };
    reports.push(await doStep(recipe, { i, s, out, key, input }, opts, ctx));
    stepProgress.done();
    // Rewritten after every step, so a run stopped by a failure records what it did.
    if (!opts.dryRun) writeRunRecord(runRecord, reports);
    // What the next step receives.
    if (s.kind === 'calibrate') stats = { dir: out, key, forModel: modelK };
    if (s.kind === 'prune' || s.kind === 'merge' || s.kind === 'quantize') {
      // After a GGUF export only eval steps follow (the recipe checks it): they evaluate the .gguf file itself.
      model = s.kind === 'quantize' && s.options.format === 'gguf' && fs.existsSync(out) ? weightFiles(out)[0] : out;
      modelK = key;
    }
  }
  task.done();
  if (opts.dryRun)
    return {
      recipe: path.resolve(file),
      model: recipe.model,
      output: recipe.output,
      steps: reports,
      seconds: (Date.now() - started) / 1000,
      dry_run: true,
    };
  const last = finalModelStep(reports);
  const size = {
    before: weightBytes(recipe.model),
    after: weightBytes(last < 0 ? recipe.model : reports[last].output),
  };
  return {
    recipe: path.resolve(file),
    model: recipe.model,
    output: recipe.output,
    steps: reports,
    size,
    seconds: (Date.now() - started) / 1000,
  };
}

/** `moe run --dry-run`: each step, whether it would run or its output would be reused. */
export function formatRunPlan(r: RunReport): string {
  const lines = ['dry run: nothing written', 'step  kind        line  plan'];
  for (const s of r.steps)
    lines.push(
      `${String(s.step).padStart(4)}  ${s.kind.padEnd(10)} ${String(s.line).padStart(5)}  ${s.skipped ? `reuse ${s.output} (${s.detail})` : `${s.detail} → ${s.output}`}`,
    );
  return lines.join('\n');
}

export function formatRun(r: RunReport): string {
  const lines = ['', 'step  kind        line   seconds  result'];
  // A reused step shows "reused" where a step that ran shows its seconds.
  for (const s of r.steps)
    lines.push(
      `${String(s.step).padStart(4)}  ${s.kind.padEnd(10)} ${String(s.line).padStart(5)}  ${(s.skipped ? 'reused' : s.seconds.toFixed(2)).padStart(8)}  ${s.detail}`,
    );
  lines.push('', ...headlineLines(r.steps, r.size));
  lines.push(`outputs in ${r.output}; ${r.seconds.toFixed(1)} s`);
  return lines.join('\n');
}

export type RunResult = RunReport & { report_html: string | null };

async function runCommand(file: string, o: Values, ctx: Context): Promise<RunResult> {
  const reportHtml = o.reportHtml as string | undefined;
  const report = await run(file, ctx, {
    fresh: !!o.fresh,
    dryRun: !!o.dryRun,
    reportHtml,
    backend: o.backend as BackendName | undefined,
    threads: o.threads as number | undefined,
  });
  if (o.dryRun) return { ...report, report_html: reportHtml ? path.resolve(reportHtml) : null };
  // A resumed run rewrites the report it wrote before.
  if (!reportHtml) return { ...report, report_html: null };
  const { writeReport } = await import('../report/report');
  return { ...report, report_html: (await writeReport(report.output, reportHtml, { force: true })).file };
}

export const runSpec: CommandSpec<RunResult> = {
  name: 'run',
  summary: 'run a recipe: calibrate → prune or merge → quantize → eval steps from a YAML file, resuming finished steps',
  args: [{ name: '<recipe>', description: 'the recipe (YAML)' }],
  options: [
    { flag: '--fresh', type: 'bool', description: 'run every step again, even those whose outputs are up to date' },
    { flag: '--report-html <file>', type: 'file', description: 'also write the HTML report of the run (moe report)' },
    dryRun('print which steps would run and which outputs would be reused, and write nothing'),
    // No default here: the recipe's top-level backend and threads apply unless these are given.
    { ...COMPUTE[0], default: undefined, description: "matmul backend (default: the recipe's backend, else onnx)" },
    { ...COMPUTE[1], description: "compute threads (default: the recipe's threads, else all cores)" },
    JSON_OUTPUT,
  ],
  examples: [
    'moe run recipes/demo.yaml',
    'moe run recipes/demo.yaml --dry-run',
    'moe run my-recipe.yaml --json > run.json',
  ],
  epilog: '\n\nSee recipes/demo.yaml for the format.',
  run: ([file], o, ctx) => runCommand(file, o, ctx),
  format: (r) =>
    r.dry_run
      ? formatRunPlan(r) + (r.report_html ? `\nwould write the report ${r.report_html}` : '')
      : formatRun(r) + (r.report_html ? `\nreport: ${r.report_html}` : ''),
};
