/**
 * @jest-environment ./test/backend/ort-environment.js
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InternalError, UsageError } from '../../src/errors';
import { OnnxBackend, TINY_PRODUCT_MACS } from '../../src/backend/onnx';
import { bmmModel, linearModel, IR_VERSION } from '../../src/backend/onnx-graph';
import { bmmRef, linearRef } from '../../src/backend/ref';
import { BMM_SHAPES, LINEAR_SHAPES, randomMatrix, relError } from './matrices';

const TOL = 1e-4;

describe('onnx-graph', () => {
  test('encodes ModelProto bytes that start with ir_version and name the ops', () => {
    const bytes = linearModel(true);
    expect(bytes[0]).toBe(0x08); // field 1, varint
    expect(bytes[1]).toBe(IR_VERSION);
    const text = Buffer.from(bytes).toString('latin1');
    expect(text).toContain('Gemm');
    expect(text).toContain('transB');
    expect(Buffer.from(bmmModel(true)).toString('latin1')).toContain('Transpose');
    expect(Buffer.from(bmmModel(false)).toString('latin1')).not.toContain('Transpose');
  });
});

describe('OnnxBackend (CPU)', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  test.each(LINEAR_SHAPES)('linear %i×%i×%i equals ref, with and without bias', async (t, i, o) => {
    const x = randomMatrix(t * i, 10 + t);
    const w = randomMatrix(o * i, 20 + o);
    const b = randomMatrix(o, 30 + o);
    for (const bias of [undefined, b]) {
      const got = await onnx.linear(x, w, t, i, o, bias);
      expect(got).toBeInstanceOf(Float32Array);
      expect(got.length).toBe(t * o);
      expect(relError(got, linearRef(x, w, t, i, o, bias))).toBeLessThan(TOL);
    }
  });

  test.each(BMM_SHAPES)('bmm %i×%i×%i×%i equals ref, transB false and true', async (batch, m, k, n) => {
    const a = randomMatrix(batch * m * k, 40 + m);
    const b = randomMatrix(batch * k * n, 50 + n);
    for (const transB of [false, true]) {
      const got = await onnx.bmm(a, b, batch, m, k, n, transB);
      expect(got.length).toBe(batch * m * n);
      expect(relError(got, bmmRef(a, b, batch, m, k, n, transB))).toBeLessThan(TOL);
    }
  });

  test('the shapes above reach onnxruntime, not only the small-product fallback', () => {
    expect(64 * 512 * 384).toBeGreaterThan(TINY_PRODUCT_MACS);
    expect(4 * 33 * 64 * 65).toBeGreaterThan(TINY_PRODUCT_MACS);
    expect(7 * 13 * 5).toBeLessThan(TINY_PRODUCT_MACS);
  });

  test('one session per graph, reused across shapes', async () => {
    const b = await OnnxBackend.create({ threads: 1 });
    try {
      for (const [t, i, o] of [
        [64, 128, 96],
        [100, 64, 200],
        [1, 1024, 512],
      ]) {
        const x = randomMatrix(t * i, 1);
        const w = randomMatrix(o * i, 2);
        expect(relError(await b.linear(x, w, t, i, o), linearRef(x, w, t, i, o))).toBeLessThan(TOL);
      }
      expect((b as unknown as { sessions: Map<string, unknown> }).sessions.size).toBe(1);
    } finally {
      await b.dispose();
    }
  });

  test('zero tokens return an empty array', async () => {
    const w = randomMatrix(384 * 512, 3);
    const y = await onnx.linear(new Float32Array(0), w, 0, 512, 384, randomMatrix(384, 4));
    expect(y).toBeInstanceOf(Float32Array);
    expect(y.length).toBe(0);
    expect((await onnx.bmm(new Float32Array(0), randomMatrix(4 * 64 * 64, 5), 4, 0, 64, 64, true)).length).toBe(0);
  });

  test('a large product with bias, element by element against ref', async () => {
    const [t, i, o] = [16, 1024, 64];
    const x = randomMatrix(t * i, 6);
    const w = randomMatrix(o * i, 7);
    const b = randomMatrix(o, 8);
    const got = await onnx.linear(x, w, t, i, o, b);
    const want = linearRef(x, w, t, i, o, b);
    for (let j = 0; j < want.length; j++) expect(Math.abs(got[j] - want[j])).toBeLessThan(1e-3);
  });

  test('wrong array lengths are caller bugs', async () => {
    await expect(onnx.linear(new Float32Array(10), new Float32Array(6), 2, 3, 2)).rejects.toThrow(InternalError);
  });

  test('used after dispose() it fails instead of reopening sessions', async () => {
    const b = await OnnxBackend.create({ threads: 1 });
    const x = randomMatrix(64 * 64, 1);
    await b.linear(x, x, 64, 64, 64);
    await b.dispose();
    await expect(b.linear(x, x, 64, 64, 64)).rejects.toThrow(/after dispose/);
  });

  test('threads default to the core count and are validated', async () => {
    const b = await OnnxBackend.create();
    expect(b.threads).toBe(require('node:os').availableParallelism());
    await b.dispose();
    await expect(OnnxBackend.create({ threads: 0 })).rejects.toThrow(UsageError);
    await expect(OnnxBackend.create({ threads: 1.5 })).rejects.toThrow(/--threads/);
  });
});

describe('OnnxBackend (CUDA)', () => {
  const binDir = path.join(
    path.dirname(require.resolve('onnxruntime-node/package.json')),
    'bin',
    'napi-v6',
    process.platform,
    process.arch,
  );
  const hasCudaLib = fs.existsSync(path.join(binDir, 'libonnxruntime_providers_cuda.so'));

  (hasCudaLib ? test.skip : test)(
    `without the CUDA provider, device cuda is a UsageError that says what to install${hasCudaLib ? ' (skipped: the CUDA provider is installed; the next test checks it)' : ''}`,
    async () => {
      const err = await OnnxBackend.create({ device: 'cuda' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UsageError);
      expect((err as UsageError).line()).toMatch(/CUDA provider.*ONNXRUNTIME_NODE_INSTALL=cuda12.*--device cpu/);
    },
  );

  (hasCudaLib ? test : test.skip)(
    `with the CUDA provider installed, results equal ref or creation fails with a UsageError${hasCudaLib ? '' : ' (skipped: no libonnxruntime_providers_cuda.so; ONNXRUNTIME_NODE_INSTALL=cuda12 installs it)'}`,
    async () => {
      let b: OnnxBackend;
      try {
        b = await OnnxBackend.create({ device: 'cuda' });
      } catch (e) {
        expect(e).toBeInstanceOf(UsageError);
        return;
      }
      const x = randomMatrix(64 * 256, 1);
      const w = randomMatrix(128 * 256, 2);
      expect(relError(await b.linear(x, w, 64, 256, 128), linearRef(x, w, 64, 256, 128))).toBeLessThan(TOL);
      await b.dispose();
    },
  );
});
