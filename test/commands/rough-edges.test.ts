/**
 * The rough edges a new user hits (issue 16): empty or too-short data, the real cause of "fewer than one window",
 * --version, examples in help, commander's errors in moe's one-line style, exit 3 for missing inputs, warnings for
 * requests that run but rarely mean what they say, and --dry-run on run, assemble, synth and report.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { assemble } from '../../src/commands/assemble';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { run } from '../../src/commands/run';
import { synthesize } from '../../src/synth/generate';
import { PRESETS } from '../../src/synth/presets';
import { Context, createContext } from '../../src/ui/progress';
import { listDir, makeSynth, quiet, ROOT, runCli, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');
const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** `moe ARGS` in this process (runMain); a few tests below spawn the built CLI to check the real exit status. */
const moe = runMain;

/** A context that keeps only the warnings, as the lines a user would see. */
function capture(): { ctx: Context; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  return { ctx: createContext({ quiet: true, stream }), lines };
}

function write(dir: string, name: string, body: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, body);
  return f;
}

/** Every file and folder under dir, with sizes: what "nothing written" is checked against. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of listDir(d)) {
      const p = path.join(d, e);
      const st = fs.statSync(p);
      out.push(`${path.relative(dir, p)} ${st.isDirectory() ? 'dir' : st.size}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

/** Exactly one line on stderr. */
function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  return lines[0];
}

describe('empty or too-short data', () => {
  const dir = tmpDir();
  const SHORT_TXT = 'moe: the data gives 0 tokens, fewer than one window of --seq-len 16';
  const cases: [string, string, string][] = [
    [
      'empty.json',
      '[]',
      'moe: the data gives 0 tokens, fewer than one window of 2 tokens (FILE); each pre-tokenized window needs at least 2 tokens; give longer windows',
    ],
    [
      'empty-window.json',
      '[[]]',
      'moe: the data gives 0 tokens, fewer than one window of 2 tokens (FILE); each pre-tokenized window needs at least 2 tokens; give longer windows',
    ],
    [
      'one-token-windows.json',
      '[[5],[6]]',
      'moe: the data gives 2 tokens, but no window of at least 2 tokens (FILE); each pre-tokenized window needs at least 2 tokens; give longer windows',
    ],
    ['empty.txt', '', `${SHORT_TXT} (FILE); use a shorter --seq-len or more text`],
    ['empty.jsonl', '\n', `${SHORT_TXT} (FILE); use a shorter --seq-len or more text`],
    ['blank-record.jsonl', '{"text": ""}\n', `${SHORT_TXT} (FILE); use a shorter --seq-len or more text`],
  ];

  test.each(cases)('eval --data %s: exit 2 with one line, no NaN report', async (name, body, message) => {
    const file = write(dir, name, body);
    const r = await moe(['eval', MODEL, '--data', file, '--seq-len', '16']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toBe(message.replace('FILE', file));
  });

  test('the same data in calibrate: the same message, before anything is written', async () => {
    for (const [name, body, message] of cases) {
      const file = write(dir, name, body);
      const out = path.join(dir, 'stats');
      await expect(calibrate({ model: MODEL, output: out, data: file, seqLen: 16 }, quiet)).rejects.toThrow(
        message.replace(/^moe: /, '').replace(/ \(FILE\).*$/, ''),
      );
      expect(fs.existsSync(out)).toBe(false);
    }
    const r = await moe([
      'calibrate',
      MODEL,
      '--data',
      write(dir, 'e.json', '[]'),
      '--seq-len',
      '16',
      '-o',
      path.join(dir, 'stats'),
    ]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(/^moe: the data gives 0 tokens, fewer than one window of 2 tokens/);
  });

  test('a gate on empty data is a usage error, not "rose NaN%" (the built CLI\'s exit status)', () => {
    const r = runCli([
      'eval',
      MODEL,
      '--baseline',
      MODEL,
      '--max-ppl-increase',
      '5',
      '--data',
      write(dir, 'gate.json', '[]'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toMatch(/^moe: the data gives 0 tokens, fewer than one window of 2 tokens/);
  });
});

describe('too few tokens: the real cause', () => {
  test('--max-tokens below one window of --seq-len names --max-tokens, not the data', async () => {
    // About 800 tokens: more than one window of 256, so only --max-tokens stands in the way.
    const text = write(tmpDir(), 'eval.txt', fs.readFileSync(path.join(TEXT, 'eval.txt'), 'utf8').slice(0, 4000));
    const r = await moe(['eval', MODEL, '--data', text, '--seq-len', '256', '--max-tokens', '100']);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      `moe: --max-tokens 100 keeps fewer tokens than one window of --seq-len 256 (${text}); lower --seq-len or raise --max-tokens`,
    );
    // Short text with no --max-tokens keeps the data message.
    const short = await moe(['eval', MODEL, '--data', text, '--seq-len', '4096']);
    expect(oneLine(short.stderr)).toMatch(
      /^moe: the data gives \d+ tokens, fewer than one window of --seq-len 4096 .*; use a shorter --seq-len or more text$/,
    );
  });

  test('pre-tokenized windows longer than --max-tokens, in calibrate', async () => {
    const file = write(tmpDir(), 'w.json', JSON.stringify([[1, 2, 3, 4, 5]]));
    await expect(
      calibrate({ model: MODEL, output: path.join(tmpDir(), 's'), data: file, seqLen: 16, maxTokens: 3 }, quiet),
    ).rejects.toThrow('--max-tokens 3 keeps fewer tokens than one window (the shortest holds 5)');
  });
});

describe('the command line', () => {
  test('--version and -V print the package version (read from the built dist/ and from src/)', async () => {
    const r = runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${VERSION}\n`);
    expect(r.stderr).toBe('');
    expect(await moe(['-V'])).toEqual({ code: 0, stdout: `${VERSION}\n`, stderr: '' });
  });

  test('examples in moe --help and moe demo --help', async () => {
    const top = await moe(['--help']);
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(
      /\nExamples:\n {2}moe demo .*\n {2}moe inspect .*\n[\s\S]*moe run recipes\/demo\.yaml --dry-run\n/,
    );
    expect(top.stdout).toMatch(/-V, --version +print moe's version/);
    const demo = await moe(['demo', '--help']);
    expect(demo.code).toBe(0);
    expect(demo.stdout).toMatch(/\nExamples:\n {2}moe demo .*\n {2}moe demo --json/);
  });

  test.each([
    [['inspect', MODEL, '--jsn'], "moe: unknown option '--jsn' (did you mean --json?); run moe inspect --help"],
    [['inspect'], "moe: missing required argument 'model'; run moe inspect --help"],
    [['frob'], "moe: unknown command 'frob'; run moe --help"],
    [['--bogus'], "moe: unknown option '--bogus'; run moe --help"],
    [
      ['prune', MODEL, '--stats', 's', '-o', 'o', '--method', 'best'],
      "moe: option '--method <name>' argument 'best' is invalid. Allowed choices are frequency, soft-frequency, reap, naee, dern, random; run moe prune --help",
    ],
    [
      ['prune', MODEL, '--stats', 's', '-o', 'o'],
      "moe: required option '--method <name>' not specified; run moe prune --help",
    ],
    [['eval', MODEL, '--data'], "moe: option '--data <file>' argument missing; run moe eval --help"],
    [
      ['inspect', MODEL, 'extra'],
      "moe: too many arguments for 'inspect'. Expected 1 argument but got 2; run moe inspect --help",
    ],
  ])('commander error %j: one moe line, exit 2', async (args, line) => {
    const r = await moe(args as string[]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(oneLine(r.stderr)).toBe(line);
  });

  test('the built CLI exits 2 on a commander error, with the one line', () => {
    const r = runCli(['quantize', MODEL, '--bits', '4', '-o', 'x', '--format', 'zip']);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(
      "moe: option '--format <f>' argument 'zip' is invalid. Allowed choices are packed, dequantized, compressed-tensors, gguf, gptq; run moe quantize --help",
    );
  });

  test('a missing model folder and a missing data file are both bad input (exit 3)', async () => {
    const nowhere = path.join(tmpDir(), 'nowhere');
    const m = await moe(['inspect', nowhere]);
    expect(m.code).toBe(3);
    expect(oneLine(m.stderr)).toBe(`moe: model folder does not exist (${nowhere}); check the path`);
    const d = await moe(['eval', MODEL, '--data', path.join(nowhere, 'eval.txt')]);
    expect(d.code).toBe(3);
    expect(oneLine(d.stderr)).toBe(
      `moe: the data file does not exist (${path.join(nowhere, 'eval.txt')}); check the --data path`,
    );
  });
});

describe('warnings: the command proceeds, one "moe: warning:" line', () => {
  let work: string;
  let model: string;
  let stats: string;
  beforeAll(async () => {
    work = tmpDir();
    model = await makeSynth('mixtral', path.join(work, 'model'), { set: { max_position_embeddings: 16 } });
    // 4 windows of 12 tokens (vocabulary 128).
    const data = write(
      work,
      'calib.json',
      JSON.stringify([...Array(4).keys()].map((w) => [...Array(12).keys()].map((i) => (7 * w + 5 * i) % 128))),
    );
    stats = path.join(work, 'stats');
    await calibrate({ model, output: stats, data, seqLen: 12, backend: 'ref' }, quiet);
  });

  test('--bits 1: quantizes, and says what 1 bit does', async () => {
    const { ctx, lines } = capture();
    const out = path.join(work, 'q1');
    const r = await quantize({ model, output: out, bits: 1, method: 'rtn', groupSize: 32 }, ctx);
    expect(r.by_class.expert.average_bits).toBe(1);
    expect(lines).toEqual([
      'moe: warning: --bits 1 is below 2: 1 bit keeps 2 levels per group of 32 weights, which usually breaks the model (perplexity rises by orders of magnitude); 3 or 4 bits is the usual choice',
    ]);
    expect(fs.existsSync(path.join(out, 'config.json'))).toBe(true);
    const quietRun = capture();
    await quantize({ model, output: path.join(work, 'q2'), bits: 2, method: 'rtn', groupSize: 32 }, quietRun.ctx);
    expect(quietRun.lines).toEqual([]);
  });

  test('--keep equal to the expert count (prune and merge), and --ratio 1', async () => {
    const E = PRESETS.mixtral.num_local_experts as number;
    const p = capture();
    const pr = await prune(
      { model, stats, method: 'frequency', keep: E, output: path.join(work, 'p'), dryRun: true },
      p.ctx,
    );
    expect(pr.experts_after).toBe(E);
    expect(p.lines).toEqual([
      `moe: warning: --keep ${E} keeps all ${E} experts of every MoE layer: nothing is pruned, the output holds the same experts as the model; lower --keep or --ratio`,
    ]);
    const m = capture();
    await merge({ model, stats, method: 'average', ratio: 1, output: path.join(work, 'm'), dryRun: true }, m.ctx);
    expect(m.lines).toEqual([
      `moe: warning: --ratio 1 keeps all ${E} experts of every MoE layer: nothing is merged, the output holds the same experts as the model; lower --keep or --ratio`,
    ]);
    const none = capture();
    await prune(
      { model, stats, method: 'frequency', keep: E - 1, output: path.join(work, 'p'), dryRun: true },
      none.ctx,
    );
    expect(none.lines).toEqual([]);
  });

  test('windows above max_position_embeddings (calibrate and eval)', async () => {
    const data = write(work, 'long.json', JSON.stringify([[...Array(20).keys()]]));
    const c = capture();
    await calibrate({ model, output: path.join(work, 's2'), data, seqLen: 2048, dryRun: true }, c.ctx);
    expect(c.lines).toEqual([
      "moe: warning: a pre-tokenized window of 20 tokens is above the model's max_position_embeddings (16): positions past 16 were never trained, so the figures will not reflect the model; use windows of at most 16 tokens",
    ]);
    const e = capture();
    const r = await evalCommand({ model, data, seqLen: 2048, backend: 'ref' }, e.ctx);
    expect(r.perplexity).toBeGreaterThan(1);
    expect(e.lines).toEqual(c.lines);
  });

  test('text windows: the warning names --seq-len, on stderr; --json stdout stays one JSON object', async () => {
    const copy = path.join(tmpDir(), 'tiny');
    fs.cpSync(MODEL, copy, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(copy, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(copy, 'config.json'), JSON.stringify({ ...cfg, max_position_embeddings: 16 }));
    const text = write(tmpDir(), 'eval.txt', fs.readFileSync(path.join(TEXT, 'eval.txt'), 'utf8').slice(0, 1000));
    const r = await moe([
      'eval',
      copy,
      '--data',
      text,
      '--seq-len',
      '32',
      '--max-tokens',
      '64',
      '--backend',
      'ref',
      '--json',
    ]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).windows).toBe(2);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('moe: '))).toEqual([
      "moe: warning: --seq-len 32 is above the model's max_position_embeddings (16): positions past 16 were never trained, so the figures will not reflect the model; use windows of at most 16 tokens",
    ]);
  });
});

describe('--dry-run writes nothing', () => {
  test('run: which steps would run and which would be reused', async () => {
    const dir = tmpDir();
    const out = path.join(dir, 'out');
    const file = write(
      dir,
      'recipe.yaml',
      `model: ${MODEL}\noutput: ${out}\nsteps:\n  - quantize: { bits: 8, method: rtn }\n`,
    );
    const before = tree(dir);
    const plan = await run(file, quiet, { dryRun: true });
    expect(plan.dry_run).toBe(true);
    expect(plan.steps.map((s) => [s.skipped, s.detail])).toEqual([[false, 'would run']]);
    expect(tree(dir)).toEqual(before);
    expect(fs.existsSync(out)).toBe(false);

    const first = await run(file, quiet);
    fs.writeFileSync(file, `${fs.readFileSync(file, 'utf8')}  - quantize: { format: gguf, type: q8_0 }\n`);
    const after = tree(dir);
    const r = await moe(['run', file, '--dry-run', '--report-html', path.join(dir, 'r.html')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        'dry run: nothing written',
        'step  kind        line  plan',
        `   1  quantize       4  reuse ${path.join(out, '01-quantize')} (${first.steps[0].detail})`,
        `   2  quantize       5  would run → ${path.join(out, '02-quantize')}`,
        `would write the report ${path.join(dir, 'r.html')}`,
        '',
      ].join('\n'),
    );
    expect(tree(dir)).toEqual(after);

    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('bits: 8', 'bits: 4'));
    const j = await moe(['run', file, '--dry-run', '--json']);
    expect(j.code).toBe(0);
    const report = JSON.parse(j.stdout);
    expect(report.dry_run).toBe(true);
    expect(report.steps.map((s: { skipped: boolean; detail: string }) => [s.skipped, s.detail])).toEqual([
      [false, 'would run again (options or inputs changed)'],
      [false, 'would run'],
    ]);
    expect(tree(dir)).toEqual(after);
    const fresh = await run(file, quiet, { dryRun: true, fresh: true });
    expect(fresh.steps.map((s) => s.detail)).toEqual(['would run again (options or inputs changed)', 'would run']);
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('bits: 4', 'bits: 8'));
    expect((await run(file, quiet, { dryRun: true, fresh: true })).steps[0].detail).toBe('would run again (--fresh)');
    expect(tree(dir)).toEqual(after);

    // report --dry-run on the run folder: the charts it would draw, no file.
    const rep = await moe(['report', out, '--dry-run', '--json']);
    expect(rep.code).toBe(0);
    const x = JSON.parse(rep.stdout);
    expect(x.dry_run).toBe(true);
    expect(x.file).toBe(path.join(out, 'report.html'));
    expect(x.bytes).toBeGreaterThan(1000);
    expect(tree(dir)).toEqual(after);
  }, 60_000);

  test('assemble: the parts, layers and output, with the bytes the real run writes', async () => {
    const work = tmpDir();
    const model = await makeSynth('mixtral', path.join(work, 'model'));
    const parts = [path.join(work, 'b'), path.join(work, 'a')];
    await quantize({ model, output: parts[0], bits: 4, method: 'rtn', groupSize: 32, layers: [1, 1] }, quiet);
    await quantize({ model, output: parts[1], bits: 4, method: 'rtn', groupSize: 32, layers: [0, 0] }, quiet);
    const before = tree(work);
    const dest = path.join(work, 'joined');
    const dry = await moe(['assemble', ...parts, '-o', dest, '--dry-run']);
    expect(dry.code).toBe(0);
    const lines = dry.stdout.trim().split('\n');
    expect(lines[0]).toMatch(
      new RegExp(`^dry run: would write ${dest}: 2 parts, 2 layers, \\d+ tensors, [\\d.]+ MB \\(nothing written\\)$`),
    );
    expect(lines.slice(1)).toEqual([`  layers 0-0  ${parts[1]}`, `  layers 1-1  ${parts[0]}`]);
    expect(tree(work)).toEqual(before);
    const plan = await assemble(parts, { output: dest, dryRun: true }, quiet);
    const real = await assemble(parts, { output: dest }, quiet);
    expect([plan.tensors, plan.bytes]).toEqual([real.tensors, real.bytes]);
    expect(plan.plan).toEqual(real.plan);
  });

  test('synth: the config summary, tensors and bytes it would write', async () => {
    const work = tmpDir();
    const dest = path.join(work, 'm');
    const dry = await moe(['synth', '--arch', 'qwen3_moe', '--set', 'num_hidden_layers=3', '-o', dest, '--dry-run']);
    expect(dry.code).toBe(0);
    expect(listDir(work)).toEqual([]);
    const real = await synthesize({ config: { ...PRESETS.qwen3_moe, num_hidden_layers: 3 }, output: dest }, quiet);
    const on = fs
      .readdirSync(dest)
      .filter((f) => f.endsWith('.safetensors'))
      .reduce((s, f) => s + fs.statSync(path.join(dest, f)).size, 0);
    expect(real.bytes).toBeLessThan(on); // tensor bytes; the file adds its header
    expect(dry.stdout).toBe(
      `dry run: would write ${dest}: qwen3_moe, 3 layers, ${PRESETS.qwen3_moe.num_experts} experts, hidden 64, F32: ${real.tensors} tensors in 1 shard(s), ${(real.bytes / 1e6).toFixed(2)} MB (nothing written)\n`,
    );
    const j = JSON.parse(
      (await moe(['synth', '--arch', 'qwen3_moe', '-o', path.join(work, 'n'), '--dry-run', '--json'])).stdout,
    );
    expect(j).toMatchObject({ dry_run: true, model_type: 'qwen3_moe', layers: 2 });
    expect(fs.existsSync(path.join(work, 'n'))).toBe(false);
  });
});
