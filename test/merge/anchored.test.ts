/**
 * The REAP-anchored merge and the least-squares refit (src/merge/anchored.ts, src/merge/refit.ts): the merge whose
 * dominant weight is 1 is the REAP prune byte for byte, the weights are α and saliency shares, and the refit lowers
 * the layer's routed-output error on the calibration samples against the plain merge, measured here on the files
 * written, re-opened.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { anchoredWeights } from '../../src/merge/anchored';
import { mergeMethod } from '../../src/merge/methods';
import { resolveMergeParams } from '../../src/merge/method';
import { layerOutput, originalLayer, relativeError } from '../../src/merge/refit';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, tmpDir } from '../helpers';

const MODELS = ['qwen3_moe', 'deepseek_v3'];
const stats: Record<string, string> = {};

beforeAll(async () => {
  const file = path.join(tmpDir(), 'd.json');
  let x = 9;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648) % 256;
  fs.writeFileSync(file, JSON.stringify([...Array(8)].map(() => [...Array(16)].map(next))));
  for (const m of MODELS) {
    stats[m] = path.join(tmpDir(), `stats-${m}`);
    await calibrate({ model: path.join(GOLDEN, m), output: stats[m], data: file, seqLen: 16, backend: 'ref' }, quiet);
  }
});

/** The bytes of every .safetensors file of a folder, by name. */
const weights = (dir: string) =>
  Object.fromEntries(
    fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.safetensors'))
      .map((f) => [f, fs.readFileSync(path.join(dir, f))]),
  );

test('anchoredWeights: the dominant takes α, the others share 1 − α by REAP saliency', () => {
  const reap = [4, 0, 1, 3];
  anchoredWeights(reap, [0, 2, 3], 0.8).forEach((w, i) => expect(w).toBeCloseTo([0.8, 0.05, 0.15][i], 15));
  expect(anchoredWeights(reap, [0, 2, 3], 1)).toEqual([1, 0, 0]);
  expect(anchoredWeights(reap, [0, 1], 0.5)).toEqual([0.5, 0.5]); // no saliency among the rest: uniform
  expect(anchoredWeights(reap, [3], 0.5)).toEqual([1]);
  const p = (v: unknown) => resolveMergeParams(mergeMethod('anchored')!, { 'dominant-weight': v });
  expect(p('0.25')['dominant-weight']).toBe(0.25);
  expect(p(undefined)['dominant-weight']).toBe(0.9);
  expect(() => p('1.5')).toThrow(/--dominant-weight "1.5" is out of range/);
  expect(() => p('x')).toThrow(/out of range/);
});

test.each(MODELS)(
  '%s: anchored --dominant-weight 1 writes the REAP prune byte for byte; below 1 it merges REAP-kept dominants',
  async (m) => {
    const model = path.join(GOLDEN, m);
    const pruned = path.join(tmpDir(), `reap-${m}`);
    const merged = path.join(tmpDir(), `anchored1-${m}`);
    const blended = path.join(tmpDir(), `anchored09-${m}`);
    const common = { model, stats: stats[m], keep: 4, backend: 'ref' as const };
    const p = await prune({ ...common, method: 'reap', output: pruned }, quiet);
    const r = await merge({ ...common, method: 'anchored', dominantWeight: 1, output: merged }, quiet);
    const a = weights(pruned);
    const b = weights(merged);
    expect(Object.keys(b)).toEqual(Object.keys(a));
    for (const f of Object.keys(a)) expect(b[f].equals(a[f])).toBe(true);
    const blend = await merge({ ...common, method: 'anchored', output: blended }, quiet);
    const s = new CalibrationStats(stats[m]);
    for (const l of blend.layers) {
      // The dominants are REAP's kept experts, and a group of two or more is a real merge (differs from the dominant).
      const kept = p.layers.find((x) => x.layer === l.layer)!.kept;
      expect(l.groups.map((g) => g.dominant)).toEqual(kept);
      expect(r.layers.find((x) => x.layer === l.layer)!.groups.map((g) => g.dominant)).toEqual(kept);
      const reap = s.vector(l.layer, 'reap');
      for (const g of l.groups) expect(g.weights).toEqual(anchoredWeights(reap, g.members, 0.9));
    }
    s.close();
    const arch = loadArchitecture(openCheckpoint(model));
    const [x, y] = [new TensorReader(openCheckpoint(pruned)), new TensorReader(openCheckpoint(blended))];
    const layer = blend.layers[0];
    const i = layer.groups.findIndex((g) => g.members.length > 1);
    const key = arch.expertKey(layer.layer, i, 'gate');
    expect(Buffer.from(y.bytes(key)).equals(Buffer.from(x.bytes(key)))).toBe(false);
    x.close();
    y.close();
  },
);

test.each(MODELS)(
  "%s: --refit lowers every layer's routed-output error on the calibration samples below the plain merge's",
  async (m) => {
    const model = path.join(GOLDEN, m);
    const common = { model, stats: stats[m], keep: 4, backend: 'ref' as const, method: 'msmoe' };
    const plain = path.join(tmpDir(), `msmoe-${m}`);
    const refit = path.join(tmpDir(), `msmoe-refit-${m}`);
    await merge({ ...common, output: plain }, quiet);
    const report = await merge({ ...common, refit: true, output: refit }, quiet);
    const be = new RefBackend();
    const src = openCheckpoint(model);
    const arch = loadArchitecture(src);
    const orig = new TensorReader(src);
    const s = new CalibrationStats(stats[m]);
    const open = (dir: string) => {
      const c = openCheckpoint(dir);
      return { arch: loadArchitecture(c), reader: new TensorReader(c) };
    };
    const [a, b] = [open(plain), open(refit)];
    for (const layer of arch.moeLayers) {
      const x = s.f32(`layers.${layer}.moe.naee_in`);
      const n = x.length / arch.hidden;
      expect(n).toBeGreaterThan(0);
      const o = originalLayer(orig, arch, layer);
      const z = (await layerOutput(be, arch, x, n, o.router, o.experts)).out;
      const err = async (r: ReturnType<typeof open>) => {
        const l = originalLayer(r.reader, r.arch, layer);
        return relativeError((await layerOutput(be, r.arch, x, n, l.router, l.experts)).out, z);
      };
      const [before, after] = [await err(a), await err(b)];
      expect(after).toBeLessThan(0.9 * before);
      // The report's own before/after agree with the files (written in the model's dtype, so loosely).
      const rec = report.layers.find((l) => l.layer === layer)!.refit!;
      expect(rec.error_before).toBeCloseTo(before, 2);
      expect(rec.error_after).toBeCloseTo(after, 2);
      // Gate and up are the plain merge's; only the down projections change.
      for (let i = 0; i < 4; i++) {
        const up = arch.expertKey(layer, i, 'up');
        expect(Buffer.from(b.reader.bytes(up)).equals(Buffer.from(a.reader.bytes(up)))).toBe(true);
      }
    }
    s.close();
    orig.close();
    a.reader.close();
    b.reader.close();
  },
);
