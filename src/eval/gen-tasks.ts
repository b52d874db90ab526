/**
 * Generative tasks (`moe eval --task FILE.jsonl` whose lines have "prompt"): lines
 * `{"prompt": str, "target": str}` or `{"prompt": str, "targets": [str, ...]}`, optionally `"until": str | [str]`.
 * Each prompt is generated greedily with the KV-cache decoder, as lm-evaluation-harness's `generate_until` does on its
 * Hugging Face backend: up to --max-new-tokens (lm-eval's max_gen_toks) or an `until` string (the generation is cut
 * before the first occurrence); without `until` only the model's EOS stops it early (lm-eval's default when a task
 * gives no `until`); the prompt is left-truncated to the model's length minus --max-new-tokens. Metrics per item:
 * - exact_match: the trimmed generation equals a trimmed target;
 * - contains: a trimmed target (non-empty) occurs in the generation.
 * Means over items with lm-eval's stderr (sample standard deviation / √n). Against --baseline: the drops in points
 * and the share of items whose generation is the same.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import type { Decoder } from '../model/forward/decode';
import type { Progress } from '../ui/progress';
import { generate, promptIds } from './generate';
import { meanStderr, readTaskLines } from './tasks';
import type { TextTokenizer } from './tokenizer';

export interface GenItem {
  prompt: string;
  targets: string[];
  until: string[];
}

export interface GenTask {
  name: string;
  file: string;
  items: GenItem[];
}

const HINT = 'each line must be {"prompt": str, "target": str} or {"prompt": str, "targets": [str, ...]}';

/** A task file is generative when its first item has a "prompt" key (multiple choice: "context"). */
export function isGenerativeTask(file: string): boolean {
  const first = readTaskLines(file).find((l) => l.trim());
  if (!first) return false;
  try {
    const rec = JSON.parse(first) as unknown;
    return typeof rec === 'object' && rec !== null && 'prompt' in rec;
  } catch {
    return false; // the multiple-choice loader reports the line
  }
}

const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

/** A generative task file's items (the first `limit` when given); the task's name is the file's basename. */
export function loadGenTask(file: string, limit?: number): GenTask {
  const lines = readTaskLines(file);
  const items: GenItem[] = [];
  for (let i = 0; i < lines.length && (limit === undefined || items.length < limit); i++) {
    if (!lines[i].trim()) continue;
    const bad = (why: string) => new CheckpointError(`line ${i + 1}: ${why}`, { file, hint: HINT });
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(lines[i]) as Record<string, unknown>;
    } catch {
      throw bad('not valid JSON');
    }
    if (typeof rec !== 'object' || rec === null) throw bad('not a JSON object');
    if (typeof rec.prompt !== 'string' || !rec.prompt) throw bad('"prompt" must be a non-empty string');
    const targets = typeof rec.target === 'string' ? [rec.target] : rec.targets;
    if (!strings(targets) || !targets.length) throw bad('"target" must be a string or "targets" a non-empty list');
    const until = rec.until === undefined ? [] : typeof rec.until === 'string' ? [rec.until] : rec.until;
    if (!strings(until) || until.some((s) => !s)) throw bad('"until" must be a non-empty string or a list of them');
    items.push({ prompt: rec.prompt, targets, until });
  }
  if (!items.length) throw new CheckpointError('the task file has no items', { file, hint: HINT });
  return { name: path.basename(file).replace(/\.[^.]*$/, ''), file, items };
}

export interface GenSample {
  doc_id: number;
  generation: string;
  /** The trimmed generation: what exact_match compares. */
  pred: string;
  answer: string[];
  exact_match: number;
  contains: number;
}

export function scoreGeneration(doc_id: number, item: GenItem, generation: string): GenSample {
  const pred = generation.trim();
  const targets = item.targets.map((t) => t.trim());
  return {
    doc_id,
    generation,
    pred,
    answer: item.targets,
    exact_match: targets.some((t) => t === pred) ? 1 : 0,
    contains: targets.some((t) => t.length > 0 && generation.includes(t)) ? 1 : 0,
  };
}

export interface GenResult {
  n: number;
  exact_match: number;
  exact_match_stderr: number;
  contains: number;
  contains_stderr: number;
}

export function genResult(samples: GenSample[]): GenResult {
  const em = samples.map((s) => s.exact_match);
  const co = samples.map((s) => s.contains);
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  return {
    n: samples.length,
    exact_match: mean(em),
    exact_match_stderr: meanStderr(em),
    contains: mean(co),
    contains_stderr: meanStderr(co),
  };
}

export interface GenTaskReport extends GenResult {
  /** The multiple-choice metrics are absent (a report of either kind can be read as `tasks[name].acc`). */
  acc?: never;
  acc_norm?: never;
  file: string;
  max_new_tokens: number;
  seconds: number;
  items_per_second: number;
  /** Against --baseline; acc_drop is the exact_match drop (what --max-acc-drop gates). */
  baseline?: {
    exact_match: number;
    contains: number;
    acc_drop: number;
    exact_match_drop: number;
    contains_drop: number;
    /** Share of items whose generation equals the baseline's. */
    same_pred: number;
  };
}

/** A model as the generative tasks see it: its decoder, tokenizer, EOS ids and lm-eval's max_length. */
export interface GenModel {
  decoder: Decoder;
  tokenizer: TextTokenizer;
  eos: number[];
  maxLength: number;
}

/** Generates every item greedily. */
export async function generateItems(
  m: GenModel,
  items: GenItem[],
  maxNewTokens: number,
  progress?: Progress,
): Promise<GenSample[]> {
  const out: GenSample[] = [];
  const room = Math.max(1, m.maxLength - maxNewTokens);
  for (let i = 0; i < items.length; i++) {
    const ids = promptIds(m.tokenizer, items[i].prompt).slice(-room);
    const g = await generate(m.decoder, m.tokenizer, ids, { maxNewTokens, stop: items[i].until, eos: m.eos });
    out.push(scoreGeneration(i, items[i], g.text));
    progress?.tick(1);
  }
  return out;
}

export interface GenTaskRun {
  reports: Record<string, GenTaskReport>;
  samples: Record<string, GenSample[]>;
}

/** Runs every generative task on the model (and the baseline). */
export async function runGenTasks(
  tasks: GenTask[],
  model: GenModel,
  base: GenModel | undefined,
  opts: { maxNewTokens: number; progress?: Progress },
): Promise<GenTaskRun> {
  const run: GenTaskRun = { reports: {}, samples: {} };
  for (const task of tasks) {
    const started = Date.now();
    const samples = await generateItems(model, task.items, opts.maxNewTokens, opts.progress);
    const seconds = (Date.now() - started) / 1000;
    const report: GenTaskReport = {
      file: path.resolve(task.file),
      ...genResult(samples),
      max_new_tokens: opts.maxNewTokens,
      seconds,
      items_per_second: samples.length / Math.max(seconds, 1e-9),
    };
    if (base) {
      const b = await generateItems(base, task.items, opts.maxNewTokens, opts.progress);
      const r = genResult(b);
      report.baseline = {
        exact_match: r.exact_match,
        contains: r.contains,
        acc_drop: 100 * (r.exact_match - report.exact_match),
        exact_match_drop: 100 * (r.exact_match - report.exact_match),
        contains_drop: 100 * (r.contains - report.contains),
        same_pred: samples.filter((s, i) => s.generation === b[i].generation).length / samples.length,
      };
    }
    run.reports[task.name] = report;
    run.samples[task.name] = samples;
  }
  return run;
}

/** The human lines of a generative task's result. */
export function formatGenTask(name: string, t: GenTaskReport): string[] {
  const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
  const lines = [
    `task ${name}  exact_match ${pct(t.exact_match)} ± ${pct(t.exact_match_stderr)}, contains ${pct(t.contains)} ± ${pct(t.contains_stderr)} (${t.n} items, ${t.items_per_second.toFixed(1)} items/s)`,
  ];
  const bl = t.baseline;
  if (bl)
    lines.push(
      `  baseline     exact_match ${pct(bl.exact_match)} (drop ${bl.exact_match_drop.toFixed(2)} points), contains ${pct(bl.contains)} (drop ${bl.contains_drop.toFixed(2)}); same generation ${pct(bl.same_pred)}`,
    );
  return lines;
}

/** --log-samples lines of both kinds of task: one JSON object per item, with its task's name. */
export function writeTaskSamples(file: string, runs: { samples: Record<string, object[]> }[]): void {
  const lines: string[] = [];
  for (const run of runs)
    for (const [task, samples] of Object.entries(run.samples))
      for (const s of samples) lines.push(JSON.stringify({ task, ...s }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
}
