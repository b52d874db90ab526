/**
 * `moe eval MODEL --data FILE`: perplexity by the README's rule, size, speed, and against `--baseline` the
 * baseline's perplexity, mean KL(baseline‖model), top-1 agreement and per-layer routing agreement.
 * `--max-ppl-increase PCT` turns it into a CI gate (exit 1 when the model is worse than allowed).
 * `--task FILE.jsonl` adds multiple-choice accuracy as lm-evaluation-harness scores it (src/eval/tasks.ts), with or
 * without --data; `--max-acc-drop POINTS` gates each task's accuracy against the baseline's.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { BackendName } from '../backend/backend';
import { GateError, UsageError } from '../errors';
import { loadWindows, positionsWarning } from '../eval/data';
import { evaluate, EvalTotals } from '../eval/perplexity';
import { checkTaskNames, loadMcTask, maxLengthOf, runTasks, TaskReport } from '../eval/tasks';
import { DEFAULT_TASK_NEW_TOKENS, runGenerativeTasks } from './eval-gen';
import type { GenTaskReport } from '../eval/gen-tasks';
import { formatGenTask, isGenerativeTask, writeTaskSamples } from '../eval/gen-tasks';
import { checkNotInput, createEmptyFile, registerPending, unregisterPending } from '../io/output';
import { encodeHeader } from '../io/writer';
import { formatMB } from '../io/size';
import { ForwardPass } from '../model/forward/model';
import { withDynamicRouting, withTopK } from '../model/top-k';
import { paramCounts } from '../model/params';
import { COMPRESSION_FILE } from '../model/reduce';
import { announceTokenizing, Context } from '../ui/progress';
import { openModel as open, SizeReport } from './open-model';
import { BACKEND, CommandSpec, JSON_OUTPUT, THREADS } from './spec';

export type { SizeReport } from './open-model';

export interface EvalCommandOptions {
  model: string;
  data: string;
  /** Multiple-choice task files (.jsonl), scored after the perplexity. */
  task?: string[];
  limit?: number;
  logSamples?: string;
  /** Generative tasks: tokens generated per item at most. */
  maxNewTokens?: number;
  maxAccDrop?: number;
  seqLen: number;
  maxTokens?: number;
  baseline?: string;
  maxPplIncrease?: number;
  dumpLogits?: string;
  backend?: BackendName;
  device?: 'cpu' | 'cuda';
  threads?: number;
  batchTokens?: number;
  /** Routed experts per token in place of the model's own (src/model/top-k.ts). */
  topK?: number;
  /** Per token, the fewest of them whose probability mass reaches P (src/model/top-k.ts withDynamicRouting). */
  topP?: number;
  /** Per token, drop an expert whose weight is below β × the largest (NAEE's dynamic skipping). */
  skipRatio?: number;
}

export interface EvalReport {
  model: string;
  data: string;
  seq_len: number;
  loss: number;
  perplexity: number;
  /**
   * With --top-k, --top-p or --skip-ratio: routed experts active per token (mean over MoE layers and tokens; a
   * dropped slot does not count) and the parameters active per token as `moe inspect` counts them.
   */
  active_experts_per_token?: number;
  active_params_per_token?: number;
  /** Tokens run through the model and positions predicted (seq_len − 1 per window). */
  tokens: number;
  positions: number;
  windows: number;
  size: SizeReport;
  seconds: number;
  tokens_per_second: number;
  /**
   * The perplexity pass alone (every batch through the layers and the lm_head, weights read as it goes): what
   * start-up, opening the model and tokenizing leave out of `seconds`. With a baseline, both models' passes.
   */
  forward_seconds: number;
  forward_tokens_per_second: number;
  backend: string;
  baseline?: {
    model: string;
    loss: number;
    perplexity: number;
    ppl_increase_pct: number;
    kl_mean: number;
    top1_agreement: number;
    routing_agreement: { layer: number; agreement: number }[];
    size: SizeReport;
  };
  gate?: { max_ppl_increase_pct: number; passed: boolean };
  /** --task: per task (file basename), lm-eval's multiple-choice metrics. */
  tasks?: Record<string, TaskReport | GenTaskReport>;
  /** --max-acc-drop: every task's accuracy within POINTS of the baseline's. */
  acc_gate?: { max_acc_drop: number; passed: boolean };
}

/** `moe eval MODEL --task FILE` without --data: the tasks only. */
export interface TaskEvalReport {
  model: string;
  tasks: Record<string, TaskReport | GenTaskReport>;
  size: SizeReport;
  seconds: number;
  backend: string;
  baseline?: { model: string; size: SizeReport };
  acc_gate?: { max_acc_drop: number; passed: boolean };
}

/** Largest --dump-logits file: beyond this the logits belong in a streaming consumer, not one file. */
const MAX_DUMP_BYTES = 2 * 1024 ** 3;
export const DEFAULT_BATCH_TOKENS = 4096;

function validate(opts: EvalCommandOptions): void {
  if (!Number.isInteger(opts.seqLen) || opts.seqLen < 2)
    throw new UsageError(`--seq-len ${opts.seqLen} must be an integer ≥ 2`);
  if (opts.maxTokens !== undefined && (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 2))
    throw new UsageError(`--max-tokens ${opts.maxTokens} must be an integer ≥ 2`);
  if (opts.maxPplIncrease !== undefined && !opts.baseline)
    throw new UsageError('--max-ppl-increase needs --baseline', { hint: 'pass the uncompressed model as --baseline' });
  if (opts.maxPplIncrease !== undefined && !(opts.maxPplIncrease >= 0))
    throw new UsageError(`--max-ppl-increase ${opts.maxPplIncrease} must be a number ≥ 0`);
  validateTasks(opts);
}

function validateTasks(opts: TaskOptions): void {
  const tasks = opts.task ?? [];
  const hint = 'pass one or more --task FILE.jsonl';
  if (opts.limit !== undefined && !tasks.length) throw new UsageError('--limit needs --task', { hint });
  if (opts.logSamples !== undefined && !tasks.length) throw new UsageError('--log-samples needs --task', { hint });
  if (opts.maxAccDrop !== undefined && !tasks.length) throw new UsageError('--max-acc-drop needs --task', { hint });
  if (opts.maxAccDrop !== undefined && !opts.baseline)
    throw new UsageError('--max-acc-drop needs --baseline', { hint: 'pass the uncompressed model as --baseline' });
  if (opts.maxAccDrop !== undefined && !(opts.maxAccDrop >= 0))
    throw new UsageError(`--max-acc-drop ${opts.maxAccDrop} must be a number ≥ 0`);
  if (opts.limit !== undefined && !(Number.isInteger(opts.limit) && opts.limit >= 1))
    throw new UsageError(`--limit ${opts.limit} must be an integer ≥ 1`);
  checkTaskNames(tasks);
}

type Opened = ReturnType<typeof open>;
/**
 * The evaluated model, run with --top-k experts per token and --top-p / --skip-ratio dropping some of them token by
 * token when given (the baseline keeps its own routing); `count` receives the tokens routed and the experts kept.
 */
function openWithTopK(
  dir: string,
  o: Pick<EvalCommandOptions, 'topK' | 'topP' | 'skipRatio'>,
  count?: { tokens: number; experts: number },
): Opened {
  const m = open(dir);
  if (o.topK === undefined && o.topP === undefined && o.skipRatio === undefined) return m;
  return { ...m, arch: withDynamicRouting(withTopK(m.arch, o.topK), o, count) };
}

/**
 * Routed experts active per token (mean over MoE layers and the perplexity tokens) and the parameters that makes
 * active per token, counted as `moe inspect` counts them (everything but the routed experts, plus the active share
 * of them); only when the routing was changed.
 */
function activeParams(
  opts: EvalCommandOptions,
  m: Opened,
  count: { tokens: number; experts: number },
): Pick<EvalReport, 'active_experts_per_token' | 'active_params_per_token'> {
  if (opts.topK === undefined && opts.topP === undefined && opts.skipRatio === undefined) return {};
  const experts = count.tokens ? count.experts / count.tokens : m.arch.topK;
  const p = paramCounts(m.ckpt, m.arch);
  return {
    active_experts_per_token: experts,
    active_params_per_token: Math.round(p.total - p.experts + (experts * p.experts) / m.arch.numExperts),
  };
}
/** The baseline must share the model's vocabulary. */
function checkVocab(baseline: string | undefined, m: Opened, b: Opened | undefined): void {
  if (b && b.arch.vocab !== m.arch.vocab)
    throw new UsageError(`the baseline's vocabulary (${b.arch.vocab}) differs from the model's (${m.arch.vocab})`, {
      file: baseline,
      hint: 'compare models that share a tokenizer',
    });
}
/** Multiple-choice and generative tasks' results. */
type TaskRun = { reports: Record<string, TaskReport | GenTaskReport>; samples: Record<string, object[]> };
/** What the tasks need of the options (a tasks-only run has no --data nor --seq-len). */
type TaskOptions = Omit<EvalCommandOptions, 'data' | 'seqLen'> & { data?: string };

/** --log-samples must not overwrite an input. */
function checkLogSamples(opts: TaskOptions, m: Opened, b: Opened | undefined): void {
  checkNotInput(
    opts.logSamples,
    [
      { flag: 'MODEL', path: m.ckpt.dir },
      { flag: '--baseline', path: b?.ckpt.dir },
      { flag: '--data', path: opts.data },
      ...(opts.task ?? []).map((f) => ({ flag: '--task', path: f })),
    ],
    '--log-samples',
  );
}

/** --task: loads the task files and scores them on the model (and the baseline) with the backend given. */
async function scoreTasks(
  opts: TaskOptions,
  m: Opened,
  b: Opened | undefined,
  be: Awaited<ReturnType<typeof createBackend>>,
  ctx: Context,
): Promise<TaskRun | undefined> {
  if (!opts.task?.length) return undefined;
  const generative = opts.task.filter(isGenerativeTask);
  const tasks = opts.task.filter((f) => !generative.includes(f)).map((f) => loadMcTask(f, opts.limit));
  const gen = await runGenerativeTasks(generative, opts, m, b, be, ctx);
  if (!tasks.length) {
    if (opts.logSamples) writeTaskSamples(opts.logSamples, [gen]);
    return gen;
  }
  const maxLen = (o: Opened) => maxLengthOf(o.ckpt.config as Record<string, unknown>);
  m.arch.checkWindow(maxLen(m));
  const items = tasks.reduce((s, t) => s + t.items.length, 0);
  const progress = ctx.progress('tasks', items * (b ? 2 : 1), 'items');
  try {
    const run = await runTasks(
      tasks,
      { forward: new ForwardPass(m.reader, m.arch, be), tokenizer: m.tokenizer(), maxLength: maxLen(m) },
      b
        ? { forward: new ForwardPass(b.reader, b.arch, be), tokenizer: b.tokenizer(), maxLength: maxLen(b) }
        : undefined,
      { batchTokens: opts.batchTokens ?? DEFAULT_BATCH_TOKENS, progress },
    );
    if (opts.logSamples) writeTaskSamples(opts.logSamples, [run, gen]);
    return { reports: { ...run.reports, ...gen.reports }, samples: { ...run.samples, ...gen.samples } };
  } finally {
    progress.done();
  }
}

function accGate(opts: TaskOptions, tasks: TaskRun['reports']) {
  if (opts.maxAccDrop === undefined) return undefined;
  const worst = Math.max(...Object.values(tasks).map((t) => t.baseline!.acc_drop));
  return { max_acc_drop: opts.maxAccDrop, passed: worst <= opts.maxAccDrop };
}

/** `moe eval MODEL --task FILE …` without --data. */
export async function evalTasksCommand(opts: TaskOptions, ctx: Context): Promise<TaskEvalReport> {
  if (!opts.task?.length)
    throw new UsageError('moe eval needs --data or --task', {
      hint: 'pass --data FILE for perplexity, --task FILE.jsonl for multiple-choice accuracy, or both',
    });
  validateTasks(opts);
  const started = Date.now();
  const m = openWithTopK(opts.model, opts);
  const b = opts.baseline ? open(opts.baseline) : undefined;
  checkLogSamples(opts, m, b);
  checkVocab(opts.baseline, m, b);
  const be = await createBackend(opts.backend ?? 'onnx', { device: opts.device, threads: opts.threads });
  let run: TaskRun;
  try {
    run = (await scoreTasks(opts, m, b, be, ctx))!;
  } finally {
    m.reader.close();
    b?.reader.close();
    await be.dispose();
  }
  return {
    model: m.ckpt.dir,
    tasks: run.reports,
    size: m.size(),
    seconds: (Date.now() - started) / 1000,
    backend: be.name,
    baseline: b ? { model: b.ckpt.dir, size: b.size() } : undefined,
    acc_gate: accGate(opts, run.reports),
  };
}

export async function evalCommand(opts: EvalCommandOptions, ctx: Context): Promise<EvalReport> {
  validate(opts);
  const started = Date.now();
  const count = { tokens: 0, experts: 0 };
  const m = openWithTopK(opts.model, opts, count);
  const b = opts.baseline ? open(opts.baseline) : undefined;
  checkNotInput(
    opts.dumpLogits,
    [
      { flag: 'MODEL', path: m.ckpt.dir },
      { flag: '--baseline', path: b?.ckpt.dir },
      { flag: '--data', path: opts.data },
    ],
    '--dump-logits',
  );
  checkLogSamples(opts, m, b);
  checkVocab(opts.baseline, m, b);
  const set = loadWindows(opts.data, announceTokenizing(ctx, opts.data, m.tokenizer), m.arch.vocab, {
    seqLen: opts.seqLen,
    maxTokens: opts.maxTokens,
  });
  const positions = positionsWarning(set, opts.seqLen, m.ckpt.config);
  if (positions) ctx.warn(positions);
  m.arch.checkWindow(set.windows.reduce((n, w) => Math.max(n, w.length), 0)); // before any tensor is read
  const be = await createBackend(opts.backend ?? 'onnx', { device: opts.device, threads: opts.threads });
  const dump = opts.dumpLogits ? logitDump(opts.dumpLogits, set.windows, m.arch.vocab) : undefined;
  const total = set.windows.reduce((s, w) => s + w.length, 0);
  const task = ctx.task(`eval ${path.basename(m.ckpt.dir)}`, total);
  const progress = ctx.progress(b ? 'perplexity and baseline' : 'perplexity', total, 'tokens');
  let totals: EvalTotals;
  let run: TaskRun | undefined;
  let forwardSeconds: number;
  const active: Pick<EvalReport, 'active_experts_per_token' | 'active_params_per_token'> = {};
  try {
    const forwardStart = Date.now();
    totals = await evaluate(new ForwardPass(m.reader, m.arch, be), set.windows, {
      batchTokens: opts.batchTokens ?? DEFAULT_BATCH_TOKENS,
      baseline: b ? new ForwardPass(b.reader, b.arch, be) : undefined,
      expertMap: b ? expertMapOf(m.ckpt.dir) : undefined,
      onLogits: dump?.add,
      progress,
    });
    forwardSeconds = (Date.now() - forwardStart) / 1000;
    Object.assign(active, activeParams(opts, m, count)); // the perplexity tokens' routing, before any task adds to it
    dump?.finish();
    progress.done();
    run = await scoreTasks(opts, m, b, be, ctx);
  } finally {
    progress.done();
    task.done();
    m.reader.close();
    b?.reader.close();
    await be.dispose();
  }
  const seconds = (Date.now() - started) / 1000;
  const loss = totals.nllSum / totals.positions;
  const report: EvalReport = {
    model: m.ckpt.dir,
    data: path.resolve(opts.data),
    seq_len: set.kind === 'text' ? opts.seqLen : Math.max(...set.windows.map((w) => w.length)),
    loss,
    perplexity: Math.exp(loss),
    ...active,
    tokens: totals.tokens,
    positions: totals.positions,
    windows: totals.windows,
    size: m.size(),
    seconds,
    tokens_per_second: totals.tokens / seconds,
    forward_seconds: forwardSeconds,
    forward_tokens_per_second: forwardSeconds > 0 ? totals.tokens / forwardSeconds : 0,
    backend: be.name,
  };
  if (b) {
    const baseLoss = totals.baseNllSum! / totals.positions;
    report.baseline = {
      model: b.ckpt.dir,
      loss: baseLoss,
      perplexity: Math.exp(baseLoss),
      ppl_increase_pct: 100 * (Math.exp(loss - baseLoss) - 1),
      kl_mean: totals.klSum! / totals.positions,
      top1_agreement: totals.top1Agree! / totals.positions,
      routing_agreement: [...totals.routing!]
        .sort((x, y) => x[0] - y[0])
        .map(([layer, r]) => ({ layer, agreement: r.overlap / r.tokens })),
      size: b.size(),
    };
    if (opts.maxPplIncrease !== undefined)
      report.gate = {
        max_ppl_increase_pct: opts.maxPplIncrease,
        passed: report.baseline.ppl_increase_pct <= opts.maxPplIncrease,
      };
  }
  if (run) {
    report.tasks = run.reports;
    report.acc_gate = accGate(opts, run.reports);
  }
  return report;
}

/**
 * After prune (or merge), expert i of a layer stands for old expert kept[layer][i]: routing agreement with the
 * baseline compares old ids. Without moe-compression.json, ids are compared as they are.
 */
function expertMapOf(dir: string): ((layer: number, expert: number) => number) | undefined {
  const file = path.join(dir, COMPRESSION_FILE);
  if (!fs.existsSync(file)) return undefined;
  const kept = (JSON.parse(fs.readFileSync(file, 'utf8')) as { kept?: Record<string, number[]> }).kept;
  if (!kept) return undefined;
  return (layer, expert) => kept[String(layer)]?.[expert] ?? expert;
}

/** Throws the CI gate's failure after the report is printed (main maps it to exit 1). */
export function checkGate(out: EvalReport | TaskEvalReport): void {
  const r = out as EvalReport;
  if (r.gate && !r.gate.passed) {
    throw new GateError(
      `perplexity rose ${r.baseline!.ppl_increase_pct.toFixed(2)}% over the baseline, above the allowed ${r.gate.max_ppl_increase_pct}%`,
      {
        file: r.model,
        hint: 'compress less, or raise --max-ppl-increase',
      },
    );
  }
  if (out.acc_gate && !out.acc_gate.passed) {
    const [name, t] = Object.entries(out.tasks!).sort((x, y) => y[1].baseline!.acc_drop - x[1].baseline!.acc_drop)[0];
    throw new GateError(
      `accuracy on task ${name} dropped ${t.baseline!.acc_drop.toFixed(2)} points below the baseline's, more than the allowed ${out.acc_gate.max_acc_drop}`,
      { file: out.model, hint: 'compress less, or raise --max-acc-drop' },
    );
  }
}

/** Collects logits of every position into one F32 safetensors file [windows, T, vocab] (equal-length windows). */
function logitDump(file: string, windows: Int32Array[], vocab: number) {
  const T = windows[0].length;
  if (windows.some((w) => w.length !== T))
    throw new UsageError('--dump-logits needs windows of equal length', {
      hint: 'use text data or equal-length pre-tokenized windows',
    });
  const bytes = windows.length * T * vocab * 4;
  if (bytes > MAX_DUMP_BYTES)
    throw new UsageError(`--dump-logits would write ${(bytes / 1e9).toFixed(1)} GB`, { hint: 'lower --max-tokens' });
  if (fs.existsSync(file))
    throw new UsageError('the --dump-logits file already exists', { file, hint: 'choose another path' });
  // Created now, so an unwritable destination fails before the evaluation runs; removed if the run fails.
  const tmp = `${file}.moe-tmp-${process.pid}`;
  createEmptyFile(tmp);
  registerPending(tmp);
  const chunks: Float32Array[] = [];
  return {
    add: (logits: Float32Array) => chunks.push(logits),
    finish: () => {
      const { header } = encodeHeader([{ name: 'logits', dtype: 'F32', shape: [windows.length, T, vocab] }], {
        format: 'pt',
      });
      const fd = fs.openSync(tmp, 'w');
      try {
        fs.writeSync(fd, header);
        for (const c of chunks) fs.writeSync(fd, new Uint8Array(c.buffer, c.byteOffset, c.byteLength));
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, file);
      unregisterPending(tmp);
    },
  };
}

function formatTasks(r: { tasks?: TaskRun['reports']; acc_gate?: EvalReport['acc_gate'] }): string[] {
  const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
  const lines: string[] = [];
  for (const [name, t] of Object.entries(r.tasks ?? {})) {
    if ('exact_match' in t) {
      lines.push(...formatGenTask(name, t));
      continue;
    }
    lines.push(
      `task ${name}  acc ${pct(t.acc)} ± ${pct(t.acc_stderr)}, acc_norm ${pct(t.acc_norm)} ± ${pct(t.acc_norm_stderr)} (${t.n} items, ${t.items_per_second.toFixed(1)} items/s)`,
    );
    const bl = t.baseline;
    if (bl)
      lines.push(
        `  baseline     acc ${pct(bl.acc)} (drop ${bl.acc_drop.toFixed(2)} points), acc_norm ${pct(bl.acc_norm)} (drop ${bl.acc_norm_drop.toFixed(2)}); same answer ${pct(bl.same_pred)}`,
      );
  }
  if (r.acc_gate)
    lines.push(
      `gate           ${r.acc_gate.passed ? 'passed' : 'FAILED'} (allowed accuracy drop ${r.acc_gate.max_acc_drop} points)`,
    );
  return lines;
}

export function formatEval(out: EvalReport | TaskEvalReport): string {
  if (!('perplexity' in out)) return formatTasks(out).join('\n');
  const r = out;
  const lines = [
    `perplexity     ${r.perplexity.toFixed(4)} (loss ${r.loss.toFixed(5)}) over ${r.positions} predicted positions in ${r.windows} windows of ${r.seq_len}`,
    `size           ${(r.size.params / 1e6).toFixed(2)} M params, ${formatMB(r.size.bytes)}, ${r.size.bits_per_param.toFixed(2)} bits/param${r.size.quantized_average_bits !== undefined ? ` (quantized weights: ${r.size.quantized_average_bits.toFixed(3)} bits)` : ''}`,
    ...(r.active_experts_per_token !== undefined
      ? [
          `active         ${r.active_experts_per_token.toFixed(3)} routed experts per token, ${(r.active_params_per_token! / 1e6).toFixed(2)} M params per token`,
        ]
      : []),
    `speed          ${r.tokens_per_second.toFixed(0)} tokens/s (${r.seconds.toFixed(1)} s, ${r.backend} backend); the forward pass alone ${r.forward_tokens_per_second.toFixed(0)} tokens/s (${r.forward_seconds.toFixed(2)} s)`,
  ];
  if (r.baseline) {
    const bl = r.baseline;
    lines.push(
      `baseline       perplexity ${bl.perplexity.toFixed(4)}; this model is ${bl.ppl_increase_pct >= 0 ? '+' : ''}${bl.ppl_increase_pct.toFixed(2)}%`,
      `agreement      KL(baseline‖model) ${bl.kl_mean.toFixed(5)} nats/token, top-1 ${(100 * bl.top1_agreement).toFixed(2)}%`,
      `routing        ${bl.routing_agreement.map((x) => `L${x.layer} ${(100 * x.agreement).toFixed(1)}%`).join('  ')}`,
    );
  }
  if (r.gate)
    lines.push(`gate           ${r.gate.passed ? 'passed' : 'FAILED'} (allowed +${r.gate.max_ppl_increase_pct}%)`);
  lines.push(...formatTasks(r));
  return lines.join('\n');
}

export const evalSpec: CommandSpec<EvalReport | TaskEvalReport> = {
  name: 'eval',
  summary: 'perplexity on a text (and against a baseline: KL, top-1 and routing agreement), size and speed',
  args: [{ name: '<model>', description: 'model folder or a .gguf file' }],
  options: [
    {
      flag: '--data <file>',
      type: 'path',
      description:
        '.txt, .jsonl (field "text") or .json (array of token-id arrays, used window by window); needed unless --task is given',
    },
    {
      flag: '--task <file...>',
      type: 'list',
      recipeName: 'tasks',
      listOf: 'path',
      parse: (text) => text.split(','),
      description:
        'task, JSON lines: multiple choice {"context", "choices", "answer"} scored as lm-evaluation-harness does, or generative {"prompt", "target" or "targets", optional "until"} (repeatable)',
    },
    { flag: '--limit <n>', type: 'int', min: 1, description: 'use only the first N items of each task' },
    { flag: '--log-samples <file>', type: 'file', description: 'write one JSON line per task item' },
    {
      flag: '--max-new-tokens <n>',
      type: 'int',
      min: 1,
      default: String(DEFAULT_TASK_NEW_TOKENS),
      description: 'generative tasks: tokens generated per item at most (greedy, KV cache)',
    },
    {
      flag: '--seq-len <n>',
      type: 'int',
      min: 2,
      default: '2048',
      description:
        'window length in tokens (deepseek_v32: at most its index_topk; longer windows are refused until sparse attention is implemented)',
    },
    { flag: '--max-tokens <n>', type: 'int', min: 2, description: 'use only the first N tokens of the data' },
    {
      flag: '--baseline <model>',
      type: 'string',
      description: 'compare against this model (usually the uncompressed one; a folder or ORG/NAME[@REV])',
    },
    {
      flag: '--max-ppl-increase <pct>',
      type: 'number',
      description: "CI gate: exit 1 when perplexity is more than PCT % above the baseline's",
    },
    {
      flag: '--max-acc-drop <points>',
      type: 'number',
      description: "CI gate: exit 1 when a task's accuracy is more than POINTS below the baseline's",
    },
    {
      flag: '--top-k <k>',
      type: 'int',
      min: 1,
      description:
        "route each token to K experts instead of the model's num_experts_per_tok (the baseline keeps its own)",
    },
    {
      flag: '--top-p <p>',
      type: 'number',
      description: 'per token, keep the fewest selected experts whose probability mass reaches P (Harder Tasks)',
    },
    {
      flag: '--skip-ratio <b>',
      type: 'number',
      description: "per token, drop an expert whose weight is below B × the largest (NAEE's dynamic skipping)",
    },
    { flag: '--dump-logits <file>', type: 'file', description: "write every position's logits to a safetensors file" },
    BACKEND,
    { flag: '--device <device>', type: { choices: () => ['cpu', 'cuda'] }, default: 'cpu', description: 'onnx device' },
    THREADS,
    {
      flag: '--batch-tokens <n>',
      type: 'int',
      min: 1,
      default: '4096',
      description: 'tokens run through each layer at once (more is faster, uses more memory)',
    },
    JSON_OUTPUT,
  ],
  examples: [
    'moe eval ./model --data wiki.test.txt --seq-len 512 --max-tokens 65536',
    'moe eval ./pruned --baseline ./model --data eval.txt --max-ppl-increase 5 --json',
    'moe eval ./pruned --baseline ./model --task fixtures/tasks/moby-cloze.jsonl --max-acc-drop 5',
    'moe eval ./model --top-k 1 --baseline ./model --data eval.txt',
    'moe eval ./model --top-p 0.7 --baseline ./model --data eval.txt --json | jq .active_params_per_token',
  ],
  run: ([model], o, ctx) => {
    const opts = { ...(o as Omit<EvalCommandOptions, 'model'>), model };
    return opts.data ? evalCommand(opts, ctx) : evalTasksCommand(opts, ctx);
  },
  format: formatEval,
  check: checkGate,
};
