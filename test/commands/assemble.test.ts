/**
 * Layer sharding: `moe quantize --layers A-B` parts joined by `moe assemble` give the single run's checkpoint byte
 * for byte (shards, index, config), for uniform RTN and for per-layer LP with GPTQ, and four parts through the
 * CLI (RTN on worker threads); bad part sets are refused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assemble } from '../../src/commands/assemble';
import { quantize, QuantizeOptions } from '../../src/commands/quantize';
import { fixtureStats, makeSynth, quiet, ROOT, runCli, runMain, tmpDir } from '../helpers';

/** Bytes of a folder's .safetensors files, computed here independently of src/io/size.ts. */
const filesBytes = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');

function sameCheckpoint(a: string, b: string): void {
  const files = (d: string) =>
    fs
      .readdirSync(d)
      .filter((f) => f.endsWith('.safetensors') || f === 'model.safetensors.index.json' || f === 'config.json')
      .sort();
  expect(files(b)).toEqual(files(a));
  expect(files(a).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1); // sharded: the index and shard boundaries are checked too
  for (const f of files(a))
    expect(fs.readFileSync(path.join(b, f)).equals(fs.readFileSync(path.join(a, f)))).toBe(true);
}

describe('moe quantize --layers + moe assemble', () => {
  let stats: string;
  beforeAll(async () => {
    // Any stats with Hessians will do (parts are compared with a single run on the same stats): the shared calibration.
    stats = await fixtureStats();
  }, 60_000);

  test.each([
    ['uniform RTN 4-bit, packed', { bits: 4, method: 'rtn' }],
    [
      'per-layer LP GPTQ at 3 bits, dequantized',
      { bits: 3, method: 'gptq', allocate: 'lp', budgetScope: 'layer', format: 'dequantized' },
    ],
  ] as [string, Partial<QuantizeOptions>][])(
    '%s: parts in any order give the single run byte for byte',
    async (_label, o) => {
      const dir = tmpDir();
      const common = { model: MODEL, stats, maxShardBytes: 2_000_000, ...o } as QuantizeOptions;
      await quantize({ ...common, output: path.join(dir, 'single') }, quiet);
      const ranges: [number, number][] = [
        [2, 2],
        [0, 0],
        [1, 1],
      ];
      const parts = [];
      for (const r of ranges) {
        const out = path.join(dir, `part-${r[0]}`);
        await quantize({ ...common, output: out, layers: r }, quiet);
        expect(fs.existsSync(path.join(out, 'config.json'))).toBe(false); // a part is not a model
        parts.push(out);
      }
      const r = await assemble(parts, { output: path.join(dir, 'joined') }, quiet);
      expect(r.size_bytes).toBe(filesBytes(path.join(dir, 'joined')));
      expect(r.layers).toBe(3);
      sameCheckpoint(path.join(dir, 'single'), path.join(dir, 'joined'));
    },
    120_000,
  );

  test('four --layers parts through the CLI (RTN on worker threads) give the single run byte for byte', async () => {
    const dir = tmpDir();
    const model = await makeSynth('mixtral', path.join(dir, 'model'), { dtype: 'BF16', set: { num_hidden_layers: 6 } });
    const args = ['--bits', '4', '--method', 'rtn', '--threads', '2', '--max-shard-size', '50KB'];
    // The built CLI (a child process): under jest, src/ has no compiled rtn-worker.js for runMain's workers.
    const run = async (extra: string[]) => {
      const r = runCli(['quantize', model, ...args, ...extra]);
      expect(r.code).toBe(0);
    };
    await run(['-o', path.join(dir, 'single')]);
    const parts: string[] = [];
    for (const range of ['0-1', '2-2', '3-4', '5-5']) {
      await run(['--layers', range, '-o', path.join(dir, `part-${range}`)]);
      parts.push(path.join(dir, `part-${range}`));
    }
    const r = await runMain(['assemble', ...parts.reverse(), '-o', path.join(dir, 'joined')]);
    expect(r.code).toBe(0);
    sameCheckpoint(path.join(dir, 'single'), path.join(dir, 'joined'));
  }, 120_000);

  test('bad part sets: overlap, a missing layer, other options, not a part; --layers with a global LP', async () => {
    const dir = tmpDir();
    const part = async (name: string, layers: [number, number], bits = 4) => {
      const out = path.join(dir, name);
      await quantize({ model: MODEL, bits, method: 'rtn', output: out, layers }, quiet);
      return out;
    };
    const a = await part('a', [0, 1]);
    const b = await part('b', [1, 2]);
    const c = await part('c', [2, 2]);
    const c8 = await part('c8', [2, 2], 8);
    const cases: [string[], number, RegExp][] = [
      [[a, b], 2, /layer 1 is in two parts/],
      [[a], 2, /no part holds layer 2/],
      [[a, c8], 3, /another model or with other options/],
      [[a, MODEL], 3, /not a partial output/],
    ];
    for (const [parts, code, re] of cases) {
      const r = await runMain(['assemble', ...parts, '-o', path.join(dir, 'out')]);
      expect(r.code).toBe(code);
      expect(r.stderr).toMatch(re);
      expect(fs.existsSync(path.join(dir, 'out'))).toBe(false);
    }
    expect((await runMain(['assemble', a, c, '-o', path.join(dir, 'ok')])).code).toBe(0);
    const g = await runMain([
      'quantize',
      MODEL,
      '--bits',
      '3',
      '--allocate',
      'lp',
      '--stats',
      stats,
      '--layers',
      '0-1',
      '-o',
      path.join(dir, 'g'),
    ]);
    expect(g.code).toBe(2);
    expect(g.stderr).toMatch(/needs --budget-scope layer/);
  }, 120_000);
});
