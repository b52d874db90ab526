/**
 * The headline of a run, "before → after", shared by `moe run`'s printed summary and the HTML report so both say
 * the same: perplexity of the original and at the last eval step, and the size (src/io/size.ts) of the original and
 * of the final model the recipe wrote (the GGUF when the last writing step is a GGUF export).
 */
import { formatMB } from '../io/size';

/** One task's accuracy at an eval step (`tasks:`), and the baseline's when the step has one. */
export interface StepTaskResult {
  n: number;
  /** What `acc` measures: multiple-choice accuracy, or a generative task's exact_match. */
  metric?: 'acc' | 'exact_match';
  acc: number;
  acc_stderr: number;
  acc_norm: number;
  baseline_acc?: number;
  acc_drop?: number;
  same_pred?: number;
}

export interface StepSummary {
  kind: string;
  eval?: {
    perplexity: number;
    baseline_perplexity?: number;
    ppl_increase_pct?: number;
    tasks?: Record<string, StepTaskResult>;
  };
}

/** `moe eval`'s report of a multiple-choice task, as far as a run records it. */
interface McTaskReport {
  n: number;
  acc: number;
  acc_stderr: number;
  acc_norm: number;
  baseline?: { acc: number; acc_drop: number; same_pred: number };
}

/** `moe eval`'s report of a generative task (its gate and drop are on exact_match). */
interface GenTaskReport {
  n: number;
  exact_match: number;
  exact_match_stderr: number;
  baseline?: { exact_match: number; acc_drop: number; same_pred: number };
}

/**
 * What a run records of each task of an eval step (from `moe eval`'s report of the task): accuracy for a
 * multiple-choice task, exact_match for a generative one (`metric` says which).
 */
export function stepTasks(tasks: Record<string, McTaskReport | GenTaskReport>): Record<string, StepTaskResult> {
  const out: Record<string, StepTaskResult> = {};
  for (const [name, t] of Object.entries(tasks))
    out[name] =
      'exact_match' in t
        ? {
            n: t.n,
            metric: 'exact_match',
            acc: t.exact_match,
            acc_stderr: t.exact_match_stderr,
            acc_norm: t.exact_match,
            baseline_acc: t.baseline?.exact_match,
            acc_drop: t.baseline?.acc_drop,
            same_pred: t.baseline?.same_pred,
          }
        : {
            n: t.n,
            acc: t.acc,
            acc_stderr: t.acc_stderr,
            acc_norm: t.acc_norm,
            baseline_acc: t.baseline?.acc,
            acc_drop: t.baseline?.acc_drop,
            same_pred: t.baseline?.same_pred,
          };
  return out;
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

/** ", moby-cloze acc 64.50% (baseline 65.00%)" for a step's result line. */
export function taskDetail(tasks: Record<string, StepTaskResult>): string {
  return Object.entries(tasks)
    .map(
      ([name, t]) =>
        `, ${name} ${t.metric ?? 'acc'} ${pct(t.acc)}${t.baseline_acc !== undefined ? ` (baseline ${pct(t.baseline_acc)})` : ''}`,
    )
    .join('');
}

export interface RunSize {
  /** Bytes of the original model's weight files. */
  before: number;
  /** Bytes of the final model's weight files (equal to before when no step writes a model). */
  after: number;
}

/** Kinds of step that write a model the next steps (or the user) receive. */
export const WRITES_MODEL = new Set(['prune', 'merge', 'quantize']);

/** Index of the last step that writes a model, or -1. */
export function finalModelStep(steps: { kind: string }[]): number {
  for (let i = steps.length - 1; i >= 0; i--) if (WRITES_MODEL.has(steps[i].kind)) return i;
  return -1;
}

export function headlineLines(steps: StepSummary[], size: RunSize | undefined): string[] {
  const lines: string[] = [];
  const evals = steps.filter((s) => s.eval);
  if (evals.length) {
    const first = evals[0].eval!;
    const last = evals[evals.length - 1].eval!;
    const before = first.baseline_perplexity ?? first.perplexity;
    lines.push(
      `perplexity before ${before.toFixed(2)}, after ${last.perplexity.toFixed(2)} (${last.ppl_increase_pct !== undefined ? `${last.ppl_increase_pct >= 0 ? '+' : ''}${last.ppl_increase_pct.toFixed(2)}%` : 'no baseline'})`,
    );
  }
  lines.push(...taskHeadline(evals));
  if (size)
    lines.push(
      `size      before ${formatMB(size.before)}, after ${formatMB(size.after)} (${((100 * size.after) / size.before).toFixed(1)}%)`,
    );
  return lines;
}

/** Per task: its accuracy at the first eval step that scored it (or that step's baseline) and at the last. */
function taskHeadline(evals: StepSummary[]): string[] {
  const names = [...new Set(evals.flatMap((s) => Object.keys(s.eval!.tasks ?? {})))];
  return names.map((name) => {
    const with_ = evals.filter((s) => s.eval!.tasks?.[name]).map((s) => s.eval!.tasks![name]);
    const first = with_[0];
    const last = with_[with_.length - 1];
    const before = first.baseline_acc ?? first.acc;
    const drop = 100 * (before - last.acc);
    return `${name} ${last.metric ?? 'acc'} before ${pct(before)}, after ${pct(last.acc)} (${drop > 0 ? '-' : '+'}${Math.abs(drop).toFixed(2)} points)`;
  });
}
