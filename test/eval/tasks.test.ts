/**
 * `moe eval --task`: multiple-choice scoring equals lm-evaluation-harness's. scripts/check_tasks.py ran lm-eval (its
 * Hugging Face backend, float32) on the bundled task fixtures/tasks/moby-cloze.jsonl for fixtures/tiny-moe, a REAP
 * 50% pruned and a 4-bit RTN dequantized output, and committed every item's log-likelihoods
 * (fixtures/reference/tasks-lm-eval.json). Here moe makes the same outputs and scores the first LIMIT items.
 * The second bundled task, fixtures/tasks/sotu-cloze.jsonl, is checked the same way on the second trained fixture,
 * fixtures/tiny-dsv3 (fixtures/reference/tasks-lm-eval-sotu.json; the original only, on its first items).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evalTasksCommand } from '../../src/commands/eval';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { encodePair, loadMcTask, mcResult, mcSamples, meanStderr } from '../../src/eval/tasks';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { fixtureStats, quiet, ROOT, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TASK = path.join(ROOT, 'fixtures', 'tasks', 'moby-cloze.jsonl');
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'tasks-lm-eval.json'), 'utf8'));
// 20 items: enough for every code path, and the REAP output loses one of them (the gate at 0 points fails).
const LIMIT = 20;

interface RefModel {
  args: string[];
  n: number;
  acc: number;
  acc_norm: number;
  acc_stderr: number;
  acc_norm_stderr: number;
  acc_per_item: number[];
  acc_norm_per_item: number[];
  loglikelihoods: number[][];
}
const models = ref.models as Record<string, RefModel>;
const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

function expectSamples(file: string, r: RefModel, task = 'moby-cloze', limit = LIMIT) {
  const lines = fs
    .readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(lines).toHaveLength(limit);
  lines.forEach((s, i) => {
    expect(s.task).toBe(task);
    expect(s.doc_id).toBe(i);
    expect(s.acc).toBe(r.acc_per_item[i]);
    expect(s.acc_norm).toBe(r.acc_norm_per_item[i]);
    (s.loglikelihoods as number[]).forEach((ll, c) => expect(Math.abs(ll - r.loglikelihoods[i][c])).toBeLessThan(1e-3));
  });
}

describe('moe eval --task equals lm-evaluation-harness', () => {
  const work = tmpDir('moe-tasks-');
  const out = (name: string) => path.join(work, name);

  test('the bundled task: 200 items, informative (the fixture ≥ 3 standard errors above chance)', () => {
    const t = loadMcTask(TASK);
    expect(t.items).toHaveLength(200);
    expect(models.original.n).toBe(200);
    const chance = mean(t.items.map((it) => 1 / it.choices.length));
    expect((models.original.acc - chance) / models.original.acc_stderr).toBeGreaterThan(3);
  });

  test('metrics and stderr as lm-eval computes them from its own log-likelihoods', () => {
    const items = loadMcTask(TASK).items;
    for (const r of Object.values(models)) {
      const s = mcSamples(items, r.loglikelihoods);
      expect(s.map((x) => x.acc)).toEqual(r.acc_per_item);
      expect(s.map((x) => x.acc_norm)).toEqual(r.acc_norm_per_item);
      const m = mcResult(s);
      expect(m.acc).toBeCloseTo(r.acc, 12);
      expect(m.acc_norm).toBeCloseTo(r.acc_norm, 12);
      expect(m.acc_stderr).toBeCloseTo(r.acc_stderr, 12);
      expect(m.acc_norm_stderr).toBeCloseTo(r.acc_norm_stderr, 12);
    }
    expect(meanStderr([1])).toBe(0);
  });

  test("lm-eval's pair tokenization: trailing context whitespace moves to the continuation", () => {
    const tok = loadTokenizer(MODEL);
    const p = encodePair(tok, 'the white whale ', ' upon');
    expect(p.context).toEqual(tok.encode('the white whale'));
    expect([...p.context, ...p.continuation]).toEqual(tok.encode('the white whale  upon'));
  });

  test('original: every item log-likelihood within 1e-3, acc and acc_norm', async () => {
    const samples = out('original.jsonl');
    const r = await evalTasksCommand({ model: MODEL, task: [TASK], limit: LIMIT, logSamples: samples }, quiet);
    const t = r.tasks['moby-cloze'];
    expect(t.n).toBe(LIMIT);
    expect(t.acc).toBeCloseTo(mean(models.original.acc_per_item.slice(0, LIMIT)), 12);
    expect(t.acc_norm).toBeCloseTo(mean(models.original.acc_norm_per_item.slice(0, LIMIT)), 12);
    expectSamples(samples, models.original);
  }, 30_000);

  test('REAP 50% against the original: log-likelihoods, accuracy drop, same answers, --max-acc-drop gate', async () => {
    const c = models['prune-reap-50'];
    const stats = await fixtureStats();
    const dir = out('pruned');
    await prune({ model: MODEL, stats, method: 'reap', ratio: 0.5, output: dir }, quiet);
    const samples = out('pruned.jsonl');
    const res = await runMain(
      ['eval', dir, '--baseline', MODEL, '--task', TASK, '--limit', String(LIMIT), '--log-samples', samples].concat([
        '--max-acc-drop',
        '0',
        '--json',
      ]),
    );
    const r = JSON.parse(res.stdout);
    const t = r.tasks['moby-cloze'];
    const accOf = (m: RefModel) => mean(m.acc_per_item.slice(0, LIMIT));
    expect(t.acc).toBeCloseTo(accOf(c), 12);
    expect(t.baseline.acc).toBeCloseTo(accOf(models.original), 12);
    expect(t.baseline.acc_drop).toBeCloseTo(100 * (accOf(models.original) - accOf(c)), 9);
    const argmax = (v: number[]) => v.indexOf(Math.max(...v));
    const same = c.loglikelihoods
      .slice(0, LIMIT)
      .filter((ll, i) => argmax(ll) === argmax(models.original.loglikelihoods[i])).length;
    expect(t.baseline.same_pred).toBeCloseTo(same / LIMIT, 12);
    expectSamples(samples, c);
    const drop = t.baseline.acc_drop as number;
    expect(drop).toBeGreaterThan(0); // the gate at 0 points must fail
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(
      `moe: accuracy on task moby-cloze dropped ${drop.toFixed(2)} points below the baseline's, more than the allowed 0`,
    );
  }, 60_000);

  test('4-bit RTN, dequantized: log-likelihoods within 1e-3', async () => {
    const c = models['quantize-rtn-4'];
    const dir = out('rtn4');
    await quantize({ model: MODEL, output: dir, bits: 4, method: 'rtn', format: 'dequantized' }, quiet);
    const samples = out('rtn4.jsonl');
    const r = await evalTasksCommand({ model: dir, task: [TASK], limit: LIMIT, logSamples: samples }, quiet);
    expect(r.tasks['moby-cloze'].acc).toBeCloseTo(mean(c.acc_per_item.slice(0, LIMIT)), 12);
    expectSamples(samples, c);
  }, 30_000);

  test('--data and --task together: perplexity, then the tasks; the text report', async () => {
    const data = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
    const r = await runMain(
      ['eval', MODEL, '--data', data, '--seq-len', '64', '--max-tokens', '128'].concat([
        '--task',
        TASK,
        '--limit',
        '4',
      ]),
    );
    expect(r.code).toBe(0);
    const acc = mean(models.original.acc_per_item.slice(0, 4));
    expect(r.stdout).toMatch(/^perplexity /);
    expect(r.stdout).toContain(`task moby-cloze  acc ${(100 * acc).toFixed(2)}% ± `);
    expect(r.stdout).toContain('(4 items, ');
  });

  test('usage errors', async () => {
    const none = await runMain(['eval', MODEL]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('moe: moe eval needs --data or --task');
    const gate = await runMain(['eval', MODEL, '--task', TASK, '--max-acc-drop', '1']);
    expect(gate.code).toBe(2);
    expect(gate.stderr).toContain('moe: --max-acc-drop needs --baseline');
    const bad = out('bad.jsonl');
    fs.writeFileSync(bad, '{"context": "a", "choices": ["b", "c"], "answer": 2}\n');
    const r = await runMain(['eval', MODEL, '--task', bad]);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('line 1: "answer" must be an integer index into "choices" (0 to 1)');
  });
});

describe('the second bundled task, sotu-cloze on fixtures/tiny-dsv3, equals lm-evaluation-harness', () => {
  const MODEL2 = path.join(ROOT, 'fixtures', 'tiny-dsv3');
  const TASK2 = path.join(ROOT, 'fixtures', 'tasks', 'sotu-cloze.jsonl');
  const ref2 = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'tasks-lm-eval-sotu.json'), 'utf8'));
  const models2 = ref2.models as Record<string, RefModel>;
  const LIMIT2 = 5;

  test('200 items, informative: the fixture ≥ 3 standard errors above chance; metrics from its log-likelihoods', () => {
    expect(ref2.model).toBe('fixtures/tiny-dsv3');
    const t = loadMcTask(TASK2);
    expect(t.items).toHaveLength(200);
    expect(models2.original.n).toBe(200);
    const chance = mean(t.items.map((it) => 1 / it.choices.length));
    expect((models2.original.acc - chance) / models2.original.acc_stderr).toBeGreaterThan(3);
    for (const r of Object.values(models2)) {
      const m = mcResult(mcSamples(t.items, r.loglikelihoods));
      expect(m.acc).toBeCloseTo(r.acc, 12);
      expect(m.acc_norm).toBeCloseTo(r.acc_norm, 12);
      expect(m.acc_stderr).toBeCloseTo(r.acc_stderr, 12);
    }
  });

  test('original: every item log-likelihood within 1e-3, acc and acc_norm', async () => {
    const samples = path.join(tmpDir('moe-tasks2-'), 'original.jsonl');
    const r = await evalTasksCommand({ model: MODEL2, task: [TASK2], limit: LIMIT2, logSamples: samples }, quiet);
    const t = r.tasks['sotu-cloze'];
    expect(t.n).toBe(LIMIT2);
    expect(t.acc).toBeCloseTo(mean(models2.original.acc_per_item.slice(0, LIMIT2)), 12);
    expect(t.acc_norm).toBeCloseTo(mean(models2.original.acc_norm_per_item.slice(0, LIMIT2)), 12);
    expectSamples(samples, models2.original, 'sotu-cloze', LIMIT2);
  }, 30_000);
});
