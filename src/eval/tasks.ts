/**
 * Multiple-choice tasks (`moe eval --task FILE.jsonl`), scored as lm-evaluation-harness scores `output_type:
 * multiple_choice` with `target_delimiter: " "` on its Hugging Face backend:
 * - each choice's log-likelihood given the context, with lm-eval's pair tokenization (`_encode_pair`): trailing
 *   whitespace of the context moves to the continuation, context+continuation is encoded whole and the continuation
 *   is the tokens after the context's own encoding;
 * - left-truncation to the model's length: the last max_length + 1 tokens, the last one only predicted;
 * - acc = argmax of the log-likelihoods, acc_norm = argmax of log-likelihood / the choice's length in characters
 *   (the first maximum wins, as numpy's argmax); stderr = sample standard deviation / √n.
 * Each (context, choice) pair is one sequence; pairs are sorted by length and run in right-padded batches (causal
 * attention: padding after a sequence never changes its positions), and the lm_head runs only on the rows that
 * predict a continuation token.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError, UsageError } from '../errors';
import type { ForwardPass } from '../model/forward/model';
import type { Progress } from '../ui/progress';
import { RowStats } from './metrics';
import type { TextTokenizer } from './tokenizer';

export interface McItem {
  context: string;
  choices: string[];
  answer: number;
}

export interface McTask {
  name: string;
  file: string;
  items: McItem[];
}

const HINT = 'each line must be {"context": str, "choices": [str, ...], "answer": int}';

/** A task file's lines (multiple-choice or generative); an unreadable file is one clear error. */
export function readTaskLines(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n');
  } catch (e) {
    throw new CheckpointError(
      `cannot read the task file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      { file, hint: 'check the --task path' },
    );
  }
}

/** A task file's items (the first `limit` when given); the task's name is the file's basename. */
export function loadMcTask(file: string, limit?: number): McTask {
  const items: McItem[] = [];
  const lines = readTaskLines(file);
  for (let i = 0; i < lines.length && (limit === undefined || items.length < limit); i++) {
    if (!lines[i].trim()) continue;
    let rec: Partial<McItem>;
    try {
      rec = JSON.parse(lines[i]) as Partial<McItem>;
    } catch {
      throw new CheckpointError(`line ${i + 1} is not valid JSON`, { file, hint: HINT });
    }
    const { context, choices, answer } = rec ?? {};
    const bad = (why: string) => new CheckpointError(`line ${i + 1}: ${why}`, { file, hint: HINT });
    if (typeof context !== 'string' || !context) throw bad('"context" must be a non-empty string');
    if (!Array.isArray(choices) || choices.length < 2 || choices.some((c) => typeof c !== 'string'))
      throw bad('"choices" must be an array of at least two strings');
    if (!Number.isInteger(answer) || answer! < 0 || answer! >= choices.length)
      throw bad(`"answer" must be an integer index into "choices" (0 to ${choices.length - 1})`);
    items.push({ context, choices, answer: answer! });
  }
  if (!items.length) throw new CheckpointError('the task file has no items', { file, hint: HINT });
  return { name: path.basename(file).replace(/\.[^.]*$/, ''), file, items };
}

/** lm-eval's `_encode_pair`: the context's and the continuation's token ids. */
export function encodePair(
  tok: TextTokenizer,
  context: string,
  continuation: string,
): { context: number[]; continuation: number[] } {
  const spaces = context.length - context.trimEnd().length;
  if (spaces > 0) {
    continuation = context.slice(context.length - spaces) + continuation;
    context = context.slice(0, context.length - spaces);
  }
  // lm-eval (0.4.13) encodes with the tokenizer's default special tokens (a BOS when its post-processor adds one).
  const encode = (t: string) => (tok.encodeWithSpecial ? tok.encodeWithSpecial(t) : tok.encode(t));
  const whole = encode(context + continuation);
  const ctx = encode(context);
  return { context: ctx, continuation: whole.slice(ctx.length) };
}

/** lm-eval's model length on the HF backend: n_positions, max_position_embeddings or n_ctx, else 2048. */
export function maxLengthOf(config: Record<string, unknown>): number {
  for (const key of ['n_positions', 'max_position_embeddings', 'n_ctx']) {
    const v = config[key];
    if (typeof v === 'number' && v > 0) return v;
  }
  return 2048;
}

interface Request {
  item: number;
  choice: number;
  /** The model's input (already truncated) and how many of its last positions predict the continuation. */
  input: Int32Array;
  targets: Int32Array;
}

function requests(tok: TextTokenizer, items: McItem[], maxLength: number, delimiter: string): Request[] {
  const out: Request[] = [];
  items.forEach((it, item) =>
    it.choices.forEach((c, choice) => {
      const pair = encodePair(tok, it.context, delimiter + c);
      const whole = [...pair.context, ...pair.continuation].slice(-(maxLength + 1));
      const n = Math.min(pair.continuation.length, whole.length - 1);
      out.push({
        item,
        choice,
        input: Int32Array.from(whole.slice(0, -1)),
        targets: Int32Array.from(whole.slice(whole.length - n)),
      });
    }),
  );
  return out;
}

export interface ScoreOptions {
  maxLength: number;
  /** Most tokens (padded) run through the layers at once. */
  batchTokens: number;
  delimiter?: string;
  progress?: Progress;
}

/** Per item, per choice: the summed log-likelihood of the choice's tokens given the context (float64). */
export async function scoreChoices(
  model: ForwardPass,
  tok: TextTokenizer,
  items: McItem[],
  opts: ScoreOptions,
): Promise<number[][]> {
  const reqs = requests(tok, items, opts.maxLength, opts.delimiter ?? ' ');
  const out = items.map((it) => new Array<number>(it.choices.length).fill(0));
  const order = reqs.map((_, i) => i).sort((a, b) => reqs[b].input.length - reqs[a].input.length);
  for (let at = 0; at < order.length;) {
    const T = reqs[order[at]].input.length; // the longest of the batch (sorted longest first)
    const W = Math.max(1, Math.min(order.length - at, Math.floor(opts.batchTokens / Math.max(T, 1))));
    const batch = order.slice(at, at + W).map((i) => reqs[i]);
    at += W;
    const ids = new Int32Array(W * T); // right-padded with token 0
    batch.forEach((r, w) => ids.set(r.input, w * T));
    const hidden = model.embed(ids);
    await model.layers(hidden, W, T, undefined);
    // Only the rows that predict a continuation token go through the lm_head.
    const H = model.arch.hidden;
    const rows = batch.reduce((s, r) => s + r.targets.length, 0);
    const picked = new Float32Array(rows * H);
    const targets = new Int32Array(rows);
    let row = 0;
    for (let w = 0; w < W; w++) {
      const r = batch[w];
      const first = r.input.length - r.targets.length;
      for (let j = 0; j < r.targets.length; j++, row++) {
        picked.set(hidden.subarray((w * T + first + j) * H, (w * T + first + j + 1) * H), row * H);
        targets[row] = r.targets[j];
      }
    }
    const stats = new RowStats(rows, targets);
    if (rows) await model.headStats(picked, rows, targets, stats);
    row = 0;
    for (const r of batch) {
      let ll = 0;
      for (let j = 0; j < r.targets.length; j++, row++) ll -= stats.nll(row);
      out[r.item][r.choice] = ll;
      opts.progress?.tick(1 / items[r.item].choices.length);
    }
  }
  return out;
}

export interface McSample {
  doc_id: number;
  loglikelihoods: number[];
  pred: number;
  pred_norm: number;
  answer: number;
  acc: number;
  acc_norm: number;
}

export interface McResult {
  n: number;
  acc: number;
  acc_stderr: number;
  acc_norm: number;
  acc_norm_stderr: number;
}

/** numpy's argmax: the first maximum. */
function argmax(v: number[]): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** lm-eval's mean_stderr: sample standard deviation (n − 1) over √n; 0 below two items. */
export function meanStderr(xs: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mean = xs.reduce((s, x) => s + x, 0) / n;
  const v = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (n - 1);
  return Math.sqrt(v) / Math.sqrt(n);
}

export function mcSamples(items: McItem[], lls: number[][]): McSample[] {
  return items.map((it, doc_id) => {
    const ll = lls[doc_id];
    const pred = argmax(ll);
    // Python's len(): code points, not UTF-16 units.
    const pred_norm = argmax(ll.map((x, i) => x / [...it.choices[i]].length));
    return {
      doc_id,
      loglikelihoods: ll,
      pred,
      pred_norm,
      answer: it.answer,
      acc: pred === it.answer ? 1 : 0,
      acc_norm: pred_norm === it.answer ? 1 : 0,
    };
  });
}

export function mcResult(samples: McSample[]): McResult {
  const acc = samples.map((s) => s.acc);
  const norm = samples.map((s) => s.acc_norm);
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  return {
    n: samples.length,
    acc: mean(acc),
    acc_stderr: meanStderr(acc),
    acc_norm: mean(norm),
    acc_norm_stderr: meanStderr(norm),
  };
}

/** The same file twice, or two files of one basename, would collide under tasks.NAME. */
export function checkTaskNames(files: string[]): void {
  const seen = new Map<string, string>();
  for (const f of files) {
    const name = path.basename(f).replace(/\.[^.]*$/, '');
    if (seen.has(name))
      throw new UsageError(`two --task files share the name "${name}"`, {
        file: f,
        hint: 'results are keyed by file basename; rename one',
      });
    seen.set(name, f);
  }
}

/** A model as the tasks see it: its forward pass, tokenizer and lm-eval's max_length. */
export interface TaskModel {
  forward: ForwardPass;
  tokenizer: TextTokenizer;
  maxLength: number;
}

export interface TaskReport extends McResult {
  file: string;
  seconds: number;
  items_per_second: number;
  /** Against --baseline: its accuracies, the drops in points (baseline − model) and the share of equal picks. */
  baseline?: {
    acc: number;
    acc_norm: number;
    acc_drop: number;
    acc_norm_drop: number;
    same_pred: number;
    same_pred_norm: number;
  };
}

export interface TaskRun {
  reports: Record<string, TaskReport>;
  /** Per task, per item (for --log-samples). */
  samples: Record<string, McSample[]>;
}

/** Scores every task on the model (and the baseline). */
export async function runTasks(
  tasks: McTask[],
  model: TaskModel,
  base: TaskModel | undefined,
  opts: { batchTokens: number; progress?: Progress },
): Promise<TaskRun> {
  const run: TaskRun = { reports: {}, samples: {} };
  for (const task of tasks) {
    const started = Date.now();
    const score = (m: TaskModel) =>
      scoreChoices(m.forward, m.tokenizer, task.items, {
        maxLength: m.maxLength,
        batchTokens: opts.batchTokens,
        progress: opts.progress,
      });
    const samples = mcSamples(task.items, await score(model));
    const seconds = (Date.now() - started) / 1000;
    const report: TaskReport = {
      file: path.resolve(task.file),
      ...mcResult(samples),
      seconds,
      items_per_second: samples.length / Math.max(seconds, 1e-9),
    };
    if (base) {
      const b = mcSamples(task.items, await score(base));
      const r = mcResult(b);
      const share = (f: (x: McSample, y: McSample) => boolean) =>
        samples.filter((s, i) => f(s, b[i])).length / samples.length;
      report.baseline = {
        acc: r.acc,
        acc_norm: r.acc_norm,
        acc_drop: 100 * (r.acc - report.acc),
        acc_norm_drop: 100 * (r.acc_norm - report.acc_norm),
        same_pred: share((x, y) => x.pred === y.pred),
        same_pred_norm: share((x, y) => x.pred_norm === y.pred_norm),
      };
    }
    run.reports[task.name] = report;
    run.samples[task.name] = samples;
  }
  return run;
}

/** --log-samples: one JSON line per item, with its task's name. */
export function writeSamples(file: string, run: TaskRun): void {
  const lines: string[] = [];
  for (const [task, samples] of Object.entries(run.samples))
    for (const s of samples) lines.push(JSON.stringify({ task, ...s }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
}
