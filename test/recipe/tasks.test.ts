/**
 * Recipes with tasks: an eval step's `tasks: [FILE, ...]` (paths relative to the recipe) scores multiple-choice
 * accuracy beside the perplexity, `max_acc_drop` gates it against the step's baseline like max_ppl_increase, and the
 * run's headline and the report show the accuracy per task per step. The accuracies are checked against
 * lm-evaluation-harness's own (fixtures/reference/tasks-lm-eval.json, scripts/check_tasks.py).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatRun, run } from '../../src/commands/run';
import { loadRecipe, recipeInputs } from '../../src/commands/recipe';
import { GateError } from '../../src/errors';
import { writeReport } from '../../src/report/report';
import { quiet, ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');
const TASK = path.join(ROOT, 'fixtures', 'tasks', 'moby-cloze.jsonl');
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'tasks-lm-eval.json'), 'utf8'));
const LIMIT = 4;

/** A recipe in a folder beside fixtures/ (so `../fixtures/...` paths are relative to it). */
function recipe(body: string): string {
  const dir = tmpDir('moe-recipe-tasks-');
  const file = path.join(dir, 'recipe.yaml');
  fs.writeFileSync(file, `model: ${MODEL}\noutput: ${path.join(dir, 'out')}\nsteps:\n${body}`);
  return file;
}
const rel = (p: string, file: string) => path.relative(path.dirname(file), p);
const DATA = `data: ${TEXT}/eval.txt, seq_len: 32, max_tokens: 64`;

describe('recipes: eval tasks and max_acc_drop', () => {
  test('tasks are resolved against the recipe folder and are inputs of the recipe', () => {
    const file = recipe('');
    fs.appendFileSync(file, `  - eval: { ${DATA}, tasks: [${rel(TASK, file)}], limit: 3 }\n`);
    const r = loadRecipe(file);
    expect(r.steps[0].options.tasks).toEqual([TASK]);
    expect(recipeInputs(r)).toContainEqual({ flag: 'a task of "eval"', path: TASK, line: 4 });
  });

  test.each([
    [`  - eval: { ${DATA}, tasks: [missing.jsonl] }\n`, /line 4: eval\.tasks: .*missing\.jsonl does not exist/],
    [`  - eval: { ${DATA}, tasks: [] }\n`, /line 4: eval\.tasks must be a list of paths/],
    [`  - eval: { ${DATA}, baseline: original, max_acc_drop: 2 }\n`, /line 4: "eval" has max_acc_drop but no tasks/],
    [`  - eval: { ${DATA}, limit: 10 }\n`, /line 4: "eval" has limit but no tasks/],
    [`  - eval: { ${DATA}, log_samples: s.jsonl }\n`, /line 4: "eval" has log_samples but no tasks/],
    [`  - eval: { ${DATA}, tasks: [${TASK}], max_acc_drop: 2 }\n`, /line 4: "eval" has max_acc_drop but no baseline/],
    [
      `  - eval: { ${DATA}, tasks: [${TASK}], baseline: original, max_acc_drop: -1 }\n`,
      /line 4: eval\.max_acc_drop must be a number ≥ 0/,
    ],
  ])('%#: refused when loaded, with the line', (body, re) => {
    expect(() => loadRecipe(recipe(body))).toThrow(re);
  });

  test('a run: accuracy per task per step (headline, report), and the gate fails the run', async () => {
    const file = recipe(
      [
        `  - eval: { ${DATA}, tasks: [${TASK}], limit: ${LIMIT} }`,
        '  - quantize: { bits: 2, method: rtn }',
        `  - eval: { ${DATA}, tasks: [${TASK}], limit: ${LIMIT}, baseline: original, max_acc_drop: 10 }`,
        '',
      ].join('\n'),
    );
    const err = await run(file, quiet).catch((e: Error) => e);
    expect(err).toBeInstanceOf(GateError);
    const acc0 = ref.models.original.acc_per_item.slice(0, LIMIT).reduce((s: number, x: number) => s + x, 0) / LIMIT;
    expect(acc0).toBe(1);
    // The failed step's record: 2-bit RTN picks another answer on one of the 4 items.
    const out = path.join(path.dirname(file), 'out');
    const failed = JSON.parse(fs.readFileSync(path.join(out, '03-eval', 'moe-step.json.failed'), 'utf8'));
    const t = failed.eval.tasks['moby-cloze'];
    expect(t).toMatchObject({ n: LIMIT, baseline_acc: acc0, acc: 0.75, acc_drop: 25, same_pred: 0.75 });
    expect((err as GateError).line()).toBe(
      `step 3 (line 6): accuracy on task moby-cloze dropped 25.00 points below the baseline's, more than the allowed 10 (${file}); compress less, or raise max_acc_drop`,
    );

    // Without the gate the run finishes; the first eval is reused.
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace(', max_acc_drop: 10', ''));
    const r = await run(file, quiet);
    expect(r.steps[0].skipped).toBe(true);
    expect(r.steps[0].eval!.tasks!['moby-cloze'].acc).toBe(acc0);
    expect(r.steps[0].detail).toContain('moby-cloze acc 100.00%');
    expect(r.steps[2].detail).toContain('moby-cloze acc 75.00% (baseline 100.00%)');
    expect(formatRun(r)).toContain('moby-cloze acc before 100.00%, after 75.00% (-25.00 points)');

    const html = path.join(path.dirname(file), 'report.html');
    const rep = await writeReport(out, html);
    expect(rep.charts).toContain('Task accuracy at each eval step');
    const page = fs.readFileSync(html, 'utf8');
    expect(page).toContain('moby-cloze acc before 100.00%, after 75.00% (-25.00 points)');
    const rows = [...page.matchAll(/<tr><td>(\d)<\/td><td>([^<]*)<\/td><td>([^<]*)<\/td><\/tr>/g)].map((m) =>
      m.slice(1),
    );
    expect(rows).toEqual([
      ['1', 'original', '100.00% ± 0.00'],
      ['3', 'step 2 quantize', '75.00% ± 25.00 (baseline 100.00%, drop 25.00 points, same answer 75.0%)'],
    ]);
    expect(page).toContain('<th>moby-cloze (4 items): acc</th>');
  }, 60_000);
});
