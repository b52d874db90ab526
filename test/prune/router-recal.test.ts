/**
 * Router recalibration after prune and merge (src/prune/router-recal.ts): on a model that lost nothing the refit
 * changes nothing (the same top-k on every calibration token, the router's bytes unchanged) for softmax, sigmoid
 * with group limiting and a correction bias, and a router with a logit bias; the merged targets are the group's
 * probability (softmax) and its noisy-OR (sigmoid); on the trained fixture the refit raises the agreement with the
 * original's routing among the kept experts and rewrites only routers (not a pruned model's first, whose input
 * has not drifted), in the files written, re-opened.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { targetLogits } from '../../src/prune/router-recal';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, ROOT, tmpDir } from '../helpers';

const MODELS = ['qwen3_moe', 'deepseek_v3', 'gpt_oss'];

async function calibrated(model: string): Promise<string> {
  const file = path.join(tmpDir(), 'd.json');
  let x = 5;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648) % 256;
  fs.writeFileSync(file, JSON.stringify([...Array(8)].map(() => [...Array(16)].map(next))));
  const out = path.join(tmpDir(), 'stats');
  await calibrate({ model, output: out, data: file, seqLen: 16, backend: 'ref' }, quiet);
  return out;
}

const routerBytes = (dir: string, names: string[]) => {
  const r = new TensorReader(openCheckpoint(dir));
  try {
    return names.map((n) => Buffer.from(r.bytes(n)));
  } finally {
    r.close();
  }
};

describe.each(MODELS)('%s: nothing pruned, nothing changes', (name) => {
  const model = path.join(GOLDEN, name);
  let stats: string;
  beforeAll(async () => {
    stats = await calibrated(model);
  });

  test.each(['ls', 'kl'] as const)('--recalibrate-router %s keeps every router and every top-k', async (mode) => {
    const arch = loadArchitecture(openCheckpoint(model));
    const output = path.join(tmpDir(), 'all');
    const r = await prune(
      { model, stats, method: 'reap', keep: arch.numExperts, output, recalibrateRouter: mode, backend: 'ref' },
      quiet,
    );
    const rc = r.router_recalibration!;
    expect(rc.tokens).toBe(8 * 16);
    expect(rc.layers.map((l) => l.layer)).toEqual(arch.moeLayers);
    // Overlap 1 on average is overlap 1 on every token: the same top-k everywhere.
    for (const l of rc.layers) expect([l.before, l.after]).toEqual([1, 1]);
    const names = arch.moeLayers.map((l) => arch.routerKey(l));
    expect(routerBytes(output, names)).toEqual(routerBytes(model, names));
    const record = JSON.parse(fs.readFileSync(path.join(output, 'moe-compression.json'), 'utf8'));
    expect(record.params.recalibrate_router).toBe(mode);
  });
});

test("merged targets: softmax keeps the group's probability, sigmoid its noisy-OR; one member is its own logit", () => {
  const logits = Float32Array.from([0.3, -1.2, 2.0, 0.7, 0.1, -0.4]);
  const members = [[2], [0, 3], [1, 4, 5]];
  const soft = targetLogits(logits, 1, 6, members, 'softmax');
  expect(soft[0]).toBe(logits[2]);
  const z = (v: ArrayLike<number>) => Array.from(v).reduce((s, x) => s + Math.exp(x), 0);
  const p = (t: number) => Math.exp(t) / z(soft);
  expect(p(soft[1])).toBeCloseTo((Math.exp(0.3) + Math.exp(0.7)) / z(logits), 6);
  expect(p(soft[2])).toBeCloseTo((Math.exp(-1.2) + Math.exp(0.1) + Math.exp(-0.4)) / z(logits), 6);
  const sig = targetLogits(logits, 1, 6, members, 'sigmoid');
  const s = (v: number) => 1 / (1 + Math.exp(-v));
  expect(sig[0]).toBe(logits[2]);
  expect(s(sig[1])).toBeCloseTo(1 - (1 - s(0.3)) * (1 - s(0.7)), 6);
  expect(s(sig[2])).toBeCloseTo(1 - (1 - s(-1.2)) * (1 - s(0.1)) * (1 - s(-0.4)), 6);
});

describe('trained fixture tiny-moe, 4 of 8 experts', () => {
  const model = path.join(ROOT, 'fixtures', 'tiny-moe');
  let stats: string;
  beforeAll(async () => {
    stats = path.join(tmpDir(), 'stats');
    const data = path.join(ROOT, 'fixtures', 'text', 'calib.txt');
    await calibrate({ model, output: stats, data, seqLen: 128, maxTokens: 2048 }, quiet);
  });

  test.each([
    ['prune reap', 'prune'],
    ['merge hcsmoe', 'merge'],
  ])('%s: the refit raises routing agreement and rewrites only the routers', async (_label, command) => {
    const plain = path.join(tmpDir(), 'plain');
    const refit = path.join(tmpDir(), 'refit');
    const opts = { model, stats, keep: 4 };
    const run = (output: string, recalibrateRouter: 'off' | 'ls') =>
      command === 'prune'
        ? prune({ ...opts, method: 'reap', output, recalibrateRouter }, quiet)
        : merge({ ...opts, method: 'hcsmoe', output, recalibrateRouter }, quiet);
    expect((await run(plain, 'off')).router_recalibration).toBeUndefined();
    const rc = (await run(refit, 'ls')).router_recalibration!;
    const mean = (f: (l: { before: number; after: number }) => number) =>
      rc.layers.reduce((s, l) => s + f(l), 0) / rc.layers.length;
    expect(rc.before).toBeCloseTo(
      mean((l) => l.before),
      12,
    );
    expect(rc.after).toBeGreaterThan(rc.before + 0.01);
    const ckpt = openCheckpoint(plain);
    const a = new TensorReader(ckpt);
    const b = new TensorReader(openCheckpoint(refit));
    try {
      const arch = loadArchitecture(ckpt);
      for (const name of ckpt.tensors.keys()) {
        const same = Buffer.from(a.bytes(name)).equals(Buffer.from(b.bytes(name)));
        const router = arch.moeLayers.find((l) => arch.routerKey(l) === name);
        // A prune's first MoE layer sees the original's input and keeps the original's logits: nothing to refit.
        const unchanged = router === undefined || (command === 'prune' && router === arch.moeLayers[0]);
        expect([name, same]).toEqual([name, unchanged]);
      }
    } finally {
      a.close();
      b.close();
    }
  });
});
