/** @jest-environment ./test/backend/ort-environment.js */
/**
 * Generative tasks in `moe eval --task`: a five-item task on fixtures/tiny-moe whose expected generations come from
 * transformers' greedy references (fixtures/reference/generate-hf.json), cut at each item's `until` string (or, for
 * the item without one, the first 12 reference tokens decoded). exact_match, contains, their stderr, --log-samples,
 * and --baseline's drops and same-generation share.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evalTasksCommand } from '../../src/commands/eval';
import { createBackend } from '../../src/backend/index';
import { GenTaskReport, isGenerativeTask, loadGenTask, runGenTasks } from '../../src/eval/gen-tasks';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { Decoder } from '../../src/model/forward/decode';
import { loadArchitecture } from '../../src/model/registry';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { quiet, ROOT, tmpDir } from '../helpers';

const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');
const REF = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'generate-hf.json'), 'utf8')).models[
  'tiny-moe'
] as { prompt: string; new_ids: number[]; text: string }[];
const NEW = 12;

const cut = (text: string, until: string) => text.slice(0, text.indexOf(until));

test('exact_match and contains equal the values from the transformers references', async () => {
  const [a, b, c] = REF;
  const items = [
    { prompt: b.prompt, target: "that's the whale is a little man.", until: '"' }, // exact (after trimming), contains
    { prompt: a.prompt, targets: ['the whale', 'the sea'], until: [','] }, // exact on the second target
    { prompt: c.prompt, target: 'the old man', until: ',' }, // " and the old man": contains only
    { prompt: a.prompt, targets: ['whale-ship', 'the sea'] }, // no until: 12 tokens; contains
    { prompt: b.prompt, target: 'xyzzy', until: '"' }, // neither
  ];
  const tok = loadTokenizer(TINY);
  const generations = [
    cut(b.text, '"'),
    cut(a.text, ','),
    cut(c.text, ','),
    tok.decode(a.new_ids.slice(0, NEW)),
    cut(b.text, '"'),
  ];
  const exact = [1, 1, 0, 0, 0];
  const contains = [1, 1, 1, 1, 0];
  expect(generations[3]).toContain('whale-ship');

  const dir = tmpDir();
  const file = path.join(dir, 'gen-mini.jsonl');
  fs.writeFileSync(file, items.map((i) => JSON.stringify(i)).join('\n') + '\n');
  expect(isGenerativeTask(file)).toBe(true);
  expect(isGenerativeTask(path.join(ROOT, 'fixtures', 'tasks', 'moby-cloze.jsonl'))).toBe(false);
  const samples = path.join(dir, 'samples.jsonl');
  const r = await evalTasksCommand(
    { model: TINY, task: [file], maxNewTokens: NEW, logSamples: samples, threads: 1 },
    quiet,
  );
  const t = r.tasks['gen-mini'] as GenTaskReport;
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const stderr = (xs: number[]) =>
    Math.sqrt(xs.reduce((s, x) => s + (x - mean(xs)) ** 2, 0) / (xs.length - 1) / xs.length);
  expect(t).toMatchObject({ n: 5, max_new_tokens: NEW });
  expect(t.exact_match).toBeCloseTo(mean(exact), 12);
  expect(t.contains).toBeCloseTo(mean(contains), 12);
  expect(t.exact_match_stderr).toBeCloseTo(stderr(exact), 12);
  expect(t.contains_stderr).toBeCloseTo(stderr(contains), 12);
  const lines = fs
    .readFileSync(samples, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(lines.map((l) => l.generation)).toEqual(generations);
  expect(lines.map((l) => [l.task, l.doc_id, l.exact_match, l.contains])).toEqual(
    exact.map((e, i) => ['gen-mini', i, e, contains[i]]),
  );
  expect(lines[0].pred).toBe(generations[0].trim());
  expect(lines[1].answer).toEqual(['the whale', 'the sea']);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('--baseline: drops in points and the share of equal generations', async () => {
  const [a, , c] = REF;
  const task = {
    name: 'two',
    file: 'two.jsonl',
    items: [
      { prompt: a.prompt, targets: ['the sea'], until: [','] }, // " the sea": exact
      { prompt: c.prompt, targets: ['the old man'], until: [','] }, // " and the old man": contains only
    ],
  };
  const ckpt = openCheckpoint(TINY);
  const reader = new TensorReader(ckpt);
  const be = await createBackend('onnx', { threads: 1 });
  const model = { decoder: new Decoder(reader, loadArchitecture(ckpt), be), tokenizer: loadTokenizer(TINY), eos: [0] };
  try {
    const run = await runGenTasks(
      [task],
      { ...model, maxLength: 2048 },
      { ...model, maxLength: 2048 },
      {
        maxNewTokens: NEW,
      },
    );
    expect(run.reports.two).toMatchObject({ n: 2, exact_match: 0.5, contains: 1 });
    expect(run.reports.two.baseline).toEqual({
      exact_match: 0.5,
      contains: 1,
      acc_drop: 0,
      exact_match_drop: 0,
      contains_drop: 0,
      same_pred: 1,
    });
    // the baseline's generations differ when its length leaves no room: its prompt is cut to the last token
    const cut = await runGenTasks(
      [task],
      { ...model, maxLength: 2048 },
      { ...model, maxLength: NEW + 1 },
      {
        maxNewTokens: NEW,
      },
    );
    expect(cut.reports.two.baseline!.same_pred).toBeLessThan(1);
  } finally {
    reader.close();
    await be.dispose();
  }
});

test('a malformed generative line: one clear error', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'bad.jsonl');
  fs.writeFileSync(file, '{"prompt": "a", "target": "b"}\n{"prompt": "a", "targets": []}\n');
  expect(() => loadGenTask(file)).toThrow('line 2: "target" must be a string or "targets" a non-empty list');
  fs.writeFileSync(file, '{"prompt": "a", "target": "b", "until": 3}\n');
  expect(() => loadGenTask(file)).toThrow('line 1: "until" must be a non-empty string or a list of them');
  fs.rmSync(dir, { recursive: true, force: true });
});
