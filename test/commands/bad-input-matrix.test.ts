/**
 * Bad inputs across the writing commands (issue 11): each gives the exit code of the README's Conventions
 * (2 usage, 3 bad input), one error line `moe: …` on stderr (after any progress lines), no stack trace, and nothing
 * at the destination: the destination's parent is listed, so a temporary folder or file left beside it fails.
 *
 * Distinct bad inputs, with test/commands/bad-inputs.test.ts (15 there: a truncated shard, a header length beyond
 * the file, a header length above the cap, invalid header JSON, offsets outside the data, overlapping offsets, an
 * index naming a shard outside the folder, a shard symlinked out of the folder, only pickle files, no config.json,
 * a dense model_type, an unknown model_type, a missing expert tensor, a config that does not match the weights, an
 * existing destination without --force / with --force on a folder that is not moe's, for convert).
 * Here (33, by the command that meets them):
 *   1 an index naming a tensor no shard holds (prune)        2 an index naming a missing shard file (merge)
 *   3 a tensor in a shard but not in the index (quantize)    4 the same tensor in two shards (calibrate)
 *   5 an index whose shard name is absolute (verify)         6 an index that is not valid JSON (verify)
 *   7 config.json symlinked out of the folder (prune)
 *   8 tokenizer.json symlinked out of the folder (quantize, eval)
 *   9 a dtype whose byte length does not match (merge)      10 an unknown dtype (eval)
 *  11 a NaN weight (quantize packed)                        12 an Inf weight (quantize --format gguf)
 *  13-15 stats from another model (prune, merge, quantize)  16 a corrupt stats.json (prune)
 *  17 a truncated stats.safetensors (quantize)              18 a model folder given as --stats (merge)
 *  19 a recipe with a wrong type (keep: four)               20 a recipe with an unknown step
 *  21 a recipe with an unknown option                       22 a recipe whose model path is missing
 *  23 token ids outside the vocabulary (eval)               24 assemble: a part of another model
 *  25 assemble: a folder that is not a part                 26 assemble: a layer no part holds
 *  27 an existing destination without --force (every writing command but convert, covered there)
 *  28 --force on a folder moe did not write (every command with --force but convert)
 *  29 a destination whose parent is a regular file (ENOTDIR; every writing command, moe run included)
 *  30 a destination under /proc (cannot be created)
 *  31 a destination in a read-only folder (chmod; skipped as root)
 *  32 a full disk: a file size limit (ulimit -f → EFBIG)
 *  33 a full disk: a 256 KB tmpfs (ENOSPC; skipped when mount is not permitted)
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CliResult, listDir, makeSynth, ROOT, runCli, runMain, tmpDir } from '../helpers';

const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');
const INDEX = 'model.safetensors.index.json';
const PROGRESS = /^[^:]+: \d+% \(/; // plain progress lines (stderr is not a TTY)

/** Exit code, one error line (the last, after any progress lines), no stack trace. */
function expectRefused(r: CliResult, code: number, message: RegExp): void {
  const lines = r.stderr.trimEnd().split('\n');
  const errors = lines.filter((l) => !PROGRESS.test(l));
  expect({ code: r.code, errors }).toEqual({ code, errors: [expect.stringMatching(/^moe: /)] });
  expect(lines[lines.length - 1]).toMatch(message);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

/** moe through bash, under `ulimit -f KB` (a file size limit: a write past it fails with EFBIG). */
function runLimited(kb: number, args: string[]): CliResult {
  const r = spawnSync(
    'bash',
    ['-c', `ulimit -f ${kb}; exec "$0" "$@"`, process.execPath, path.join(ROOT, 'bin', 'moe.js'), ...args],
    { cwd: ROOT, encoding: 'utf8', env: { ...process.env, CI: 'true' } },
  );
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a raw safetensors header, edited freely by the tests
function readShard(file: string): { header: Record<string, any>; data: Buffer } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a raw safetensors header, edited freely by the tests
function writeShard(file: string, header: Record<string, any>, data: Uint8Array): void {
  const text = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  fs.writeFileSync(file, Buffer.concat([len, text, data]));
}

const editIndex = (dir: string, edit: (wm: Record<string, string>) => void) => {
  const j = JSON.parse(fs.readFileSync(path.join(dir, INDEX), 'utf8'));
  edit(j.weight_map);
  fs.writeFileSync(path.join(dir, INDEX), JSON.stringify(j));
};

const EXPERT = 'model.layers.0.mlp.experts.1.down_proj.weight';

/** Writes a non-finite value into the 3rd element of a tensor (F32, BF16 or F16). */
function poison(file: string, tensor: string, value: number): void {
  const { header } = readShard(file);
  const buf = fs.readFileSync(file);
  const t = header[tensor];
  const at = 8 + Number(buf.readBigUInt64LE(0)) + t.data_offsets[0];
  if (t.dtype === 'F32') buf.writeFloatLE(value, at + 8);
  else if (t.dtype === 'BF16') buf.writeUInt16LE(Number.isNaN(value) ? 0x7fc0 : 0x7f80, at + 4);
  else if (t.dtype === 'F16') buf.writeUInt16LE(Number.isNaN(value) ? 0x7e00 : 0x7c00, at + 4);
  else throw new Error(`poison: ${t.dtype}`);
  fs.writeFileSync(file, buf);
}

let model: string; // qwen3_moe, one shard
let sharded: string; // the same model in 7 shards with an index
let other: string; // another model (4 experts)
let ids: string; // pre-tokenized data
let stats: string;
let otherStats: string;
let parts: string[]; // quantize --layers 0-0 and 1-1 of `model`
let otherPart: string; // --layers 1-1 of `other`
let runDir: string; // a moe run output folder

async function cli(args: string[]): Promise<CliResult> {
  const r = await runMain(args);
  if (r.code !== 0) throw new Error(`setup failed: moe ${args.join(' ')}\n${r.stderr}`);
  return r;
}

beforeAll(async () => {
  const shared = tmpDir('moe-bad-matrix-');
  model = await makeSynth('qwen3_moe', path.join(shared, 'model'));
  sharded = await makeSynth('qwen3_moe', path.join(shared, 'sharded'), { maxShardBytes: 100_000 });
  other = await makeSynth('qwen3_moe', path.join(shared, 'other'), { set: { num_experts: 4 } });
  ids = path.join(shared, 'ids.json');
  fs.writeFileSync(
    ids,
    JSON.stringify([0, 1, 2, 3].map((w) => Array.from({ length: 64 }, (_, i) => (i * 7 + w * 13) % 128))),
  );
  stats = path.join(shared, 'stats');
  otherStats = path.join(shared, 'other-stats');
  await cli(['calibrate', model, '--data', ids, '--seq-len', '64', '--backend', 'ref', '-o', stats]);
  await cli(['calibrate', other, '--data', ids, '--seq-len', '64', '--backend', 'ref', '-o', otherStats]);
  parts = ['0-0', '1-1'].map((l) => path.join(shared, `part-${l}`));
  for (const [i, p] of parts.entries())
    await cli(['quantize', model, '--bits', '4', '--group-size', '32', '--layers', `${i}-${i}`, '-o', p]);
  otherPart = path.join(shared, 'other-part');
  await cli(['quantize', other, '--bits', '4', '--group-size', '32', '--layers', '1-1', '-o', otherPart]);
  runDir = path.join(shared, 'run');
  const recipe = path.join(shared, 'recipe.yaml');
  fs.writeFileSync(
    recipe,
    `model: ${model}\noutput: ${runDir}\nbackend: ref\nsteps:\n  - calibrate: { data: ${ids}, seq_len: 64 }\n`,
  );
  await cli(['run', recipe]);
}, 120_000);

/** A copy of a model inside `work`. */
function copy(src: string, work: string, name = 'model'): string {
  const dir = path.join(work, name);
  fs.cpSync(src, dir, { recursive: true });
  return dir;
}

/** Each case builds its inputs in `work` and returns the arguments; the destination is `work/out`. */
type Case = [
  name: string,
  code: number,
  message: RegExp,
  setup: (work: string, out: string) => string[] | Promise<string[]>,
];

const recipe = (work: string, body: string) => {
  const f = path.join(work, 'recipe.yaml');
  fs.writeFileSync(f, body.replace(/MODEL/g, model).replace(/IDS/g, ids));
  return f;
};
const RECIPE_HEAD = 'model: MODEL\noutput: out\nsteps:\n  - calibrate: { data: IDS, seq_len: 64 }\n';

const CASES: Case[] = [
  [
    'an index naming a tensor no shard holds (prune)',
    3,
    /the index lists tensor "model\.layers\.0\.mlp\.experts\.99\.up_proj\.weight" in .*, but no shard holds it/,
    (work, out) => {
      const m = copy(sharded, work);
      editIndex(m, (wm) => (wm['model.layers.0.mlp.experts.99.up_proj.weight'] = Object.values(wm)[0]));
      return ['prune', m, '--stats', stats, '--method', 'frequency', '--keep', '4', '-o', out];
    },
  ],
  [
    'an index naming a shard file that is missing (merge)',
    3,
    /shard "model-00002-of-00007\.safetensors" does not exist/,
    (work, out) => {
      const m = copy(sharded, work);
      fs.rmSync(path.join(m, 'model-00002-of-00007.safetensors'));
      return ['merge', m, '--stats', stats, '--method', 'average', '--keep', '4', '-o', out];
    },
  ],
  [
    'a tensor in a shard but not in the index (quantize)',
    3,
    /tensor "model\.embed_tokens\.weight" is in a shard but not in the index/,
    (work, out) => {
      const m = copy(sharded, work);
      editIndex(m, (wm) => delete wm['model.embed_tokens.weight']);
      return ['quantize', m, '--bits', '4', '-o', out];
    },
  ],
  [
    'the same tensor in two shards (calibrate)',
    3,
    /tensor "model\.embed_tokens\.weight" is stored twice/,
    (work, out) => {
      const m = copy(sharded, work);
      const first = readShard(path.join(m, 'model-00001-of-00007.safetensors'));
      const t = first.header['model.embed_tokens.weight'];
      const bytes = first.data.subarray(t.data_offsets[0], t.data_offsets[1]);
      const second = path.join(m, 'model-00002-of-00007.safetensors');
      const { header, data } = readShard(second);
      header['model.embed_tokens.weight'] = {
        dtype: t.dtype,
        shape: t.shape,
        data_offsets: [data.length, data.length + bytes.length],
      };
      writeShard(second, header, Buffer.concat([data, bytes]));
      return ['calibrate', m, '--data', ids, '--seq-len', '64', '--backend', 'ref', '-o', out];
    },
  ],
  [
    'an index whose shard names are absolute (verify)',
    3,
    /shard "\/.*model-0000\d-of-00007\.safetensors" points outside the model folder/,
    (work) => {
      const m = copy(sharded, work);
      editIndex(m, (wm) => {
        for (const k of Object.keys(wm)) wm[k] = path.join(m, wm[k]);
      });
      return ['verify', m];
    },
  ],
  [
    'an index that is not valid JSON (verify)',
    3,
    /index is not valid JSON/,
    (work) => {
      const m = copy(sharded, work);
      fs.writeFileSync(path.join(m, INDEX), '{"weight_map": {');
      return ['verify', m];
    },
  ],
  [
    'config.json symlinked out of the model folder (prune)',
    3,
    /file "config\.json" resolves outside the model folder/,
    (work, out) => {
      const m = copy(model, work);
      const outside = path.join(tmpDir(), 'config.json');
      fs.renameSync(path.join(m, 'config.json'), outside);
      fs.symlinkSync(outside, path.join(m, 'config.json'));
      return ['prune', m, '--stats', stats, '--method', 'frequency', '--keep', '4', '-o', out];
    },
  ],
  [
    'tokenizer.json symlinked out of the model folder (quantize)',
    3,
    /file "tokenizer\.json" resolves outside the model folder/,
    (work, out) => {
      const m = copy(TINY, work);
      const outside = path.join(tmpDir(), 'tokenizer.json');
      fs.renameSync(path.join(m, 'tokenizer.json'), outside);
      fs.symlinkSync(outside, path.join(m, 'tokenizer.json'));
      return ['quantize', m, '--bits', '8', '-o', out];
    },
  ],
  [
    'tokenizer.json symlinked out of the model folder (eval on text)',
    3,
    /file "tokenizer\.json" resolves outside the model folder/,
    (work) => {
      const m = copy(TINY, work);
      const outside = path.join(tmpDir(), 'tokenizer.json');
      fs.renameSync(path.join(m, 'tokenizer.json'), outside);
      fs.symlinkSync(outside, path.join(m, 'tokenizer.json'));
      return [
        'eval',
        m,
        '--data',
        path.join(ROOT, 'fixtures', 'text', 'calib.txt'),
        '--max-tokens',
        '128',
        '--seq-len',
        '64',
        '--backend',
        'ref',
      ];
    },
  ],
  [
    'a dtype whose byte length does not match the data (merge)',
    3,
    /8192 bytes for F16\[64,32\], which needs 4096/,
    (work, out) => {
      const m = copy(model, work);
      const f = path.join(m, 'model.safetensors');
      const { header, data } = readShard(f);
      header[EXPERT].dtype = 'F16';
      writeShard(f, header, data);
      return ['merge', m, '--stats', stats, '--method', 'average', '--keep', '4', '-o', out];
    },
  ],
  [
    'an unknown dtype (eval)',
    3,
    /unknown dtype "Q9"/,
    (work) => {
      const m = copy(model, work);
      const f = path.join(m, 'model.safetensors');
      const { header, data } = readShard(f);
      header[EXPERT].dtype = 'Q9';
      writeShard(f, header, data);
      return ['eval', m, '--data', ids, '--seq-len', '64', '--backend', 'ref'];
    },
  ],
  [
    'a NaN weight (quantize, packed)',
    3,
    /tensor model\.layers\.0\.mlp\.experts\.1\.down_proj\.weight holds a NaN value/,
    (work, out) => {
      const m = copy(model, work);
      poison(path.join(m, 'model.safetensors'), EXPERT, NaN);
      return ['quantize', m, '--bits', '4', '--group-size', '32', '-o', out];
    },
  ],
  [
    'an Inf weight (quantize --format gguf to a .gguf file)',
    3,
    /tensor model\.layers\.0\.mlp\.experts\.1\.down_proj\.weight holds an infinite value/,
    (work, out) => {
      const m = copy(TINY, work);
      poison(path.join(m, 'model.safetensors'), EXPERT, Infinity);
      return ['quantize', m, '--format', 'gguf', '--type', 'q8_0', '-o', `${out}.gguf`];
    },
  ],
  [
    'a NaN weight (quantize --format gguf to a folder)',
    3,
    /holds a NaN value/,
    (work, out) => {
      const m = copy(TINY, work);
      poison(path.join(m, 'model.safetensors'), EXPERT, NaN);
      return ['quantize', m, '--format', 'gguf', '--type', 'q4_k', '-o', out];
    },
  ],
  [
    'stats from another model (prune)',
    3,
    /the stats were made from another model/,
    (_work, out) => ['prune', model, '--stats', otherStats, '--method', 'frequency', '--keep', '4', '-o', out],
  ],
  [
    'stats from another model (merge)',
    3,
    /the stats were made from another model/,
    (_work, out) => ['merge', model, '--stats', otherStats, '--method', 'msmoe', '--keep', '4', '-o', out],
  ],
  [
    'stats from another model (quantize)',
    3,
    /the stats were made from another model/,
    (_work, out) => ['quantize', model, '--bits', '4', '--stats', otherStats, '-o', out],
  ],
  [
    'a corrupt stats.json (prune)',
    3,
    /stats\.json is not valid JSON/,
    (work, out) => {
      const s = copy(stats, work, 'stats');
      fs.writeFileSync(path.join(s, 'stats.json'), '{"format": ');
      return ['prune', model, '--stats', s, '--method', 'frequency', '--keep', '4', '-o', out];
    },
  ],
  [
    'a truncated stats.safetensors (quantize)',
    3,
    /stats\.safetensors/,
    (work, out) => {
      const s = copy(stats, work, 'stats');
      const f = path.join(s, 'stats.safetensors');
      fs.truncateSync(f, fs.statSync(f).size - 64);
      return ['quantize', model, '--bits', '4', '--stats', s, '-o', out];
    },
  ],
  [
    'a model folder given as --stats (merge)',
    3,
    /not a moe stats folder \(no stats\.json\)/,
    (_work, out) => ['merge', model, '--stats', model, '--method', 'average', '--keep', '4', '-o', out],
  ],
  [
    'a recipe with a wrong type (keep: four)',
    2,
    /recipe\.yaml line 5: prune\.keep must be an integer, not "four"/,
    (work) => ['run', recipe(work, `${RECIPE_HEAD}  - prune: { method: frequency, keep: four }\n`)],
  ],
  [
    'a recipe with an unknown step',
    2,
    /recipe\.yaml line 5: unknown step "distill"/,
    (work) => ['run', recipe(work, `${RECIPE_HEAD}  - distill: { keep: 4 }\n`)],
  ],
  [
    'a recipe with an unknown option',
    2,
    /recipe\.yaml line 5: "prune" has no option "speed"/,
    (work) => ['run', recipe(work, `${RECIPE_HEAD}  - prune: { method: frequency, keep: 4, speed: fast }\n`)],
  ],
  [
    'a recipe whose model path is missing',
    3,
    /recipe\.yaml line 1: the model folder .*nowhere does not exist/,
    (work) => ['run', recipe(work, RECIPE_HEAD.replace('MODEL', path.join(work, 'nowhere')))],
  ],
  [
    'token ids outside the vocabulary (eval)',
    3,
    /not an array of token ids below the vocabulary size 128/,
    (work) => {
      const f = path.join(work, 'ids.json');
      fs.writeFileSync(f, JSON.stringify([[1, 2, 3, 500, 4, 5]]));
      return ['eval', model, '--data', f, '--seq-len', '6', '--backend', 'ref'];
    },
  ],
  [
    'assemble: a part of another model',
    3,
    /this part was made from another model/,
    (_work, out) => ['assemble', parts[0], otherPart, '-o', out],
  ],
  [
    'assemble: a folder that is not a part',
    3,
    /not a partial output \(no moe-partial\.json\)/,
    (_work, out) => ['assemble', parts[0], model, '-o', out],
  ],
  ['assemble: a layer no part holds', 2, /no part holds layer 1/, (_work, out) => ['assemble', parts[0], '-o', out]],
];

describe('bad inputs: exit code, one line, nothing at the destination', () => {
  test.each(CASES)('%s', async (_name, code, message, setup) => {
    const work = tmpDir();
    const out = path.join(work, 'out');
    const args = await setup(work, out);
    const before = listDir(work);
    expectRefused(await runMain(args), code, message);
    expect(listDir(work)).toEqual(before); // no output, no temporary folder or file beside it
  });
});

/** The writing commands; `file`: the destination is a file (its name ends with the extension given). */
interface Writer {
  args: (dest: string) => string[];
  file?: string;
  force?: boolean;
}

const WRITERS: Record<string, Writer> = {
  calibrate: {
    args: (d) => ['calibrate', model, '--data', ids, '--seq-len', '64', '--backend', 'ref', '-o', d],
    force: true,
  },
  prune: {
    args: (d) => ['prune', model, '--stats', stats, '--method', 'frequency', '--keep', '4', '-o', d],
    force: true,
  },
  merge: {
    args: (d) => ['merge', model, '--stats', stats, '--method', 'average', '--keep', '4', '-o', d],
    force: true,
  },
  'quantize (packed)': { args: (d) => ['quantize', model, '--bits', '4', '--group-size', '32', '-o', d], force: true },
  'quantize (dequantized)': {
    args: (d) => ['quantize', model, '--bits', '4', '--group-size', '32', '--format', 'dequantized', '-o', d],
    force: true,
  },
  'quantize --format gguf (folder)': {
    args: (d) => ['quantize', TINY, '--format', 'gguf', '--type', 'q8_0', '-o', d],
    force: true,
  },
  'quantize --format gguf (.gguf file)': {
    args: (d) => ['quantize', TINY, '--format', 'gguf', '--type', 'q8_0', '-o', d],
    file: '.gguf',
    force: true,
  },
  assemble: { args: (d) => ['assemble', ...parts, '-o', d], force: true },
  synth: { args: (d) => ['synth', '--arch', 'qwen3_moe', '-o', d], force: true },
  report: { args: (d) => ['report', runDir, '-o', d], file: '.html', force: true },
  'eval --dump-logits': {
    args: (d) => ['eval', model, '--data', ids, '--seq-len', '64', '--backend', 'ref', '--dump-logits', d],
    file: '.safetensors',
  },
};
const writers = (pick: (w: Writer) => boolean) =>
  Object.entries(WRITERS).filter(([, w]) => pick(w)) as [string, Writer][];

/**
 * A recipe whose output is `dest` (moe run resumes into an existing output folder: only the unwritable cases).
 */
function runArgs(dest: string): string[] {
  const f = path.join(tmpDir(), 'recipe.yaml');
  fs.writeFileSync(
    f,
    `model: ${model}\noutput: ${dest}\nbackend: ref\nsteps:\n  - calibrate: { data: ${ids}, seq_len: 64 }\n`,
  );
  return ['run', f];
}

describe('destinations', () => {
  test.each(writers(() => true))(
    '%s: an existing destination is refused without --force and left untouched',
    async (_name, w) => {
      const work = tmpDir();
      const dest = path.join(work, `out${w.file ?? ''}`);
      if (w.file) fs.writeFileSync(dest, 'mine');
      else {
        fs.mkdirSync(dest);
        fs.writeFileSync(path.join(dest, 'keep.txt'), 'mine');
      }
      expectRefused(await runMain(w.args(dest)), 2, /already exists/);
      expect(fs.readFileSync(w.file ? dest : path.join(dest, 'keep.txt'), 'utf8')).toBe('mine');
      expect(listDir(work)).toEqual([path.basename(dest)]);
      if (!w.file) expect(listDir(dest)).toEqual(['keep.txt']);
    },
  );

  test.each(writers((w) => !!w.force))(
    '%s: --force on a folder moe did not write is refused and the folder untouched',
    async (_name, w) => {
      const work = tmpDir();
      const dest = path.join(work, `out${w.file ?? ''}`);
      fs.mkdirSync(dest);
      fs.writeFileSync(path.join(dest, 'keep.txt'), 'mine');
      expectRefused(
        await runMain([...w.args(dest), '--force']),
        2,
        /--force replaces only a folder moe wrote|exists and is not a file/,
      );
      expect(listDir(work)).toEqual([path.basename(dest)]);
      expect(listDir(dest)).toEqual(['keep.txt']);
      expect(fs.readFileSync(path.join(dest, 'keep.txt'), 'utf8')).toBe('mine');
    },
  );

  test('calibrate --force replaces a stats folder it wrote', async () => {
    const work = tmpDir();
    const dest = path.join(work, 'stats');
    fs.cpSync(stats, dest, { recursive: true });
    const r = await runMain([...WRITERS.calibrate.args(dest), '--force']);
    expect(r.stderr).not.toMatch(/^moe: /m);
    expect(r.code).toBe(0);
    expect(listDir(dest)).toEqual(['moe-output.json', 'stats.json', 'stats.safetensors']);
    expect(listDir(work)).toEqual(['stats']);
  });

  const all: [string, (dest: string) => string[], string][] = [
    ...writers(() => true).map(([n, w]) => [n, w.args, w.file ?? ''] as [string, (d: string) => string[], string]),
    ['run', runArgs, ''],
  ];

  test.each(all)('%s: a destination whose parent is a regular file is refused (exit 2)', async (_name, args, ext) => {
    const work = tmpDir();
    fs.writeFileSync(path.join(work, 'afile'), 'mine');
    expectRefused(await runMain(args(path.join(work, 'afile', `out${ext}`))), 2, /not a folder|ENOTDIR/);
    expect(listDir(work)).toEqual(['afile']);
    expect(fs.readFileSync(path.join(work, 'afile'), 'utf8')).toBe('mine');
  });

  test.each(
    all.filter(([n]) =>
      ['prune', 'quantize --format gguf (.gguf file)', 'report', 'eval --dump-logits', 'run', 'synth'].includes(n),
    ),
  )('%s: a destination under /proc cannot be created (exit 2)', async (_name, args, ext) => {
    const dest = `/proc/moe-bad-input-${process.pid}${ext}`;
    expectRefused(await runMain(args(dest)), 2, /cannot create the output/);
    expect(fs.existsSync(dest)).toBe(false);
    expect(fs.readdirSync('/proc').filter((f) => f.includes('moe'))).toEqual([]);
  });

  const asRoot = process.getuid?.() === 0;
  (asRoot ? test.skip : test)(
    'a read-only parent folder (chmod 555) is refused (not run as root: root writes anyway)',
    async () => {
      const work = tmpDir();
      const ro = path.join(work, 'ro');
      fs.mkdirSync(ro);
      fs.chmodSync(ro, 0o555);
      try {
        expectRefused(
          await runMain(WRITERS.prune.args(path.join(ro, 'out'))),
          2,
          /cannot create the output folder: EACCES/,
        );
        expectRefused(
          await runMain(WRITERS['quantize --format gguf (.gguf file)'].args(path.join(ro, 'out.gguf'))),
          2,
          /cannot create the output file: EACCES/,
        );
        expect(listDir(ro)).toEqual([]);
      } finally {
        fs.chmodSync(ro, 0o755);
      }
    },
  );
});

describe('a full disk', () => {
  // A 64 KiB file size limit: the model's 661 KB do not fit, its config and headers do.
  test.each([
    ['quantize (dequantized)', ''],
    ['merge', ''],
    ['quantize --format gguf (.gguf file)', '.gguf'],
  ])('%s under ulimit -f: one line, exit 3, the temporary output removed', (name, ext) => {
    const work = tmpDir();
    const r = runLimited(64, WRITERS[name].args(path.join(work, `out${ext}`)));
    expectRefused(r, 3, /file size limit \(ulimit -f\)/);
    expect(listDir(work)).toEqual([]);
  });

  const tmpfs = (() => {
    const probe = tmpDir();
    const ok = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', probe]).status === 0;
    if (ok) spawnSync('umount', [probe]);
    return ok;
  })();
  if (!tmpfs) console.warn('skipping the tmpfs full-disk test: mount -t tmpfs is not permitted here');
  (tmpfs ? test : test.skip)('a 256 KB tmpfs: no space left, exit 3, nothing left on it', () => {
    const disk = tmpDir();
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', disk]).status).toBe(0);
    try {
      expectRefused(runCli(WRITERS.prune.args(path.join(disk, 'out'))), 3, /no space left on the device/);
      expectRefused(
        runCli(WRITERS['quantize --format gguf (.gguf file)'].args(path.join(disk, 'out.gguf'))),
        3,
        /no space left on the device/,
      );
      expect(listDir(disk)).toEqual([]);
    } finally {
      spawnSync('umount', [disk]);
    }
  });
});
