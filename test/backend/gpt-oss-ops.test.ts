/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * gpt-oss's additions to the fused ops: attention with a sliding window and per-head sink logits, and the gated MLP
 * with biases and the clamped SwiGLU. Hand-computed values on the reference backend; then onnx and tfjs (wasm, and
 * batched as tfjs-node would run it) equal the reference on shapes past the onnx backend's small-product fallback.
 */
import * as path from 'node:path';
import type { Backend, GluOptions } from '../../src/backend/backend';
import { OnnxBackend, TINY_PRODUCT_MACS } from '../../src/backend/onnx';
import { attentionRef, causalMask, linearRef, RefBackend, swigluRef } from '../../src/backend/ref';
import { TfjsBackend, type TfLike } from '../../src/backend/tfjs';
import { randomMatrix, relError } from './matrices';

const ATTENTION_TOL = 1e-5;
const SWIGLU_TOL = 1e-4;
const ref = new RefBackend();
const f32 = (...v: number[]) => Float32Array.from(v);

describe('reference kernels (hand-computed)', () => {
  test('a sink takes its share of the softmax without a value', async () => {
    // one position, score ln 3, sink 0: p = 3 / (3 + 1)
    const out = await ref.attention(f32(1), f32(Math.log(3)), f32(8), 1, 1, 1, 1, 1, { sinks: f32(0) });
    expect(out[0]).toBeCloseTo(6, 5);
    // a sink far below the scores changes nothing
    expect((await ref.attention(f32(1), f32(2), f32(8), 1, 1, 1, 1, 1, { sinks: f32(-200) }))[0]).toBe(8);
  });

  test('a sliding window of w keeps the query and the w − 1 positions before it', async () => {
    const zeros = new Float32Array(3); // every score 0: uniform weights over the visible positions
    const v = f32(1, 2, 4);
    expect(Array.from(await ref.attention(zeros, zeros, v, 1, 3, 1, 1, 1))).toEqual([1, 1.5, Math.fround(7 / 3)]);
    expect(Array.from(await ref.attention(zeros, zeros, v, 1, 3, 1, 1, 1, { window: 2 }))).toEqual([1, 1.5, 3]);
    expect(Array.from(await ref.attention(zeros, zeros, v, 1, 3, 1, 1, 1, { window: 1 }))).toEqual([1, 2, 4]);
    // window and sink together: row 2 sees positions 1 and 2 and the sink, each exp(0)
    const both = await ref.attention(zeros, zeros, v, 1, 3, 1, 1, 1, { window: 2, sinks: f32(0) });
    expect(Array.from(both)).toEqual([0.5, 1, 2]);
  });

  test('the sliding causal mask', () => {
    const I = -Infinity;
    expect(Array.from(causalMask(4, 2))).toEqual([0, I, I, I, 0, 0, I, I, I, 0, 0, I, I, I, 0, 0]);
    expect(Array.from(causalMask(3, 5))).toEqual(Array.from(causalMask(3)));
  });

  test('biases and the clamped SwiGLU: gate ≤ limit, |up| ≤ limit, (up + 1) · gate · σ(alpha · gate)', async () => {
    const opts: GluOptions = {
      gateUpBias: f32(0.5, 0.25),
      downBias: f32(0.125),
      clamp: { alpha: 1.702, limit: 7 },
    };
    const sig = (z: number) => 1 / (1 + Math.exp(-z));
    // gate 10.5 → 7, up −8.75 → −7
    const hi = await ref.swiglu(f32(1), f32(10, -9), f32(0.5), 1, 1, 1, true, opts);
    const act = -6 * 7 * sig(1.702 * 7);
    expect(hi.act![0]).toBeCloseTo(act, 5);
    expect(hi.out[0]).toBeCloseTo(act * 0.5 + 0.125, 5);
    // in range: gate 1, up 2; gate −20 is not clamped from below
    const mid = await ref.swiglu(f32(1), f32(0.5, 1.75), f32(0.5), 1, 1, 1, true, opts);
    expect(mid.act![0]).toBeCloseTo(3 * sig(1.702), 5);
    const low = await ref.swiglu(f32(1), f32(-20.5, 1.75), f32(1), 1, 1, 1, true, opts);
    expect(low.act![0]).toBeCloseTo(3 * -20 * sig(-1.702 * 20), 12);
    // biases alone: silu(gate + b) · (up + b)
    const plain = await ref.swiglu(f32(1), f32(1.5, 2.75), f32(1), 1, 1, 1, true, { gateUpBias: f32(0.5, 0.25) });
    expect(plain.act![0]).toBeCloseTo(2 * sig(2) * 3, 5);
  });

  test('rejects options that do not match the dimensions', async () => {
    const q = new Float32Array(8);
    await expect(ref.attention(q, q, q, 2, 1, 4, 4, 1, { sinks: f32(1) })).rejects.toThrow(/sinks should hold/);
    await expect(ref.attention(q, q, q, 2, 1, 4, 4, 1, { window: 0 })).rejects.toThrow(/window must be/);
    await expect(ref.swiglu(f32(1), f32(1, 1), f32(1), 1, 1, 1, false, { gateUpBias: f32(1) })).rejects.toThrow(
      /gateUpBias should hold/,
    );
    await expect(ref.swiglu(f32(1), f32(1, 1), f32(1), 1, 1, 1, false, { downBias: f32(1, 2) })).rejects.toThrow(
      /downBias should hold/,
    );
  });
});

/** [heads, T, dk, dv, window]: every one past the onnx backend's small-product threshold. */
const SHAPES: [number, number, number, number, number | undefined][] = [
  [4, 33, 32, 16, 4],
  [2, 17, 64, 64, 1],
  [3, 9, 128, 64, undefined],
  [8, 40, 16, 16, 39],
];

function suite(get: () => Backend): void {
  test.each(SHAPES)('attention H=%i T=%i dk=%i dv=%i window=%s with sinks equals ref', async (H, T, dk, dv, window) => {
    expect(H * T * T * (dk + dv)).toBeGreaterThan(TINY_PRODUCT_MACS);
    const q = randomMatrix(H * T * dk, 1 + T).map((a) => 2 * a);
    const k = randomMatrix(H * T * dk, 2 + T);
    const v = randomMatrix(H * T * dv, 3 + T);
    const sinks = randomMatrix(H, 4 + T).map((a) => 3 * a);
    const scale = 1 / Math.sqrt(dk);
    for (const opts of [{ window }, { sinks }, { window, sinks }]) {
      const want = attentionRef(q, k, v, H, T, dk, dv, scale, opts);
      expect(relError(await get().attention(q, k, v, H, T, dk, dv, scale, opts), want)).toBeLessThan(ATTENTION_TOL);
    }
    // the options matter on these inputs
    expect(
      relError(attentionRef(q, k, v, H, T, dk, dv, scale, { sinks }), attentionRef(q, k, v, H, T, dk, dv, scale)),
    ).toBeGreaterThan(0.01);
  });

  test.each([
    [5, 64, 40],
    [64, 64, 16],
  ])('swiglu rows=%i hidden=%i width=%i with biases and the clamp equals ref, act too', async (rows, hidden, width) => {
    const x = randomMatrix(rows * hidden, 7 + rows);
    const gateUp = randomMatrix(2 * width * hidden, 8 + width).map((a) => 3 * a); // gate/up values of std ≈ 8
    const down = randomMatrix(hidden * width, 9 + hidden).map((a) => 0.2 * a);
    const gateUpBias = randomMatrix(2 * width, 10);
    const downBias = randomMatrix(hidden, 11);
    const clamped: GluOptions = { gateUpBias, downBias, clamp: { alpha: 1.702, limit: 7 } };
    for (const opts of [clamped, { gateUpBias, downBias }]) {
      const want = swigluRef(x, gateUp, down, rows, hidden, width, opts);
      const got = await get().swiglu(x, gateUp, down, rows, hidden, width, true, opts);
      expect(relError(got.out, want.out)).toBeLessThan(SWIGLU_TOL);
      expect(relError(got.act!, want.act)).toBeLessThan(SWIGLU_TOL);
    }
    const gu = linearRef(x, gateUp, rows, hidden, 2 * width, gateUpBias);
    expect(gu.filter((a) => Math.abs(a) > 7).length).toBeGreaterThan(rows); // the clamp takes effect
  });
}

describe('OnnxBackend', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  suite(() => onnx);

  test('ran its sink attention and glu graphs', () => {
    const sessions = (onnx as unknown as { sessions: Map<string, unknown> }).sessions;
    expect([...sessions.keys()].sort()).toEqual(['attention', 'attentionSinks', 'glu']);
  });
});

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

describe('TfjsBackend on tfjs-backend-wasm', () => {
  let tfjs: TfjsBackend;
  beforeAll(async () => {
    tfjs = new TfjsBackend(await startWasm());
  });
  suite(() => tfjs);
});

describe('TfjsBackend batched (as tfjs-node would run it)', () => {
  let generic: TfjsBackend;
  beforeAll(async () => {
    generic = new TfjsBackend({ ...(await startWasm()), getBackend: () => 'tensorflow' });
  });
  suite(() => generic);
});
