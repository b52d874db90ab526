/**
 * Calibration statistics against a direct computation: the model is run batch by batch with a plain observer
 * written here, and calibrate's layer-by-layer pipeline must give the same numbers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { ForwardPass } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, listDir, quiet, ROOT, runMain, seededWindows as windows, tmpDir } from '../helpers';

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

interface Direct {
  count: Float64Array;
  reap: Float64Array;
  imatrix: Map<string, Float64Array>;
  xtx: Float64Array;
}

/** One MoE layer's frequency counts, REAP saliency and imatrix, and one expert's XᵀX, computed directly. */
async function direct(model: string, data: number[][], layer: number, expert: number): Promise<Direct> {
  const ckpt = openCheckpoint(model);
  const arch = loadArchitecture(ckpt);
  const reader = new TensorReader(ckpt);
  const fp = new ForwardPass(reader, arch, new RefBackend(), { cacheBytes: 0 });
  const E = arch.numExperts;
  const k = arch.topK;
  const d: Direct = {
    count: new Float64Array(E),
    reap: new Float64Array(E),
    imatrix: new Map(),
    xtx: new Float64Array(arch.hidden * arch.hidden),
  };
  const gate = arch.expertKey(layer, expert, 'gate');
  let weights: Float32Array = new Float32Array(0);
  for (const w of data) {
    const ids = Int32Array.from(w);
    await fp.run(ids, 1, w.length, () => {}, {
      router: (l, r) => {
        if (l !== layer) return;
        weights = r.weights.slice();
        for (const e of r.experts) d.count[e]++;
      },
      expert: (l, e, y, tokens, slots) => {
        if (l !== layer) return;
        for (let i = 0; i < tokens.length; i++) {
          let sq = 0;
          for (let j = 0; j < arch.hidden; j++) sq += y[i * arch.hidden + j] ** 2;
          d.reap[e] += weights[tokens[i] * k + slots[i]] * Math.sqrt(sq);
        }
      },
      linear: (name, x, rows, inDim) => {
        const role = arch.classify(name);
        if (!role || !('layer' in role) || role.layer !== layer) return;
        const acc = d.imatrix.get(name) ?? new Float64Array(inDim);
        for (let r = 0; r < rows; r++) for (let c = 0; c < inDim; c++) acc[c] += x[r * inDim + c] ** 2;
        d.imatrix.set(name, acc);
        if (name === gate) {
          for (let r = 0; r < rows; r++)
            for (let a = 0; a < inDim; a++)
              for (let b = 0; b < inDim; b++) d.xtx[a * inDim + b] += x[r * inDim + a] * x[r * inDim + b];
        }
      },
    });
  }
  reader.close();
  d.reap = d.reap.map((s, e) => (d.count[e] ? s / d.count[e] : 0));
  return d;
}

const CASES: [string, string, number][] = [
  ['the trained fixture', path.join(ROOT, 'fixtures', 'tiny-moe'), 1],
  ['qwen3_moe (golden)', path.join(GOLDEN, 'qwen3_moe'), 1],
  ['deepseek_v3 (golden: dense first layer, grouped routing, shared expert)', path.join(GOLDEN, 'deepseek_v3'), 2],
];

describe.each(CASES)('calibrate on %s', (_name, model, layer) => {
  let stats: CalibrationStats;
  let data: number[][];
  const arch = loadArchitecture(openCheckpoint(model));

  beforeAll(async () => {
    data = windows(6, 16, arch.vocab);
    const file = path.join(tmpDir(), 'data.json');
    fs.writeFileSync(file, JSON.stringify(data));
    const out = path.join(tmpDir(), 'stats');
    // Small batches and a tiny activation budget: the pipeline spills and still must agree.
    const report = await calibrate(
      {
        model,
        output: out,
        data: file,
        seqLen: 16,
        hessians: true,
        naeeTokens: 20,
        batchTokens: 32,
        activationBudgetBytes: 1000,
        backend: 'ref',
      },
      quiet,
    );
    expect(report.spilled).toBe(true);
    stats = new CalibrationStats(out);
  });

  afterAll(() => stats.close());

  test("frequency counts, REAP saliency, imatrix and one expert's XᵀX equal a direct forward pass", async () => {
    const expert = 1;
    const d = await direct(model, data, layer, expert);
    const tokens = data.length * data[0].length;
    const count = stats.vector(layer, 'count');
    expect(Array.from(count)).toEqual(Array.from(d.count));
    expect(count.reduce((s, c) => s + c, 0)).toBe(tokens * arch.topK);
    expect(relErr(stats.vector(layer, 'reap'), d.reap)).toBeLessThanOrEqual(1e-4);
    expect(d.imatrix.size).toBeGreaterThan(5);
    for (const [name, want] of d.imatrix) {
      if (name.includes('.up_proj.')) continue;
      expect(relErr(stats.f64(`imatrix/${name}`), want)).toBeLessThanOrEqual(1e-4);
    }
    const gate = arch.expertKey(layer, expert, 'gate');
    expect(stats.f64(`rows/${gate}`)[0]).toBe(d.count[expert]);
    expect(relErr(stats.f32(`hessian/${gate}`), d.xtx)).toBeLessThanOrEqual(1e-4);
  });

  test("every MoE layer's counts sum to tokens × top_k; soft frequencies sum to 1", () => {
    const tokens = data.length * data[0].length;
    for (const l of arch.moeLayers) {
      expect(stats.vector(l, 'count').reduce((s, c) => s + c, 0)).toBe(tokens * arch.topK);
      // Softmax probabilities sum to 1 per token, so their means do too (float32 probabilities).
      if (arch.routing.scoring === 'softmax')
        expect(stats.vector(l, 'soft_freq').reduce((s, c) => s + c, 0)).toBeCloseTo(1, 6);
      const cos = stats.f64(`layers.${l}.moe.router_cos`);
      for (let e = 0; e < arch.numExperts; e++) expect(cos[e * arch.numExperts + e]).toBeCloseTo(1, 9);
    }
    expect(stats.json.data.tokens).toBe(tokens);
    expect(stats.reader.ref(`layers.${arch.moeLayers[0]}.moe.naee_in`).shape).toEqual([20, arch.hidden]);
  });

  test('stats refuse a different model', () => {
    const other = openCheckpoint(path.join(GOLDEN, 'olmoe'));
    expect(() => stats.checkModel(other)).toThrow(/stats were made from another model/);
    expect(() => stats.checkModel(openCheckpoint(model))).not.toThrow();
  });
});

test('calibrate --json summarises each layer; --dry-run writes nothing; the same seed gives the same file', async () => {
  const model = path.join(GOLDEN, 'olmoe');
  const file = path.join(tmpDir(), 'd.json');
  fs.writeFileSync(file, JSON.stringify(windows(4, 16, 256, 7)));
  const work = tmpDir();
  expect(
    (await runMain(['calibrate', model, '--data', file, '--seq-len', '16', '-o', path.join(work, 's'), '--dry-run']))
      .code,
  ).toBe(0);
  expect(listDir(work)).toEqual([]);
  const r1 = await runMain([
    'calibrate',
    model,
    '--data',
    file,
    '--seq-len',
    '16',
    '--samples',
    '3',
    '--seed',
    '5',
    '-o',
    path.join(work, 'a'),
    '--json',
  ]);
  expect(r1.code).toBe(0);
  const report = JSON.parse(r1.stdout);
  expect(report.windows).toBe(3);
  expect(report.layers).toHaveLength(2);
  expect(report.layers[0].most_used).toHaveLength(3);
  expect(report.layers[0].most_used[0].frequency).toBeGreaterThanOrEqual(report.layers[0].least_used[0].frequency);
  const r2 = await runMain([
    'calibrate',
    model,
    '--data',
    file,
    '--seq-len',
    '16',
    '--samples',
    '3',
    '--seed',
    '5',
    '-o',
    path.join(work, 'b'),
  ]);
  expect(r2.code).toBe(0);
  expect(
    fs
      .readFileSync(path.join(work, 'a', 'stats.safetensors'))
      .equals(fs.readFileSync(path.join(work, 'b', 'stats.safetensors'))),
  ).toBe(true);
});
