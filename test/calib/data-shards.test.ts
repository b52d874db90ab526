/**
 * Data-parallel calibration (src/calib/shards.ts): N = 1, 2, 3 parts of `moe calibrate --data-shard I/N`, combined,
 * give the single run's statistics on both trained fixtures (counts and the NAEE sample exactly, sums within float64
 * summation error, Hessians as the same F32 values up to one rounding), byte-identical for the same N whatever the
 * order the parts are given in; prune, merge and quantize from the combined stats write the single run's bytes;
 * the parts of different runs, missing and duplicated shards are refused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate, CalibrateOptions, calibrateSpec } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { combineParts } from '../../src/calib/shards';
import { CheckpointError, UsageError } from '../../src/errors';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { quiet, ROOT, tmpDir } from '../helpers';

const TEXT = path.join(ROOT, 'fixtures', 'text');
// 16 windows of 128 of calib.txt, pre-tokenized once per model (tokenizing the text would be most of each run), in
// batches of 2: shards of 8, 4 + 4 and 2 + 3 + 3 batches
const OPTS = { seqLen: 128, batchTokens: 256, hessians: true, naeeTokens: 200 };

/** The model's first 2,048 tokens of calib.txt as a pre-tokenized --data file of 16 windows. */
function windowsFile(model: string, dir: string): string {
  const text = fs.readFileSync(path.join(TEXT, 'calib.txt'), 'utf8').slice(0, 30_000);
  const ids = loadTokenizer(model).encode(text).slice(0, 2048);
  const file = path.join(dir, 'calib-ids.json');
  fs.writeFileSync(file, JSON.stringify([...Array(16).keys()].map((i) => ids.slice(i * 128, (i + 1) * 128))));
  return file;
}

/** Every tensor of a stats folder by name, in file order, as float64 (F32 ones widened), with its bytes. */
function tensors(dir: string): Map<string, { v: Float64Array; bytes: Buffer; dtype: string }> {
  new CalibrationStats(dir).close(); // a stats folder, not a part
  const file = openTensorFile(path.join(dir, 'stats.safetensors'));
  const reader = new TensorReader(file);
  const out = new Map<string, { v: Float64Array; bytes: Buffer; dtype: string }>();
  for (const ref of [...file.tensors.values()].sort((a, b) => a.begin - b.begin)) {
    const bytes = Buffer.from(reader.bytes(ref.name));
    const v =
      ref.dtype === 'F64'
        ? new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length))
        : Float64Array.from(reader.f32(ref.name));
    out.set(ref.name, { v, bytes, dtype: ref.dtype });
  }
  reader.close();
  return out;
}

/** max |a − b| / max |a| (Math's functions held locally: a global looked up per element is slow under jest). */
const { abs, max } = Math;
const relMax = (a: Float64Array, b: Float64Array) => {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = max(d, abs(a[i] - b[i]));
    m = max(m, abs(a[i]));
  }
  return m ? d / m : d;
};

async function parts(model: string, data: string, work: string, n: number): Promise<string[]> {
  const dirs: string[] = [];
  for (let index = 0; index < n; index++) {
    const output = path.join(work, `n${n}-part${index}`);
    await calibrate({ model, data, ...OPTS, output, dataShard: { index, count: n } }, quiet);
    dirs.push(output);
  }
  return dirs;
}

const modelBytes = (dir: string) => fs.readFileSync(path.join(dir, 'model.safetensors'));

describe.each(['tiny-moe', 'tiny-dsv3'])('calibrate --data-shard / --combine on %s', (name) => {
  const model = path.join(ROOT, 'fixtures', name);
  const work = tmpDir(`moe-shards-${name}-`);
  const single = path.join(work, 'single');
  const combined = (n: number) => path.join(work, `combined-${n}`);
  let want: ReturnType<typeof tensors>;
  const partsOf = new Map<number, string[]>();

  beforeAll(async () => {
    const data = windowsFile(model, work);
    await calibrate({ model, data, ...OPTS, output: single }, quiet);
    want = tensors(single);
    for (const n of [1, 2, 3]) {
      partsOf.set(n, await parts(model, data, work, n));
      await combineParts(partsOf.get(n)!, { output: combined(n) }, quiet);
    }
  }, 120_000);

  test.each([1, 2, 3])("N = %i: the single run's statistics", (n) => {
    const got = tensors(combined(n));
    expect([...got.keys()]).toEqual([...want.keys()]);
    const worst: Record<string, number> = {};
    for (const [k, w] of want) {
      const g = got.get(k)!;
      expect(g.dtype).toBe(w.dtype);
      const kind = k.includes('/') ? k.split('/')[0] : k.split('.').pop()!;
      // exact: integer counts, maxima, and the NAEE rows copied from the shard that saw each token
      if (['count', 'coact', 'rows', 'out_abs_max', 'act_abs_max', 'naee_in', 'naee_out'].includes(kind))
        expect(g.bytes.equals(w.bytes)).toBe(true);
      worst[kind] = Math.max(worst[kind] ?? 0, relMax(g.v, w.v));
    }
    // sums in float64 added in another order; Hessians: the float64 sums rounded to F32 (at most one F32 step)
    expect(Object.entries(worst).filter(([kind, e]) => !(e < (kind === 'hessian' ? 2 ** -23 : 1e-12)))).toEqual([]);
    expect(Object.keys(worst)).toContain('hessian');
    const json = JSON.parse(fs.readFileSync(path.join(combined(n), 'stats.json'), 'utf8'));
    const single_ = JSON.parse(fs.readFileSync(path.join(single, 'stats.json'), 'utf8'));
    expect({ ...json, data_shards: undefined }).toEqual({ ...single_, data_shards: undefined });
    expect(json.data_shards).toBe(n);
  });

  test('the same N gives the same bytes, in whatever order the parts are given', async () => {
    const again = path.join(work, 'again');
    await combineParts([...partsOf.get(3)!].reverse(), { output: again }, quiet);
    for (const f of ['stats.safetensors', 'stats.json'])
      expect(fs.readFileSync(path.join(again, f)).equals(fs.readFileSync(path.join(combined(3), f)))).toBe(true);
  });

  test('prune, merge and quantize from the combined stats write the bytes they write from the single run', async () => {
    const from = async (stats: string, tag: string) => {
      const out = (cmd: string) => path.join(work, `${cmd}-${tag}`);
      await prune({ model, stats, method: 'reap', keep: 6, output: out('prune') }, quiet);
      await merge({ model, stats, method: 'hcsmoe', keep: 6, output: out('merge') }, quiet);
      await quantize({ model, stats, bits: 4, method: 'gptq', output: out('quantize') }, quiet);
      return ['prune', 'merge', 'quantize'].map((c) => out(c));
    };
    const a = await from(single, 'single');
    const b = await from(combined(3), 'combined');
    const got = tensors(combined(3));
    const hessiansEqual = [...want].every(([k, w]) => !k.startsWith('hessian/') || got.get(k)!.bytes.equals(w.bytes));
    for (let i = 0; i < 3; i++) {
      if (modelBytes(a[i]).equals(modelBytes(b[i]))) continue;
      // only where the statistics differ by summation order: then the models' perplexities within 1e-6
      expect(i === 2 && !hessiansEqual).toBe(true);
      const ppl = async (m: string) =>
        (await evalCommand({ model: m, data: path.join(TEXT, 'eval.txt'), seqLen: 128, maxTokens: 4096 }, quiet))
          .perplexity;
      expect(Math.abs((await ppl(b[i])) / (await ppl(a[i])) - 1)).toBeLessThan(1e-6);
    }
  }, 120_000);
});

describe('calibrate --combine refuses what does not make one run', () => {
  const model = path.join(ROOT, 'fixtures', 'tiny-moe');
  const work = tmpDir('moe-shards-bad-');
  const small = { ...OPTS, maxTokens: 1024, hessians: false, data: '' };
  beforeAll(() => {
    small.data = windowsFile(model, work);
  });
  const part = async (index: number, count: number, extra: Partial<CalibrateOptions> = {}) => {
    const output = path.join(work, `p${index}-${count}-${Object.keys(extra).join('-')}`);
    await calibrate({ model, ...small, ...extra, output, dataShard: { index, count } }, quiet);
    return output;
  };
  const combine = (dirs: string[]) => combineParts(dirs, { output: path.join(work, 'out') }, quiet);

  test('missing, duplicated, other N, other options; a part used as stats', async () => {
    const [a, b, c] = [await part(0, 2), await part(1, 2), await part(0, 3)];
    await expect(combine([a])).rejects.toThrow('missing shard 1/2');
    await expect(combine([a, b, a])).rejects.toThrow(`shard 0/2 is given twice: ${a} and ${a}`);
    await expect(combine([a, b, c])).rejects.toThrow(CheckpointError);
    await expect(combine([a, await part(1, 2, { seed: 5 })])).rejects.toThrow('a part of another calibration');
    const other = path.join(work, 'other-model');
    const dsv3 = path.join(ROOT, 'fixtures', 'tiny-dsv3');
    // the same data file and options: only the model differs
    await calibrate({ model: dsv3, ...small, output: other, dataShard: { index: 1, count: 2 } }, quiet);
    await expect(combine([a, other])).rejects.toThrow('a part of another calibration');
    expect(fs.existsSync(path.join(work, 'out'))).toBe(false);
    // a part is sums, not statistics: refused by the commands that read stats
    await expect(
      prune({ model, stats: a, method: 'frequency', keep: 6, output: path.join(work, 'x') }, quiet),
    ).rejects.toThrow('a data-shard part of a calibration, not a stats folder');
    await combine([b, a]);
    const again = combineParts([a, path.join(work, 'out')], { output: path.join(work, 'out2') }, quiet);
    await expect(again).rejects.toThrow('a complete stats folder, not a data-shard part');
  });

  test('more shards than batches, and --self-sample, are refused before anything is written', async () => {
    const output = path.join(work, 'many');
    // 1024 tokens in windows of 128, 2 per batch: 4 batches
    await expect(part(0, 5)).rejects.toThrow('the data makes 4 batches of --batch-tokens 256, fewer than 5 shards');
    await expect(
      calibrate({ model, output, seqLen: 64, selfSample: 2, dataShard: { index: 0, count: 2 } }, quiet),
    ).rejects.toThrow(UsageError);
    expect(fs.existsSync(output)).toBe(false);
    expect(() =>
      calibrateSpec.options.find((o) => o.flag.startsWith('--data-shard '))!.parse!('3/3', '--data-shard'),
    ).toThrow('expected I/N with 0 ≤ I < N');
  });
});
