import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { formatPrune, prune } from '../../src/commands/prune';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { concatRows, swiglu } from '../../src/model/forward/ops';
import { loadArchitecture } from '../../src/model/registry';
import { ReconstructionProblem } from '../../src/prune/reconstruct';
import { countKeepSets, keepSets } from '../../src/prune/select';
import { GOLDEN, listDir, quiet, runMain, tmpDir } from '../helpers';

/** Bytes of a folder's .safetensors files, computed here independently of src/io/size.ts. */
const filesBytes = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);

function windows(n: number, T: number, vocab: number, seed: number): number[][] {
  let x = seed;
  return [...Array(n)].map(() =>
    [...Array(T)].map(() => {
      x = (x * 1103515245 + 12345) % 2147483648;
      return x % vocab;
    }),
  );
}

async function statsFor(model: string): Promise<string> {
  const file = path.join(tmpDir(), 'd.json');
  fs.writeFileSync(file, JSON.stringify(windows(6, 16, 256, 3)));
  const out = path.join(tmpDir(), 'stats');
  await calibrate({ model, output: out, data: file, seqLen: 16, naeeTokens: 48, backend: 'ref' }, quiet);
  return out;
}

const QWEN3 = path.join(GOLDEN, 'qwen3_moe');
const DSV3 = path.join(GOLDEN, 'deepseek_v3');
let qStats: string;
let dStats: string;

beforeAll(async () => {
  qStats = await statsFor(QWEN3);
  dStats = await statsFor(DSV3);
});

/** Qwen3-MoE's routed output for samples x with only `keep` experts (softmax over kept logits, top-k, renormalised). */
async function maskedOutput(
  model: string,
  layer: number,
  x: Float32Array,
  n: number,
  keep: number[],
): Promise<Float32Array> {
  const ckpt = openCheckpoint(model);
  const arch = loadArchitecture(ckpt);
  const r = new TensorReader(ckpt);
  const be = new RefBackend();
  const h = arch.hidden;
  const logits = await be.linear(x, r.f32(arch.routerKey(layer)), n, h, arch.numExperts);
  const out = new Float32Array(n * h);
  for (let t = 0; t < n; t++) {
    const order = keep.slice().sort((a, b) => logits[t * arch.numExperts + b] - logits[t * arch.numExperts + a]);
    const top = order.slice(0, arch.topK);
    const z = top.map((e) => Math.exp(logits[t * arch.numExperts + e]));
    const sum = z.reduce((a, b) => a + b, 0);
    for (let j = 0; j < top.length; j++) {
      const e = top[j];
      const xt = x.subarray(t * h, (t + 1) * h);
      const gu = await be.linear(
        xt,
        concatRows(r.f32(arch.expertKey(layer, e, 'gate')), r.f32(arch.expertKey(layer, e, 'up'))),
        1,
        h,
        2 * arch.expertWidth,
      );
      const y = await be.linear(
        swiglu(gu, 1, arch.expertWidth),
        r.f32(arch.expertKey(layer, e, 'down')),
        1,
        arch.expertWidth,
        h,
      );
      for (let i = 0; i < h; i++) out[t * h + i] += (z[j] / sum) * y[i];
    }
  }
  r.close();
  return out;
}

describe('NAEE reconstruction loss', () => {
  test('equals a direct computation of the masked, re-routed output error', async () => {
    const stats = new CalibrationStats(qStats);
    const arch = loadArchitecture(openCheckpoint(QWEN3));
    const x = stats.f32('layers.1.moe.naee_in');
    const n = x.length / arch.hidden;
    const ckpt = openCheckpoint(QWEN3);
    const problem = await ReconstructionProblem.build(new RefBackend(), new TensorReader(ckpt), arch, 1, x, n);
    const all = [...Array(arch.numExperts).keys()];
    const full = await maskedOutput(QWEN3, 1, x, n, all);
    for (const keep of [
      [0, 2, 5, 7],
      [1, 3],
    ]) {
      const part = await maskedOutput(QWEN3, 1, x, n, keep);
      let err = 0;
      for (let i = 0; i < full.length; i++) err += (full[i] - part[i]) ** 2;
      expect(problem.loss(keep)).toBeCloseTo(err / n, 5);
    }
    expect(problem.loss(all)).toBeCloseTo(0, 9);
    stats.close();
  });

  test('moe prune --method naee picks the subset with the least loss of all C(E,K)', async () => {
    const out = path.join(tmpDir(), 'naee');
    const report = await prune(
      { model: QWEN3, stats: qStats, method: 'naee', keep: 4, output: out, backend: 'ref', dryRun: true },
      quiet,
    );
    const stats = new CalibrationStats(qStats);
    const arch = loadArchitecture(openCheckpoint(QWEN3));
    for (const l of report.layers) {
      const x = stats.f32(`layers.${l.layer}.moe.naee_in`);
      const problem = await ReconstructionProblem.build(
        new RefBackend(),
        new TensorReader(openCheckpoint(QWEN3)),
        arch,
        l.layer,
        x,
        x.length / arch.hidden,
      );
      const c = { experts: 8, keep: 4, groups: 1, protect: new Set<number>() };
      expect(countKeepSets(c)).toBe(70);
      const best = Math.min(...[...keepSets(c)].map((k) => problem.loss(k)));
      expect(l.search).toBe('exhaustive');
      expect(l.reconstruction_loss).toBeCloseTo(best, 12);
    }
    stats.close();
    expect(listDir(path.dirname(out))).toEqual([]);
  });

  test('beyond --naee-limit it searches greedily, and says so', async () => {
    const report = await prune(
      {
        model: QWEN3,
        stats: qStats,
        method: 'naee',
        keep: 4,
        output: path.join(tmpDir(), 'g'),
        backend: 'ref',
        dryRun: true,
        naeeLimit: 10,
      },
      quiet,
    );
    expect(report.layers.every((l) => l.search === 'greedy' && l.kept.length === 4)).toBe(true);
  });
});

describe('the pruned checkpoint', () => {
  test('keeps the chosen experts bit-exact and renumbered, slices router and correction bias, updates the config', async () => {
    const out = path.join(tmpDir(), 'reap');
    const report = await prune({ model: DSV3, stats: dStats, method: 'reap', keep: 4, output: out }, quiet);
    // The size: the written files' bytes, as everywhere (src/io/size.ts).
    expect(report.size_bytes).toBe(filesBytes(out));
    expect(formatPrune(report)).toContain(`${(filesBytes(out) / 1e6).toFixed(2)} MB`);
    const src = openCheckpoint(DSV3);
    const dst = openCheckpoint(out);
    const arch = loadArchitecture(src);
    const a = new TensorReader(src);
    const b = new TensorReader(dst);
    const same = (x: Uint8Array, y: Uint8Array) => Buffer.from(x).equals(Buffer.from(y));
    for (const l of report.layers) {
      expect(l.kept).toHaveLength(4);
      // Groups of 4 (n_group 2): each keeps 2.
      expect(l.kept.filter((e) => e < 4)).toHaveLength(2);
      l.kept.forEach((old, i) => {
        for (const p of ['gate', 'up', 'down'] as const)
          expect(same(b.bytes(arch.expertKey(l.layer, i, p)), a.bytes(arch.expertKey(l.layer, old, p)))).toBe(true);
      });
      expect(dst.tensors.has(arch.expertKey(l.layer, 4, 'gate'))).toBe(false);
      const router = a.f32(arch.routerKey(l.layer));
      const sliced = b.f32(arch.routerKey(l.layer));
      const h = arch.hidden;
      l.kept.forEach((old, i) =>
        expect(Array.from(sliced.subarray(i * h, (i + 1) * h))).toEqual(
          Array.from(router.subarray(old * h, (old + 1) * h)),
        ),
      );
      const bias = a.f32(arch.correctionBiasKey(l.layer)!);
      expect(Array.from(b.f32(arch.correctionBiasKey(l.layer)!))).toEqual(l.kept.map((e) => bias[e]));
    }
    // Every other tensor bit-exact.
    for (const [name] of src.tensors) {
      const role = arch.classify(name);
      if (role && (role.kind === 'expert' || role.kind === 'router' || role.kind === 'router_bias')) continue;
      expect(same(a.bytes(name), b.bytes(name))).toBe(true);
    }
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    const original = JSON.parse(fs.readFileSync(path.join(DSV3, 'config.json'), 'utf8'));
    expect(config.n_routed_experts).toBe(4);
    expect({ ...config, n_routed_experts: original.n_routed_experts }).toEqual(original);
    const record = JSON.parse(fs.readFileSync(path.join(out, 'moe-compression.json'), 'utf8'));
    expect(record).toMatchObject({ operation: 'prune', method: 'reap', experts_before: 8, experts_after: 4 });
    expect(record.kept).toEqual(Object.fromEntries(report.layers.map((l) => [String(l.layer), l.kept])));
    // It is a model moe reads and evaluates.
    const r = await runMain(['inspect', out, '--json']);
    expect(JSON.parse(r.stdout).experts_per_layer).toEqual([4, 4]);
    a.close();
    b.close();
  });

  test('--protect-super-experts keeps the detected super experts', async () => {
    const report = await prune(
      {
        model: QWEN3,
        stats: qStats,
        method: 'random',
        keep: 4,
        output: path.join(tmpDir(), 'x'),
        dryRun: true,
        protectSuperExperts: true,
        superFactor: 1.0001,
        seed: 3,
      },
      quiet,
    );
    for (const l of report.layers) {
      expect(l.super_experts.length).toBeGreaterThan(0);
      expect(l.super_experts.length).toBeLessThanOrEqual(4);
      for (const e of l.super_experts) expect(l.kept).toContain(e);
    }
  });

  test('impossible requests fail before anything is written', async () => {
    const work = tmpDir();
    const dest = path.join(work, 'out');
    const low = await runMain(['prune', QWEN3, '--stats', qStats, '--method', 'reap', '--keep', '1', '-o', dest]);
    expect(low.code).toBe(2);
    expect(low.stderr).toMatch(/fewer than the 2 each token routes to/);
    const groups = await runMain(['prune', DSV3, '--stats', dStats, '--method', 'reap', '--keep', '3', '-o', dest]);
    expect(groups.code).toBe(2);
    expect(groups.stderr).toMatch(/routing groups.*try --keep 4/);
    const other = await runMain(['prune', QWEN3, '--stats', dStats, '--method', 'reap', '--keep', '4', '-o', dest]);
    expect(other.code).toBe(3);
    expect(other.stderr).toMatch(/stats were made from another model/);
    expect(
      (
        await runMain([
          'prune',
          QWEN3,
          '--stats',
          qStats,
          '--method',
          'reap',
          '--keep',
          '4',
          '--ratio',
          '0.5',
          '-o',
          dest,
        ])
      ).code,
    ).toBe(2);
    expect(listDir(work)).toEqual([]);
  });

  test("--dry-run --json prints each layer's plan and writes nothing", async () => {
    const work = tmpDir();
    const r = await runMain([
      'prune',
      QWEN3,
      '--stats',
      qStats,
      '--method',
      'naee',
      '--ratio',
      '0.5',
      '-o',
      path.join(work, 'o'),
      '--dry-run',
      '--json',
      '--backend',
      'ref',
    ]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.dry_run).toBe(true);
    expect(report.layers.map((l: { kept: number[] }) => l.kept.length)).toEqual([4, 4]);
    expect(typeof report.layers[0].reconstruction_loss).toBe('number');
    expect(listDir(work)).toEqual([]);
  });
});
