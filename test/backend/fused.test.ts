/**
 * @jest-environment ./test/backend/ort-environment.js
 */
import * as path from 'node:path';
import type { Backend, LogitStats } from '../../src/backend/backend';
import { OnnxBackend, TINY_PRODUCT_MACS } from '../../src/backend/onnx';
import {
  attentionRef,
  causalMask,
  headMajor,
  linearRef,
  logitStatsRef,
  RefBackend,
  swigluRef,
  tokenMajor,
} from '../../src/backend/ref';
import { TfjsBackend, type TfLike } from '../../src/backend/tfjs';
import { randomMatrix, relError, rng } from './matrices';

/** attention and logitStats' sumExp/target are asked for 1e-5; swiglu (two chained products) for 1e-4. */
const ATTENTION_TOL = 1e-5;
const SWIGLU_TOL = 1e-4;
const STATS_TOL = 1e-5;

/** [heads, T, dk, dv]: T = 1, 7, 33; dk ≠ dv; both sides of the onnx backend's small-product threshold. */
const ATTENTION_SHAPES: [number, number, number, number][] = [
  [1, 1, 8, 8],
  [4, 1, 1024, 1100],
  [1, 7, 16, 24],
  [2, 7, 300, 400],
  [4, 7, 32, 16],
  [3, 33, 64, 48],
  [1, 33, 128, 64],
];

/** [rows, hidden, width]. */
const SWIGLU_SHAPES: [number, number, number][] = [
  [1, 16, 8],
  [1, 256, 384],
  [5, 128, 96],
  [5, 64, 40],
  [64, 16, 8],
  [64, 256, 384],
];

/** [rows, hidden, count]. */
const STATS_SHAPES: [number, number, number][] = [
  [1, 64, 1],
  [1, 64, 1000],
  [37, 64, 1],
  [37, 256, 1],
  [37, 64, 1000],
];

/** Targets that probe every case: none (−1), just outside either end, both edges, inside, far away. */
function targetsFor(rows: number, start: number, count: number, seed: number): Int32Array {
  const r = rng(seed);
  const cases = [-1, start - 1, start, start + count - 1, start + count, start + Math.floor(r() * count), 1 << 30];
  return Int32Array.from({ length: rows }, (_, i) => (i < cases.length ? cases[i] : start + Math.floor(r() * count)));
}

/**
 * Values k/8 for integers |k| ≤ 8, times `scale` (a multiple of 1/4 keeps them exact): every product and partial sum
 * of a dot product over ≤ 256 terms is then exact in float32, so every backend computes bit-identical logits
 * whatever its summation order, and max, argmax (ties included) and target can be compared exactly.
 */
function dyadicMatrix(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => ((Math.floor(r() * 17) - 8) / 8) * scale);
}

/** max over rows of |got − want| / want, for positive values (sumExp ≥ 1). */
function rowRelError(got: Float32Array, want: Float32Array): number {
  expect(got.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / want[i]);
  return worst;
}

/** NaN exactly where ref has NaN; elsewhere within `tol` (norm-wise), or equal when tol is 0. */
function expectTargets(got: Float32Array, want: Float32Array, tol: number): void {
  expect(Array.from(got, Number.isNaN)).toEqual(Array.from(want, Number.isNaN));
  const keep = (a: Float32Array): Float32Array => a.filter((v) => !Number.isNaN(v));
  if (tol === 0) expect(keep(got)).toEqual(keep(want));
  else expect(relError(keep(got), keep(want))).toBeLessThan(tol);
}

/** Every field holds one value per row: nothing of size [rows, count] came back. */
function expectRowSized(stats: LogitStats, rows: number): void {
  expect(Object.keys(stats).sort()).toEqual(['argmax', 'max', 'sumExp', 'target']);
  for (const a of Object.values(stats)) expect((a as Float32Array | Int32Array).length).toBe(rows);
  expect(stats.argmax).toBeInstanceOf(Int32Array);
}

/** Rows whose two largest ref logits are further apart than `gap`: their argmax is not a near-tie. */
function clearArgmaxRows(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  hidden: number,
  count: number,
  gap: number,
): number[] {
  const logits = linearRef(x, w, rows, hidden, count);
  const clear: number[] = [];
  for (let r = 0; r < rows; r++) {
    const row = Array.from(logits.subarray(r * count, (r + 1) * count)).sort((a, b) => b - a);
    if (count === 1 || row[0] - row[1] > gap) clear.push(r);
  }
  return clear;
}

/** The checks every non-reference backend must pass. */
function fusedSuite(get: () => Backend): void {
  test.each(ATTENTION_SHAPES)('attention H=%i T=%i dk=%i dv=%i equals ref', async (H, T, dk, dv) => {
    const q = randomMatrix(H * T * dk, 1 + T);
    const k = randomMatrix(H * T * dk, 2 + T);
    const v = randomMatrix(H * T * dv, 3 + T);
    const scale = 1 / Math.sqrt(dk);
    const got = await get().attention(q, k, v, H, T, dk, dv, scale);
    expect(got).toBeInstanceOf(Float32Array);
    expect(got.length).toBe(H * T * dv);
    expect(relError(got, attentionRef(q, k, v, H, T, dk, dv, scale))).toBeLessThan(ATTENTION_TOL);
    if (T === 1) expect(relError(got, v)).toBeLessThan(ATTENTION_TOL); // one position: its own value
  });

  test('attention with scores in the hundreds (max subtraction matters) equals ref', async () => {
    const [H, T, dk, dv] = [2, 33, 64, 32];
    // Exact inputs (see dyadicMatrix) make the scores exact in float32 too, so only softmax and the second product
    // differ from ref; with random floats the scores alone would carry ≈ 1e-5 relative error at this magnitude.
    const q = dyadicMatrix(H * T * dk, 4, 16);
    const k = dyadicMatrix(H * T * dk, 5);
    const v = randomMatrix(H * T * dv, 6);
    const scores = linearRef(q.subarray(0, T * dk), k.subarray(0, T * dk), T, dk, T); // head 0, [T, T]
    // a visible score whose exp is ∞ in float32
    expect(Math.max(...scores.filter((_, i) => i % T <= Math.floor(i / T)))).toBeGreaterThan(89);
    expect(
      relError(await get().attention(q, k, v, H, T, dk, dv, 1), attentionRef(q, k, v, H, T, dk, dv, 1)),
    ).toBeLessThan(ATTENTION_TOL);
  });

  test.each([
    [8, 2, 33, 64, 64, {}],
    [6, 6, 20, 48, 32, {}],
    [4, 1, 33, 32, 32, { window: 5 }],
    [4, 2, 17, 16, 16, { sinks: Float32Array.of(0.5, -1, 2, 0) }],
  ])('attentionTokens H=%i KV=%i T=%i dk=%i dv=%i %j equals head-major ref', async (H, KV, T, dk, dv, opts) => {
    const q = randomMatrix(T * H * dk, 7 + T);
    const k = randomMatrix(T * KV * dk, 8 + T);
    const v = randomMatrix(T * KV * dv, 9 + T);
    const scale = 1 / Math.sqrt(dk);
    // the definition: head-major operands, head h reading key/value head ⌊h / (H / KV)⌋
    const heads = (x: Float32Array, n: number, d: number) => headMajor(x, T, H, n, d);
    const want = tokenMajor(
      attentionRef(heads(q, H, dk), heads(k, KV, dk), heads(v, KV, dv), H, T, dk, dv, scale, opts),
      T,
      H,
      dv,
    );
    const into = new Float32Array(T * H * dv + 3).subarray(1, 1 + T * H * dv);
    const got = await get().attentionTokens(q, k, v, T, H, KV, dk, dv, scale, opts, into);
    expect(got).toBe(into);
    expect(relError(got, want)).toBeLessThan(ATTENTION_TOL);
    expect(relError(await get().attentionTokens(q, k, v, T, H, KV, dk, dv, scale, opts), want)).toBeLessThan(
      ATTENTION_TOL,
    );
  });

  test('attention of zero heads or zero positions is empty', async () => {
    expect(
      (await get().attention(new Float32Array(0), new Float32Array(0), new Float32Array(0), 0, 5, 8, 8, 1)).length,
    ).toBe(0);
    expect(
      (await get().attention(new Float32Array(0), new Float32Array(0), new Float32Array(0), 4, 0, 8, 8, 1)).length,
    ).toBe(0);
  });

  test.each(SWIGLU_SHAPES)('swiglu rows=%i hidden=%i width=%i equals ref, act too', async (rows, hidden, width) => {
    const x = randomMatrix(rows * hidden, 7 + rows);
    const gateUp = randomMatrix(2 * width * hidden, 8 + width).map((a) => 0.2 * a);
    const down = randomMatrix(hidden * width, 9 + hidden).map((a) => 0.2 * a);
    const want = swigluRef(x, gateUp, down, rows, hidden, width);
    const plain = await get().swiglu(x, gateUp, down, rows, hidden, width, false);
    expect(plain.act).toBeUndefined();
    expect(plain.out.length).toBe(rows * hidden);
    expect(relError(plain.out, want.out)).toBeLessThan(SWIGLU_TOL);
    const withAct = await get().swiglu(x, gateUp, down, rows, hidden, width, true);
    expect(relError(withAct.out, want.out)).toBeLessThan(SWIGLU_TOL);
    expect(withAct.act).toBeInstanceOf(Float32Array);
    expect(relError(withAct.act!, want.act)).toBeLessThan(SWIGLU_TOL);
    // into a caller's buffer (a view inside a larger array): written there and returned, act still its own
    const room = new Float32Array(rows * hidden + 2).fill(7);
    const into = room.subarray(1, 1 + rows * hidden);
    const given = await get().swiglu(x, gateUp, down, rows, hidden, width, true, undefined, into);
    expect(given.out).toBe(into);
    expect(relError(into, want.out)).toBeLessThan(SWIGLU_TOL);
    expect([room[0], room[room.length - 1]]).toEqual([7, 7]);
    expect(relError(given.act!, want.act)).toBeLessThan(SWIGLU_TOL);
    const y = new Float32Array(rows * width);
    expect(await get().linear(x, gateUp.subarray(0, width * hidden), rows, hidden, width, undefined, y)).toBe(y);
    expect(relError(y, linearRef(x, gateUp.subarray(0, width * hidden), rows, hidden, width))).toBeLessThan(SWIGLU_TOL);
  });

  test('swiglu of zero rows is empty, act too', async () => {
    const [hidden, width] = [64, 32];
    const r = await get().swiglu(
      new Float32Array(0),
      randomMatrix(2 * width * hidden, 1),
      randomMatrix(hidden * width, 2),
      0,
      hidden,
      width,
      true,
    );
    expect(r.out.length).toBe(0);
    expect(r.act?.length).toBe(0);
  });

  test.each(STATS_SHAPES)(
    'logitStats rows=%i hidden=%i count=%i equals ref on float inputs',
    async (rows, hidden, count) => {
      for (const [scale, start] of [
        [1, 0],
        [50, 5000],
      ]) {
        const x = randomMatrix(rows * hidden, 10 + rows).map((a) => scale * a);
        const w = randomMatrix(count * hidden, 11 + count);
        const targets = targetsFor(rows, start, count, 12);
        const got = await get().logitStats(x, w, rows, hidden, count, targets, start);
        const want = logitStatsRef(x, w, rows, hidden, count, targets, start);
        expectRowSized(got, rows);
        // Float32 logits differ from ref's (float64 dot products, then rounded) by a few ulps: close, not equal.
        // sumExp's relative error is the logits' absolute error, which grows with their size: hence × scale.
        expect(relError(got.max, want.max)).toBeLessThan(STATS_TOL);
        expect(rowRelError(got.sumExp, want.sumExp)).toBeLessThan(STATS_TOL * scale);
        expectTargets(got.target, want.target, STATS_TOL);
        for (const r of clearArgmaxRows(x, w, rows, hidden, count, 1e-3 * scale))
          expect([r, got.argmax[r]]).toEqual([r, want.argmax[r]]);
      }
    },
  );

  test.each(STATS_SHAPES)(
    'logitStats rows=%i hidden=%i count=%i on exact inputs with logits in the hundreds: max, argmax, target exact',
    async (rows, hidden, count) => {
      // logits up to ~±1000: exp overflows without the max subtracted
      const x = dyadicMatrix(rows * hidden, 13 + rows, 50);
      const w = dyadicMatrix(count * hidden, 14 + count);
      const start = 300;
      const targets = targetsFor(rows, start, count, 15);
      const got = await get().logitStats(x, w, rows, hidden, count, targets, start);
      const want = logitStatsRef(x, w, rows, hidden, count, targets, start);
      expectRowSized(got, rows);
      expect(Math.max(...want.max.map(Math.abs))).toBeGreaterThan(104); // exp(l) for |l| > 104 is ∞ or 0 in float32
      expect(got.max).toEqual(want.max);
      expect(got.argmax).toEqual(want.argmax);
      expectTargets(got.target, want.target, 0);
      expect(rowRelError(got.sumExp, want.sumExp)).toBeLessThan(STATS_TOL);
    },
  );

  test('logitStats ties go to the lowest index', async () => {
    const [rows, hidden, half] = [37, 64, 500];
    const x = dyadicMatrix(rows * hidden, 16);
    const w0 = dyadicMatrix(half * hidden, 17);
    const w = new Float32Array(2 * half * hidden);
    w.set(w0);
    w.set(w0, half * hidden); // logit i and i + 500 are equal in every row
    const got = await get().logitStats(x, w, rows, hidden, 2 * half, new Int32Array(rows).fill(-1), 0);
    const want = logitStatsRef(x, w, rows, hidden, 2 * half, new Int32Array(rows).fill(-1), 0);
    expect(got.argmax).toEqual(want.argmax);
    for (const a of got.argmax) expect(a).toBeLessThan(half);
    expect(Array.from(got.target).every(Number.isNaN)).toBe(true);
  });

  test('logitStats of zero rows is empty', async () => {
    const stats = await get().logitStats(
      new Float32Array(0),
      randomMatrix(1000 * 64, 1),
      0,
      64,
      1000,
      new Int32Array(0),
      0,
    );
    expectRowSized(stats, 0);
  });
}

describe('RefBackend fused ops (hand-computed)', () => {
  const ref = new RefBackend();

  test('attentionTokens is the head-major attention of the regrouped heads, exactly', async () => {
    const [H, KV, T, d] = [6, 2, 9, 8];
    const [q, k, v] = [H, KV, KV].map((n, i) => randomMatrix(T * n * d, 20 + i));
    const hm = (x: Float32Array, n: number) => headMajor(x, T, H, n, d);
    const opts = { window: 4, sinks: Float32Array.of(1, 0, -1, 2, 0.5, 0) };
    const want = tokenMajor(attentionRef(hm(q, H), hm(k, KV), hm(v, KV), H, T, d, d, 0.3, opts), T, H, d);
    expect(await ref.attentionTokens(q, k, v, T, H, KV, d, d, 0.3, opts)).toEqual(want);
    await expect(ref.attentionTokens(q, k, v, T, H, 4, d, d, 0.3)).rejects.toThrow(/do not divide/);
  });

  test('attention: T = 1 returns v; T = 2 weighs by the softmax of the scaled scores', async () => {
    const v = new Float32Array([0.5, -2, 7]);
    expect(await ref.attention(new Float32Array([1, 2]), new Float32Array([3, 4]), v, 1, 1, 2, 3, 0.7)).toEqual(v);
    // q1·k0 = 0, q1·k1 = 2·ln 3 with scale ½ → ln 3: softmax [¼, ¾]; row 0 sees only position 0.
    const out = await ref.attention(
      new Float32Array([5, 1]),
      new Float32Array([0, 2 * Math.log(3)]),
      new Float32Array([4, 8]),
      1,
      2,
      1,
      1,
      0.5,
    );
    expect(out[0]).toBe(4);
    expect(out[1]).toBeCloseTo(7, 5);
  });

  test('the causal mask is 0 on and below the diagonal, −∞ above', () => {
    expect(Array.from(causalMask(3))).toEqual([0, -Infinity, -Infinity, 0, 0, -Infinity, 0, 0, 0]);
    expect(Array.from(causalMask(1))).toEqual([0]);
  });

  test('swiglu: silu(x·gate)·(x·up), then ·down', async () => {
    // x = 2, gate = 1, up = 3, down = 0.5: g = 2, u = 6, act = 6·2/(1 + e⁻²), out = act / 2.
    const act = (6 * 2) / (1 + Math.exp(-2));
    const r = await ref.swiglu(new Float32Array([2]), new Float32Array([1, 3]), new Float32Array([0.5]), 1, 1, 1, true);
    expect(r.act![0]).toBeCloseTo(act, 5);
    expect(r.out[0]).toBeCloseTo(act / 2, 5);
    expect(
      (await ref.swiglu(new Float32Array([2]), new Float32Array([1, 3]), new Float32Array([0.5]), 1, 1, 1, false)).act,
    ).toBeUndefined();
  });

  test('logitStats: max, Σexp, first argmax, target in block or NaN; an empty block', async () => {
    const x = new Float32Array([1, 0, 0, 1]); // two rows
    const w = new Float32Array([2, 0, 0, 3, 1, 1, 0, 3]); // logits row 0: [2, 0, 1, 0]; row 1: [0, 3, 1, 3]
    const s = await ref.logitStats(x, w, 2, 2, 4, new Int32Array([12, 9]), 10);
    expect(Array.from(s.max)).toEqual([2, 3]);
    expect(s.sumExp[0]).toBeCloseTo(1 + 2 * Math.exp(-2) + Math.exp(-1), 6);
    expect(s.sumExp[1]).toBeCloseTo(2 + Math.exp(-3) + Math.exp(-2), 6);
    expect(Array.from(s.argmax)).toEqual([0, 1]); // row 1 ties at 1 and 3
    expect(s.target[0]).toBe(1); // id 12 = column 2
    expect(s.target[1]).toBeNaN(); // id 9 is before the block
    const empty = await ref.logitStats(x, new Float32Array(0), 2, 2, 0, new Int32Array([0, -1]), 0);
    expect(Array.from(empty.max)).toEqual([-Infinity, -Infinity]);
    expect(Array.from(empty.sumExp)).toEqual([0, 0]);
    expect(Array.from(empty.argmax)).toEqual([-1, -1]);
    expect(Array.from(empty.target).every(Number.isNaN)).toBe(true);
  });

  test('rejects arrays that do not match the dimensions', async () => {
    await expect(
      ref.attention(new Float32Array(8), new Float32Array(8), new Float32Array(7), 1, 2, 4, 4, 1),
    ).rejects.toThrow(/v should hold/);
    await expect(
      ref.attention(new Float32Array(8), new Float32Array(8), new Float32Array(8), 1, 2, 4, 4, NaN),
    ).rejects.toThrow(/scale/);
    await expect(
      ref.swiglu(new Float32Array(4), new Float32Array(8), new Float32Array(3), 1, 4, 1, false),
    ).rejects.toThrow(/down should hold/);
    await expect(
      ref.logitStats(new Float32Array(4), new Float32Array(8), 1, 4, 2, new Int32Array(2), 0),
    ).rejects.toThrow(/targets should hold/);
  });
});

describe('OnnxBackend fused ops', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  fusedSuite(() => onnx);

  test('the shapes above reach onnxruntime, not only the small-product fallback', async () => {
    expect(4 * 1 * 1 * (1024 + 1100)).toBeGreaterThan(TINY_PRODUCT_MACS); // T = 1 in onnxruntime
    expect(37 * 256 * 1).toBeGreaterThan(TINY_PRODUCT_MACS); // count = 1 in onnxruntime
    expect(1 * 1 * 1 * 16).toBeLessThan(TINY_PRODUCT_MACS);
    const sessions = (onnx as unknown as { sessions: Map<string, Promise<{ outputNames: readonly string[] }>> })
      .sessions;
    expect([...sessions.keys()].sort()).toEqual([
      'attention',
      'attentionSinks',
      'attentionTokens',
      'linear',
      'logitStats',
      'swiglu',
    ]);
    // The logits are an intermediate of the graph, never one of its outputs.
    expect((await sessions.get('logitStats')!).outputNames).toEqual(['Max', 'SumExp', 'ArgMax', 'Target']);
  });
});

/** tfjs-core on the wasm backend, its .wasm files read from node_modules. */
async function startWasm(): Promise<TfLike> {
  const tf = require('@tensorflow/tfjs-core');
  if (tf.getBackend() !== 'wasm') {
    require('@tensorflow/tfjs-backend-wasm').setWasmPaths(
      path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep,
    );
    expect(await tf.setBackend('wasm')).toBe(true);
  }
  await tf.ready();
  return tf as TfLike;
}

describe('TfjsBackend fused ops on tfjs-backend-wasm', () => {
  let tfjs: TfjsBackend;
  beforeAll(async () => {
    tfjs = new TfjsBackend(await startWasm());
    expect(tfjs.tf.getBackend()).toBe('wasm');
  });

  fusedSuite(() => tfjs);

  test('frees every tensor it makes', async () => {
    const tf = require('@tensorflow/tfjs-core');
    const before = tf.memory().numTensors;
    await tfjs.attention(
      randomMatrix(2 * 40 * 16, 1),
      randomMatrix(2 * 40 * 16, 2),
      randomMatrix(2 * 40 * 8, 3),
      2,
      40,
      16,
      8,
      0.25,
    );
    await tfjs.swiglu(randomMatrix(40 * 16, 1), randomMatrix(2 * 8 * 16, 2), randomMatrix(16 * 8, 3), 40, 16, 8, true);
    await tfjs.logitStats(
      randomMatrix(40 * 16, 1),
      randomMatrix(50 * 16, 2),
      40,
      16,
      50,
      new Int32Array(40).fill(3),
      0,
    );
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('TfjsBackend fused ops on a non-wasm tfjs (batched products, as tfjs-node-gpu would run them)', () => {
  let generic: TfjsBackend;
  beforeAll(async () => {
    generic = new TfjsBackend({ ...(await startWasm()), getBackend: () => 'tensorflow' });
  });

  test.each(ATTENTION_SHAPES.filter(([, T]) => T > 1))(
    'attention H=%i T=%i dk=%i dv=%i equals ref',
    async (H, T, dk, dv) => {
      const q = randomMatrix(H * T * dk, 21);
      const k = randomMatrix(H * T * dk, 22);
      const v = randomMatrix(H * T * dv, 23);
      expect(
        relError(await generic.attention(q, k, v, H, T, dk, dv, 0.125), attentionRef(q, k, v, H, T, dk, dv, 0.125)),
      ).toBeLessThan(ATTENTION_TOL);
    },
  );

  test('swiglu and logitStats equal ref', async () => {
    const [rows, hidden, width, count] = [40, 96, 72, 300];
    const x = randomMatrix(rows * hidden, 1);
    const gateUp = randomMatrix(2 * width * hidden, 2).map((a) => 0.2 * a);
    const down = randomMatrix(hidden * width, 3).map((a) => 0.2 * a);
    const got = await generic.swiglu(x, gateUp, down, rows, hidden, width, true);
    const want = swigluRef(x, gateUp, down, rows, hidden, width);
    expect(relError(got.out, want.out)).toBeLessThan(SWIGLU_TOL);
    expect(relError(got.act!, want.act)).toBeLessThan(SWIGLU_TOL);
    const xs = dyadicMatrix(rows * hidden, 4, 50);
    const w = dyadicMatrix(count * hidden, 5);
    const targets = targetsFor(rows, 100, count, 6);
    const stats = await generic.logitStats(xs, w, rows, hidden, count, targets, 100);
    const ref = logitStatsRef(xs, w, rows, hidden, count, targets, 100);
    expect(stats.max).toEqual(ref.max);
    expect(stats.argmax).toEqual(ref.argmax);
    expectTargets(stats.target, ref.target, 0);
    expect(rowRelError(stats.sumExp, ref.sumExp)).toBeLessThan(STATS_TOL);
  });
});
