/**
 * Each bad input gives one line on stderr naming the file, a non-zero exit, no stack trace, and nothing at
 * the destination (not even a temporary folder), for `inspect` and for a writing command (`convert`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ShardedWriter } from '../../src/io/writer';
import { architectureFor, modelTypes } from '../../src/model/registry';
import { PRESETS } from '../../src/synth/presets';
import { listDir, makeSynth, runMain, tmpDir } from '../helpers';

const SHARD = 'model.safetensors';

function setHeaderLength(file: string, n: bigint): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  fs.writeSync(fd, b, 0, 8, 0);
  fs.closeSync(fd);
}

/** Rewrites the JSON header of a shard in place (same length, padded with spaces). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a raw safetensors header, edited freely by the tests
function editHeader(file: string, edit: (h: Record<string, any>) => void): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  edit(h);
  const text = Buffer.from(JSON.stringify(h).padEnd(n, ' '));
  if (text.length !== n) throw new Error('edited header grew; test setup bug');
  text.copy(buf, 8);
  fs.writeFileSync(file, buf);
}

type Maker = (dir: string) => Promise<string>;

const CASES: [string, Maker, RegExp][] = [
  [
    'a truncated shard',
    async (dir) => {
      const f = path.join(dir, SHARD);
      fs.truncateSync(f, fs.statSync(f).size - 100);
      return SHARD;
    },
    /truncated|past the/,
  ],
  [
    'a header length beyond the file',
    async (dir) => {
      setHeaderLength(path.join(dir, SHARD), BigInt(fs.statSync(path.join(dir, SHARD)).size));
      return SHARD;
    },
    /runs past the end/,
  ],
  [
    'a header length above the cap',
    async (dir) => {
      setHeaderLength(path.join(dir, SHARD), 1n << 40n);
      return SHARD;
    },
    /above the .*cap/,
  ],
  [
    'invalid header JSON',
    async (dir) => {
      const f = path.join(dir, SHARD);
      const fd = fs.openSync(f, 'r+');
      fs.writeSync(fd, Buffer.from('}'), 0, 1, 8);
      fs.closeSync(fd);
      return SHARD;
    },
    /not valid JSON/,
  ],
  [
    'offsets outside the data',
    async (dir) => {
      editHeader(path.join(dir, SHARD), (h) => {
        const last = Object.keys(h)
          .filter((k) => k !== '__metadata__')
          .sort((a, b) => h[b].data_offsets[1] - h[a].data_offsets[1])[0];
        h[last].data_offsets[1] += 1_000_000;
        h[last].data_offsets[0] += 1_000_000 - 0; // keep the byte count consistent, move it past the end
      });
      return SHARD;
    },
    /run past the/,
  ],
  [
    'overlapping offsets',
    async (dir) => {
      editHeader(path.join(dir, SHARD), (h) => {
        const names = Object.keys(h)
          .filter((k) => k !== '__metadata__')
          .sort((a, b) => h[a].data_offsets[0] - h[b].data_offsets[0]);
        const [a, b] = [h[names[1]], h[names[2]]];
        const len = b.data_offsets[1] - b.data_offsets[0];
        b.data_offsets = [a.data_offsets[0], a.data_offsets[0] + len];
      });
      return SHARD;
    },
    /overlaps|hole/,
  ],
  [
    'an index naming a shard outside the model folder',
    async (dir) => {
      const index = path.join(dir, 'model.safetensors.index.json');
      const j = JSON.parse(fs.readFileSync(index, 'utf8'));
      const first = Object.keys(j.weight_map)[0];
      j.weight_map[first] = '../../etc/passwd';
      fs.writeFileSync(index, JSON.stringify(j));
      return 'model.safetensors.index.json';
    },
    /outside the model folder/,
  ],
  [
    'an index naming a shard through a symlink out of the folder',
    async (dir) => {
      const outside = tmpDir();
      const index = path.join(dir, 'model.safetensors.index.json');
      const j = JSON.parse(fs.readFileSync(index, 'utf8'));
      const shard = j.weight_map[Object.keys(j.weight_map)[0]];
      fs.renameSync(path.join(dir, shard), path.join(outside, shard));
      fs.symlinkSync(path.join(outside, shard), path.join(dir, shard));
      return 'model.safetensors.index.json';
    },
    /resolves outside the model folder/,
  ],
  [
    'only pickle files',
    async (dir) => {
      for (const f of fs.readdirSync(dir)) if (f.endsWith('.safetensors')) fs.rmSync(path.join(dir, f));
      fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'not really a pickle');
      return path.basename(dir);
    },
    /pickle/,
  ],
  [
    'no config.json',
    async (dir) => {
      fs.rmSync(path.join(dir, 'config.json'));
      return path.basename(dir);
    },
    /no config\.json/,
  ],
  [
    'a dense model_type',
    async (dir) => {
      const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...c, model_type: 'llama' }));
      return 'config.json';
    },
    /dense model/,
  ],
  [
    'an unknown model_type',
    async (dir) => {
      const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...c, model_type: 'frobnicator_moe' }));
      return 'config.json';
    },
    /unknown model_type "frobnicator_moe"/,
  ],
  [
    'a missing expert tensor',
    async (dir) => {
      // Re-write the checkpoint without one expert's down_proj.
      const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      for (const f of fs.readdirSync(dir))
        if (f.endsWith('.safetensors') || f.endsWith('.json')) fs.rmSync(path.join(dir, f));
      const arch = architectureFor(config, dir);
      const missing = arch.expertKey(1, 2, 'down');
      const plan = arch
        .schema()
        .filter((s) => s.name !== missing)
        .map((s) => ({ name: s.name, shape: s.shape, dtype: 'F32' as const }));
      const w = new ShardedWriter(dir, plan, { maxShardBytes: 1e9 });
      for (const t of plan) w.write(t.name, new Uint8Array(t.shape.reduce((a, b) => a * b, 1) * 4));
      w.finish();
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
      return path.basename(dir);
    },
    /missing tensor "model\.layers\.1\.mlp\.experts\.2\.down_proj\.weight"/,
  ],
  [
    'a config that does not match the weights',
    async (dir) => {
      const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...c, moe_intermediate_size: 48 }));
      return path.basename(dir);
    },
    /has shape \[32,64\], config\.json implies \[48,64\]/,
  ],
];

describe('bad inputs give one clear line, a non-zero exit and no output', () => {
  let pristine: string;
  let pristineSharded: string;

  beforeAll(async () => {
    pristine = await makeSynth('qwen3_moe', path.join(tmpDir(), 'model'));
    pristineSharded = await makeSynth('qwen3_moe', path.join(tmpDir(), 'model'), { maxShardBytes: 100_000 });
  });

  test.each(CASES)('%s', async (_name, make, message) => {
    const needsIndex = /index/.test(_name);
    const work = tmpDir();
    const model = path.join(work, 'model');
    fs.cpSync(needsIndex ? pristineSharded : pristine, model, { recursive: true });
    const file = await make(model);
    const dest = path.join(work, 'out');
    for (const args of [
      ['inspect', model],
      ['convert', model, '-o', dest],
    ]) {
      const r = await runMain(args);
      expect(r.code).toBe(3);
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^moe: /);
      expect(lines[0]).toMatch(message);
      expect(lines[0]).toContain(file);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(listDir(work)).toEqual(['model']); // no output folder, no temporary folder
    }
  });

  test('--debug adds the stack trace', async () => {
    const r = await runMain(['inspect', path.join(tmpDir(), 'nowhere'), '--debug']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/\n\s+at /);
  });

  test('an existing destination is refused without --force (exit 2) and left untouched', async () => {
    const work = tmpDir();
    const dest = path.join(work, 'out');
    fs.mkdirSync(dest);
    fs.writeFileSync(path.join(dest, 'keep.txt'), 'mine');
    const r = await runMain(['convert', pristine, '-o', dest]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/already exists.*--force/);
    const forced = await runMain(['convert', pristine, '-o', dest, '--force']);
    expect(forced.code).toBe(2); // --force replaces only a model folder
    expect(fs.readFileSync(path.join(dest, 'keep.txt'), 'utf8')).toBe('mine');
    expect(listDir(work)).toEqual(['out']);
  });

  test('usage errors exit 2', async () => {
    expect((await runMain(['convert', pristine])).code).toBe(2); // no -o
    expect(
      (await runMain(['convert', pristine, '-o', path.join(tmpDir(), 'x'), '--max-shard-size', 'huge'])).code,
    ).toBe(2);
    expect((await runMain(['frobnicate'])).code).toBe(2);
  });
});

test('the presets cover every registered architecture, each of its own model_type', () => {
  expect(Object.keys(PRESETS)).toEqual(modelTypes());
  expect(modelTypes().length).toBeGreaterThanOrEqual(6);
  for (const t of modelTypes()) expect(PRESETS[t].model_type).toBe(t);
});
