/**
 * Data loss must never happen (issue 16): --force replaces only a folder holding moe-output.json (or an empty one)
 * and only a file moe wrote (a GGUF whose moe.writer names moe, a report with moe's generator meta); an output that
 * is, holds or lies inside an input of the same command is a usage error before any work, --force or not. The two
 * repros of the issue run through the CLI and must leave every byte of the folders as it was.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { convert } from '../../src/commands/convert';
import { evalCommand } from '../../src/commands/eval';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { assemble } from '../../src/commands/assemble';
import { UsageError } from '../../src/errors';
import { exportGguf } from '../../src/commands/gguf';
import { readGguf } from '../../src/io/gguf-reader';
import { GgufWriter } from '../../src/gguf/writer';
import { checkFileDestination } from '../../src/io/output';
import { GGUF_WRITER_KEY, isMoeFile, isMoeFolder, OUTPUT_MARKER } from '../../src/io/ownership';
import { VERSION } from '../../src/version';
import { writeReport } from '../../src/report/report';
import { listDir, makeSynth, quiet, ROOT, runMain, tmpDir } from '../helpers';

const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');
const CALIB = path.join(ROOT, 'fixtures', 'text', 'calib.txt');

/** sha256 of every file under `dir`, by relative path (symlinks as their target text). */
function hashes(dir: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  const full = path.join(dir, rel);
  const st = fs.lstatSync(full);
  if (st.isSymbolicLink()) out[rel] = `link:${fs.readlinkSync(full)}`;
  else if (st.isDirectory())
    for (const name of fs.readdirSync(full).sort()) Object.assign(out, hashes(dir, path.join(rel, name)));
  else out[rel] = createHash('sha256').update(fs.readFileSync(full)).digest('hex');
  return out;
}

const marker = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, OUTPUT_MARKER), 'utf8'));

let model: string; // a small synth qwen3_moe
let ids: string; // pre-tokenized data
let stats: string; // calibration of `model`
let work: string;

beforeAll(async () => {
  work = tmpDir('moe-force-');
  model = await makeSynth('qwen3_moe', path.join(work, 'model'));
  ids = path.join(work, 'ids.json');
  fs.writeFileSync(
    ids,
    JSON.stringify([0, 1].map((w) => Array.from({ length: 64 }, (_, i) => (i * 7 + w * 13) % 128))),
  );
  stats = path.join(work, 'stats');
  await calibrate({ model, output: stats, data: ids, seqLen: 64, backend: 'ref' }, quiet);
}, 60_000);

describe("the issue's repros leave the folders byte-identical (CLI, exit 2)", () => {
  test("calibrate -o a copied model with the user's notes, --force", async () => {
    const dir = tmpDir();
    const mine = path.join(dir, 'mymodel');
    fs.cpSync(TINY, mine, { recursive: true });
    fs.writeFileSync(path.join(mine, 'notes.txt'), '');
    const before = hashes(mine);
    const r = await runMain(['calibrate', TINY, '--data', CALIB, '--max-tokens', '2048', '-o', mine, '--force']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(
      `moe: --force replaces only a folder moe wrote, and this folder holds no moe-output.json (${mine}); choose another -o (delete the folder by hand if it is yours to lose)`,
    );
    expect(hashes(mine)).toEqual(before);
    expect(listDir(dir)).toEqual(['mymodel']); // no temporary folder beside it
  });

  test('quantize self --bits 4 -o self --force', async () => {
    const dir = tmpDir();
    const self = path.join(dir, 'self');
    fs.cpSync(TINY, self, { recursive: true });
    const before = hashes(self);
    const r = await runMain(['quantize', 'self', '--bits', '4', '-o', 'self', '--force'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(
      `moe: -o is MODEL ${self}, an input of this command (${self}); write -o outside every input; --force never replaces an input`,
    );
    expect(hashes(self)).toEqual(before);
    expect(listDir(dir)).toEqual(['self']);
  });
});

describe('an output is never an input of the same command (before any work, --force or not)', () => {
  const refused = async (p: Promise<unknown>, message: RegExp) => {
    const e = await p.then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toMatch(message);
  };

  test('-o inside the model, the model inside -o, -o the stats, -o a link to the model', async () => {
    const before = hashes(model);
    const parent = path.dirname(model);
    await refused(
      quantize({ model, output: path.join(model, 'q4'), bits: 4, force: true }, quiet),
      /^-o lies inside MODEL /,
    );
    await refused(convert({ model, output: parent, force: true }, quiet), /^-o contains MODEL /);
    await refused(
      prune({ model, stats, method: 'frequency', keep: 4, output: stats, force: true }, quiet),
      /^-o is --stats /,
    );
    const link = path.join(tmpDir(), 'link');
    fs.symlinkSync(model, link);
    await refused(convert({ model, output: link, force: true }, quiet), /^-o is MODEL /);
    await refused(
      exportGguf({ model: TINY, output: path.join(TINY, 'x.gguf'), force: true }, quiet),
      /^-o lies inside MODEL /,
    );
    expect(hashes(model)).toEqual(before);
    expect(fs.existsSync(path.join(TINY, 'x.gguf'))).toBe(false);
  });

  test('calibrate -o the data file; eval --dump-logits into the model; assemble -o a part', async () => {
    const copy = path.join(tmpDir(), 'ids.json');
    fs.copyFileSync(ids, copy);
    await refused(
      calibrate({ model, output: copy, data: copy, seqLen: 64, backend: 'ref', force: true }, quiet),
      /^-o is --data /,
    );
    expect(fs.readFileSync(copy, 'utf8')).toBe(fs.readFileSync(ids, 'utf8'));
    await refused(
      evalCommand(
        { model, data: ids, seqLen: 64, backend: 'ref', dumpLogits: path.join(model, 'logits.safetensors') },
        quiet,
      ),
      /^--dump-logits lies inside MODEL /,
    );
    await refused(
      evalCommand({ model, data: ids, seqLen: 64, backend: 'ref', dumpLogits: ids }, quiet),
      /^--dump-logits is --data /,
    );
    const part = path.join(tmpDir(), 'part');
    await quantize({ model, output: part, bits: 4, groupSize: 32, layers: [0, 1] }, quiet);
    const before = hashes(part);
    await refused(assemble([part], { output: part, force: true }, quiet), /^-o is PART /);
    expect(hashes(part)).toEqual(before);
  });

  test('a recipe whose output is its model, or holds its data: exit 2 before any step runs (CLI)', async () => {
    const dir = tmpDir();
    const m = path.join(dir, 'm');
    fs.cpSync(model, m, { recursive: true });
    const before = hashes(m);
    const recipe = path.join(dir, 'r.yaml');
    fs.writeFileSync(
      recipe,
      `model: m\noutput: m\nbackend: ref\nsteps:\n  - calibrate: { data: ${ids}, seq_len: 64 }\n`,
    );
    let r = await runMain(['run', recipe]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(
      `moe: r.yaml line 2: the output folder ${m} is the model ${m}, an input of the recipe (${recipe}); choose an output folder apart from the model and the data`,
    );
    expect(hashes(m)).toEqual(before);
    // The data inside the output folder (the output's steps replace their folders).
    fs.mkdirSync(path.join(dir, 'out'));
    fs.copyFileSync(ids, path.join(dir, 'out', 'ids.json'));
    fs.writeFileSync(
      recipe,
      `model: m\noutput: out\nbackend: ref\nsteps:\n  - calibrate: { data: out/ids.json, seq_len: 64 }\n`,
    );
    r = await runMain(['run', recipe]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /line 5: the output folder .*out contains the data of "calibrate" .*ids\.json, an input of the recipe/,
    );
    expect(listDir(path.join(dir, 'out'))).toEqual(['ids.json']);
    // --report-html over the data file, and over a page moe did not write: refused before any step.
    fs.writeFileSync(
      recipe,
      `model: m\noutput: run\nbackend: ref\nsteps:\n  - calibrate: { data: ${ids}, seq_len: 64 }\n`,
    );
    r = await runMain(['run', recipe, '--report-html', ids]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--report-html is the data of "calibrate"/);
    const page = path.join(dir, 'page.html');
    fs.writeFileSync(page, '<html><head><title>mine</title></head></html>');
    r = await runMain(['run', recipe, '--report-html', page]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--force replaces only a file moe wrote/);
    expect(fs.readFileSync(page, 'utf8')).toBe('<html><head><title>mine</title></head></html>');
    expect(fs.existsSync(path.join(dir, 'run'))).toBe(false);
  });
});

describe('--force replaces what moe wrote, and only that', () => {
  test('calibrate, prune, quantize and convert replace their own folders; each holds the marker', async () => {
    const dir = tmpDir();
    const cases: [string, (out: string, force: boolean) => Promise<unknown>][] = [
      [
        'calibrate',
        (output, force) => calibrate({ model, output, data: ids, seqLen: 64, backend: 'ref', force }, quiet),
      ],
      ['prune', (output, force) => prune({ model, stats, method: 'frequency', keep: 4, output, force }, quiet)],
      ['quantize', (output, force) => quantize({ model, output, bits: 4, groupSize: 32, force }, quiet)],
      ['convert', (output, force) => convert({ model, output, dtype: 'bf16', force }, quiet)],
    ];
    for (const [command, write] of cases) {
      const out = path.join(dir, command);
      await write(out, false);
      expect(marker(out)).toEqual({
        tool: 'moe',
        version: VERSION,
        command,
        note: 'written by moe; --force may replace this folder',
      });
      const first = hashes(out);
      fs.writeFileSync(path.join(out, 'scratch.txt'), 'moe may remove this');
      await write(out, true);
      expect(hashes(out)).toEqual(first); // replaced whole, the same bytes again
    }
    expect(listDir(dir)).toEqual(['calibrate', 'convert', 'prune', 'quantize']);
  });

  test('a folder of an older moe (a record but no marker) is refused, untouched; an empty folder is replaced', async () => {
    const dir = tmpDir();
    const old = path.join(dir, 'old');
    fs.cpSync(model, old, { recursive: true });
    fs.rmSync(path.join(old, OUTPUT_MARKER)); // synth wrote one
    fs.writeFileSync(path.join(old, 'moe-compression.json'), '{"tool":"moe"}\n');
    const before = hashes(old);
    const err = await quantize({ model, output: old, bits: 4, groupSize: 32, force: true }, quiet).catch((e) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect(err.line()).toBe(
      `--force replaces only a folder moe wrote, and this folder holds no moe-output.json (${old}); it may come from a moe older than the marker: check it and delete it by hand, or choose another -o`,
    );
    expect(hashes(old)).toEqual(before);
    // A marker that is not moe's JSON does not count.
    fs.writeFileSync(path.join(old, OUTPUT_MARKER), 'not json');
    expect(isMoeFolder(old)).toBe(false);
    // An empty folder is replaced.
    const empty = path.join(dir, 'empty');
    fs.mkdirSync(empty);
    await convert({ model, output: empty, force: true }, quiet);
    expect(marker(empty).command).toBe('convert');
  });

  test('a .gguf: replaced when moe wrote it, refused when another program did', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'model.gguf');
    // Through the CLI: the compiled Q8_0 encoder is several times faster than jest's transformed one.
    expect((await runMain(['quantize', TINY, '--format', 'gguf', '--type', 'q8_0', '-o', file])).code).toBe(0);
    expect(readGguf(file).metadata.get(GGUF_WRITER_KEY)).toBe(`moe ${VERSION}`);
    const first = hashes(dir);
    expect((await runMain(['quantize', TINY, '--format', 'gguf', '--type', 'q8_0', '-o', file, '--force'])).code).toBe(
      0,
    );
    expect(hashes(dir)).toEqual(first);
    // A valid GGUF without moe.writer (another converter), and a file that is not GGUF at all.
    const foreign = path.join(dir, 'theirs.gguf');
    const w = new GgufWriter(
      foreign,
      [
        ['general.architecture', { type: 'string', value: 'llama' }],
        ['general.quantized_by', { type: 'string', value: 'moe' }],
      ],
      [{ name: 't', shape: [4], type: 0, bytes: 16 }],
    );
    w.write('t', new Uint8Array(16));
    w.finish();
    const text = path.join(dir, 'notes.gguf');
    fs.writeFileSync(text, 'mine');
    for (const f of [foreign, text]) {
      const before = fs.readFileSync(f);
      await expect(exportGguf({ model: TINY, output: f, type: 'Q8_0', force: true }, quiet)).rejects.toThrow(
        /--force replaces only a file moe wrote/,
      );
      expect(fs.readFileSync(f).equals(before)).toBe(true);
    }
    expect(listDir(dir)).toEqual(['model.gguf', 'notes.gguf', 'theirs.gguf']);
  });

  test('the GGUF writer key is found after a large vocabulary', () => {
    const file = path.join(tmpDir(), 'big.gguf');
    const tokens = Array.from({ length: 2000 }, (_, i) => `${i}`.padEnd(700, 'x')); // 1.4 MB of strings: more than one 1 MiB read
    const w = new GgufWriter(
      file,
      [
        ['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens }],
        ['tokenizer.ggml.scores', { type: 'array', of: 'f32', value: tokens.map(() => 0) }],
        [GGUF_WRITER_KEY, { type: 'string', value: 'moe 9.9.9' }],
      ],
      [],
    );
    w.finish();
    expect(isMoeFile(file)).toBe(true);
    const other = path.join(path.dirname(file), 'other.gguf');
    const v = new GgufWriter(
      other,
      [
        ['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens }],
        [GGUF_WRITER_KEY, { type: 'string', value: 'llama.cpp' }],
      ],
      [],
    );
    v.finish();
    expect(isMoeFile(other)).toBe(false);
  });

  test("a report: replaced when it carries moe's generator meta, refused otherwise", async () => {
    const dir = tmpDir();
    const run = path.join(dir, 'run');
    fs.mkdirSync(run);
    fs.writeFileSync(path.join(run, 'recipe.json'), JSON.stringify({ source: 'r.yaml', model: 'm', steps: [] }));
    const file = path.join(dir, 'report.html');
    await writeReport(run, file);
    expect(fs.readFileSync(file, 'utf8')).toContain(`<meta name="generator" content="moe ${VERSION}">`);
    await writeReport(run, file, { force: true });
    const theirs = path.join(dir, 'theirs.html');
    fs.writeFileSync(theirs, '<!doctype html><html><head><meta name="generator" content="Hugo 0.1"></head></html>');
    await expect(writeReport(run, theirs, { force: true })).rejects.toThrow(/--force replaces only a file moe wrote/);
    expect(fs.readFileSync(theirs, 'utf8')).toContain('Hugo');
    expect(() => checkFileDestination(theirs, false)).toThrow(/already exists/);
  });

  test('quantize --report: an existing file is refused without --force, a file moe did not write even with it', async () => {
    const dir = tmpDir();
    const notes = path.join(dir, 'notes.json');
    fs.writeFileSync(notes, '{"mine": true}\n');
    const base = { model: TINY, bits: 4, method: 'rtn' as const, dryRun: true };
    await expect(quantize({ ...base, output: path.join(dir, 'q1'), report: notes }, quiet)).rejects.toThrow(
      /already exists/,
    );
    await expect(
      quantize({ ...base, output: path.join(dir, 'q2'), report: notes, force: true }, quiet),
    ).rejects.toThrow(/--force replaces only a file moe wrote/);
    expect(fs.readFileSync(notes, 'utf8')).toBe('{"mine": true}\n');
    const ours = path.join(dir, 'report.json');
    await quantize({ ...base, output: path.join(dir, 'q3'), report: ours }, quiet);
    expect(JSON.parse(fs.readFileSync(ours, 'utf8')).tool).toBe('moe');
    expect(isMoeFile(ours)).toBe(true);
    await quantize({ ...base, output: path.join(dir, 'q4'), report: ours, force: true }, quiet);
    expect(JSON.parse(fs.readFileSync(ours, 'utf8')).output).toBe(path.join(dir, 'q4'));
  });

  test('moe run writes the marker in its output and step folders, and refuses a folder it did not write (CLI)', async () => {
    const dir = tmpDir();
    const out = path.join(dir, 'out');
    const recipe = path.join(dir, 'r.yaml');
    fs.writeFileSync(
      recipe,
      `model: ${model}\noutput: out\nbackend: ref\nsteps:\n  - calibrate: { data: ${ids}, seq_len: 64 }\n  - eval: { data: ${ids}, seq_len: 64 }\n`,
    );
    const r = await runMain(['run', recipe]);
    expect(r.code).toBe(0);
    expect([
      marker(out).command,
      marker(path.join(out, '01-calibrate')).command,
      marker(path.join(out, '02-eval')).command,
    ]).toEqual(['run', 'calibrate', 'run (eval step)']);
    expect((await runMain(['run', recipe, '--fresh'])).code).toBe(0); // replaces its own step folders
    const mine = path.join(dir, 'mine');
    fs.mkdirSync(mine);
    fs.writeFileSync(path.join(mine, 'keep.txt'), 'mine');
    fs.writeFileSync(
      recipe,
      `model: ${model}\noutput: mine\nbackend: ref\nsteps:\n  - calibrate: { data: ${ids}, seq_len: 64 }\n`,
    );
    const refused = await runMain(['run', recipe]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/holds no moe-output\.json/);
    expect(listDir(mine)).toEqual(['keep.txt']);
  });
});
