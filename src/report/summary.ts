/**
 * The headline of a run, "before → after", shared by `moe run`'s printed summary and the HTML report so both say
 * the same: perplexity of the original and at the last eval step, and the size (src/io/size.ts) of the original and
 * of the final model the recipe wrote (the GGUF when the last writing step is a GGUF export).
 */
import { formatMB } from '../io/size';

export interface StepSummary {
  kind: string;
  eval?: { perplexity: number; baseline_perplexity?: number; ppl_increase_pct?: number };
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
  if (size)
    lines.push(
      `size      before ${formatMB(size.before)}, after ${formatMB(size.after)} (${((100 * size.after) / size.before).toFixed(1)}%)`,
    );
  return lines;
}
