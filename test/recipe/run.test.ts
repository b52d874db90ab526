/**
 * `moe run`: recipes are validated with line-numbered messages before anything runs, steps chain their outputs,
 * and a resumed run skips the steps whose inputs and options did not change.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { formatRun, run, RunReport } from '../../src/commands/run';
import { loadRecipe } from '../../src/commands/recipe';
import { quiet, ROOT, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');

function recipe(dir: string, body: string): string {
  const file = path.join(dir, 'recipe.yaml');
  fs.writeFileSync(file, `model: ${MODEL}\noutput: ${path.join(dir, 'out')}\n${body}`);
  return file;
}

const CALIB = `  - calibrate:\n      data: ${TEXT}/calib.txt\n      seq_len: 128\n      max_tokens: 2048\n`;
/** Bytes of a folder's .safetensors files, computed here independently of src/io/size.ts. */
const filesBytes = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);

/** The latest run's record of each step, and the status column of its printed table. */
function statuses(r: RunReport): { record: string[]; printed: string[] } {
  const record = JSON.parse(fs.readFileSync(path.join(r.output, 'moe-run.json'), 'utf8')).steps.map(
    (s: { status: string }) => s.status,
  );
  const printed = formatRun(r)
    .split('\n')
    .filter((l) => /^\s+\d+\s{2}\w/.test(l))
    .map((l) => l.trim().split(/\s+/)[3]);
  return { record, printed };
}

const EVAL = `  - eval: { data: ${TEXT}/eval.txt, seq_len: 128, max_tokens: 1024, baseline: original }\n`;

describe('recipes', () => {
  test.each([
    ['steps:\n  - squash: { keep: 4 }\n', 4, /unknown step "squash"/],
    [`steps:\n${CALIB}  - prune: { method: reap, keep: four }\n`, 8, /prune\.keep must be an integer/],
    [`steps:\n${CALIB}  - prune: { method: reap, keep: 4, speed: 3 }\n`, 8, /"prune" has no option "speed"/],
    [`steps:\n  - eval: { data: ${TEXT}/missing.txt }\n`, 4, /eval\.data: .*missing\.txt does not exist/],
    ['steps:\n  - prune: { method: reap, keep: 4 }\n', 4, /needs a calibration of the model it receives/],
    [`steps:\n${CALIB}  - prune: { method: fastest, keep: 4 }\n`, 8, /prune\.method is "fastest"; expected one of/],
    [
      `steps:\n  - quantize: { bits: 3 }\n  - quantize: { format: gguf, type: q4_k }\n  - quantize: { bits: 4 }\n`,
      6,
      /comes after a GGUF output \(line 5\)/,
    ],
    ['steps: [\n', 4, /not valid YAML/],
    [`steps:\n${CALIB}      data_shard: 0/2\n`, 8, /"calibrate" has no option "data_shard"/],
  ])('%#: a line-numbered message, exit 2, nothing run', async (body, line, re) => {
    const dir = tmpDir();
    const file = recipe(dir, body as string);
    expect(() => loadRecipe(file)).toThrow(new RegExp(`line ${line}: `));
    const r = await runMain(['run', file]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(re as RegExp);
    expect(r.stderr).toMatch(`line ${line}:`);
    expect(fs.existsSync(path.join(dir, 'out'))).toBe(false);
  });

  test("an eval after a GGUF export evaluates the .gguf file; the headline's after is the GGUF", async () => {
    const dir = tmpDir();
    const file = recipe(dir, `steps:\n  - quantize: { format: gguf, type: q8_0 }\n${EVAL}`);
    const r = await run(file, quiet);
    const gguf = path.join(
      dir,
      'out',
      '01-quantize',
      fs.readdirSync(path.join(dir, 'out', '01-quantize')).find((f) => f.endsWith('.gguf'))!,
    );
    const direct = await evalCommand(
      { model: gguf, baseline: MODEL, data: path.join(TEXT, 'eval.txt'), seqLen: 128, maxTokens: 1024 },
      quiet,
    );
    const ev = r.steps[1].eval!;
    expect(ev.perplexity).toBe(direct.perplexity);
    expect(ev.bytes).toBe(fs.statSync(gguf).size);
    // Q8_0 is close to the original, but not equal to it (the eval did not run the safetensors model).
    expect(ev.perplexity).not.toBe(ev.baseline_perplexity);
    expect(Math.abs(ev.perplexity / ev.baseline_perplexity! - 1)).toBeLessThan(0.01);
    expect(r.size!.after).toBe(fs.statSync(gguf).size);
  });

  test('a resumed run skips finished steps; a changed option reruns that step and the ones after it', async () => {
    const dir = tmpDir();
    const file = recipe(
      dir,
      `steps:\n${CALIB}  - prune: { method: frequency, keep: 6 }\n  - quantize: { bits: 4, method: rtn }\n${EVAL}`,
    );
    const first = await run(file, quiet);
    expect(first.steps.map((s) => s.skipped)).toEqual([false, false, false, false]);
    const ev = first.steps[3].eval!;
    expect(ev.baseline_perplexity).toBeGreaterThan(0);
    expect(ev.perplexity).toBeGreaterThan(ev.baseline_perplexity!);
    // The chain: the quantized model is the pruned one, packed.
    const q = JSON.parse(fs.readFileSync(path.join(dir, 'out', '03-quantize', 'config.json'), 'utf8'));
    expect(q.num_local_experts ?? q.num_experts).toBe(6);
    expect(q.quantization_config.bits).toBeGreaterThanOrEqual(4);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'out', 'recipe.json'), 'utf8')).steps).toHaveLength(4);
    expect(statuses(first).record).toEqual(['ran', 'ran', 'ran', 'ran']);
    // Sizes: the weight files' bytes, before = the original, after = the final model (the quantized one), in MB.
    expect(first.size).toEqual({ before: filesBytes(MODEL), after: filesBytes(path.join(dir, 'out', '03-quantize')) });
    expect(ev.bytes).toBe(first.size!.after);
    expect(formatRun(first)).toContain(
      `size      before ${(filesBytes(MODEL) / 1e6).toFixed(2)} MB, after ${(first.size!.after / 1e6).toFixed(2)} MB`,
    );
    const second = await run(file, quiet);
    expect(second.steps.map((s) => s.skipped)).toEqual([true, true, true, true]);
    // A reused step is reported as reused (in the record the HTML report reads, and in the printed table), not ran.
    expect(statuses(second)).toEqual({
      record: ['reused', 'reused', 'reused', 'reused'],
      printed: ['reused', 'reused', 'reused', 'reused'],
    });
    expect(second.steps[3].eval!.perplexity).toBe(ev.perplexity);
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('bits: 4', 'bits: 8'));
    const third = await run(file, quiet);
    expect(third.steps.map((s) => s.skipped)).toEqual([true, true, false, false]);
    expect(statuses(third).record).toEqual(['reused', 'reused', 'ran', 'ran']);
    expect(statuses(third).printed.slice(0, 2)).toEqual(['reused', 'reused']);
    expect(
      statuses(third)
        .printed.slice(2)
        .every((x) => /^\d+\.\d\d$/.test(x)),
    ).toBe(true);
    expect(third.steps[3].eval!.perplexity).toBeLessThan(ev.perplexity);
  }, 120_000);

  test("a calibrate step with data_shards: N runs the shards here and combines them into the single run's stats", async () => {
    const dir = tmpDir();
    const file = recipe(
      dir,
      `steps:\n${CALIB}      batch_tokens: 256\n      data_shards: 3\n  - prune: { method: frequency, keep: 6 }\n`,
    );
    const r = await run(file, quiet);
    expect(r.steps.map((s) => s.skipped)).toEqual([false, false]);
    const stats = path.join(dir, 'out', '01-calibrate');
    expect(JSON.parse(fs.readFileSync(path.join(stats, 'stats.json'), 'utf8')).data_shards).toBe(3);
    const single = path.join(dir, 'single');
    await calibrate(
      {
        model: MODEL,
        data: path.join(TEXT, 'calib.txt'),
        seqLen: 128,
        maxTokens: 2048,
        batchTokens: 256,
        output: single,
      },
      quiet,
    );
    const [a, b] = [new CalibrationStats(stats), new CalibrationStats(single)];
    for (const l of [0, 1, 2]) expect(a.vector(l, 'count')).toEqual(b.vector(l, 'count'));
    a.close();
    b.close();
    // no part is left beside the stats
    expect(fs.readdirSync(path.join(dir, 'out')).filter((f) => f.includes('parts'))).toEqual([]);
  }, 60_000);
});
