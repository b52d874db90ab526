/**
 * The layout of a `moe run` output folder: written by src/commands/run.ts, read by src/report/report.ts.
 *   OUTPUT/recipe.json         the resolved recipe
 *   OUTPUT/moe-run.json        what the latest run did with each step: { steps: [{ step, kind, status }] }
 *   OUTPUT/NN-kind/            step NN (from 01) of the recipe, e.g. 02-prune
 *   OUTPUT/NN-kind/moe-step.json   the step's key and report (a step with the same key is reused)
 *   OUTPUT/NN-eval/eval.json   an eval step's report
 */
import * as path from 'node:path';

export const RECIPE_RECORD = 'recipe.json';
export const RUN_RECORD = 'moe-run.json';
export const STEP_RECORD = 'moe-step.json';
export const EVAL_FILE = 'eval.json';

/** The folder of the step at `index` (0-based) of a recipe whose output is `output`: OUTPUT/NN-kind. */
export function stepFolder(output: string, index: number, kind: string): string {
  return path.join(output, `${String(index + 1).padStart(2, '0')}-${kind}`);
}
