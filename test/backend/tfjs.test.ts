import * as path from 'node:path';
import { UsageError } from '../../src/errors';
import { loadTfjs, TfjsBackend, type TfLike } from '../../src/backend/tfjs';
import { createBackend } from '../../src/backend/index';
import { bmmRef, linearRef } from '../../src/backend/ref';
import { BMM_SHAPES, LINEAR_SHAPES, randomMatrix, relError } from './matrices';

const TOL = 1e-4;

function installed(name: string): boolean {
  try {
    require.resolve(name);
    return true;
  } catch {
    return false;
  }
}

describe('TfjsBackend on tfjs-core + tfjs-backend-wasm', () => {
  let tfjs: TfjsBackend;
  beforeAll(async () => {
    // The same adapter tfjs-node-gpu would get, fed the wasm backend, with its .wasm read from node_modules.
    const tf = require('@tensorflow/tfjs-core');
    const wasm = require('@tensorflow/tfjs-backend-wasm');
    wasm.setWasmPaths(
      path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep,
    );
    expect(await tf.setBackend('wasm')).toBe(true);
    await tf.ready();
    tfjs = new TfjsBackend(tf as TfLike);
    expect(tfjs.tf.getBackend()).toBe('wasm');
  });

  test.each(LINEAR_SHAPES)('linear %i×%i×%i equals ref, with and without bias', async (t, i, o) => {
    const x = randomMatrix(t * i, 10 + t);
    const w = randomMatrix(o * i, 20 + o);
    const b = randomMatrix(o, 30 + o);
    for (const bias of [undefined, b]) {
      const got = await tfjs.linear(x, w, t, i, o, bias);
      expect(got).toBeInstanceOf(Float32Array);
      expect(got.length).toBe(t * o);
      expect(relError(got, linearRef(x, w, t, i, o, bias))).toBeLessThan(TOL);
    }
  });

  test.each(BMM_SHAPES)('bmm %i×%i×%i×%i equals ref, transB false and true', async (batch, m, k, n) => {
    const a = randomMatrix(batch * m * k, 40 + m);
    const b = randomMatrix(batch * k * n, 50 + n);
    for (const transB of [false, true]) {
      const got = await tfjs.bmm(a, b, batch, m, k, n, transB);
      expect(got.length).toBe(batch * m * n);
      expect(relError(got, bmmRef(a, b, batch, m, k, n, transB))).toBeLessThan(TOL);
    }
  });

  test('a hand-computed linear with bias', async () => {
    const x = new Float32Array([1, 2, 3, 4, 5, 6]); // [2, 3]
    const w = new Float32Array([1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 2]); // [4, 3]
    const b = new Float32Array([10, 20, 30, 40]);
    expect(Array.from(await tfjs.linear(x, w, 2, 3, 4, b))).toEqual([11, 22, 36, 46, 14, 25, 45, 52]);
  });

  test('zero tokens return an empty array', async () => {
    const y = await tfjs.linear(new Float32Array(0), randomMatrix(5 * 7, 1), 0, 7, 5, randomMatrix(5, 2));
    expect(y).toBeInstanceOf(Float32Array);
    expect(y.length).toBe(0);
  });

  test('frees every tensor it makes', async () => {
    const tf = require('@tensorflow/tfjs-core');
    const before = tf.memory().numTensors;
    await tfjs.linear(randomMatrix(8 * 16, 1), randomMatrix(4 * 16, 2), 8, 16, 4, randomMatrix(4, 3));
    await tfjs.bmm(randomMatrix(2 * 8 * 16, 1), randomMatrix(2 * 16 * 4, 2), 2, 8, 16, 4, true);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('TfjsBackend on a non-wasm tfjs (as tfjs-node-gpu would be)', () => {
  // The adapter sends batched and transposed products straight to tfjs unless the backend is wasm. This runs
  // that path on the wasm kernels, behind a namespace that reports another backend name.
  let generic: TfjsBackend;
  beforeAll(async () => {
    const tf = require('@tensorflow/tfjs-core');
    const wasm = require('@tensorflow/tfjs-backend-wasm');
    if (tf.getBackend() !== 'wasm') {
      wasm.setWasmPaths(
        path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep,
      );
      await tf.setBackend('wasm');
    }
    await tf.ready();
    generic = new TfjsBackend({ ...tf, getBackend: () => 'tensorflow' } as TfLike);
  });

  test.each(BMM_SHAPES.slice(0, 5))('bmm %i×%i×%i×%i equals ref in one batched call', async (batch, m, k, n) => {
    const a = randomMatrix(batch * m * k, 60 + m);
    const b = randomMatrix(batch * k * n, 70 + n);
    for (const transB of [false, true]) {
      expect(
        relError(await generic.bmm(a, b, batch, m, k, n, transB), bmmRef(a, b, batch, m, k, n, transB)),
      ).toBeLessThan(TOL);
    }
  });

  test('linear with bias equals ref through matMul(transposeB)', async () => {
    const [t, i, o] = [40, 96, 72];
    const x = randomMatrix(t * i, 1);
    const w = randomMatrix(o * i, 2);
    const b = randomMatrix(o, 3);
    expect(relError(await generic.linear(x, w, t, i, o, b), linearRef(x, w, t, i, o, b))).toBeLessThan(TOL);
  });
});

describe('loading tfjs', () => {
  const hasGpu = installed('@tensorflow/tfjs-node-gpu');

  const native = hasGpu || installed('@tensorflow/tfjs-node');
  (native ? test.skip : test)(
    `createBackend("tfjs") finds tfjs-core + wasm when tfjs-node-gpu is not installed${native ? ' (skipped: a native tfjs-node package is installed and takes precedence)' : ''}`,
    async () => {
      const b = await createBackend('tfjs');
      expect(b.name).toBe('tfjs');
      expect((b as TfjsBackend).tf.getBackend()).toBe('wasm');
      const x = randomMatrix(3 * 5, 1);
      const w = randomMatrix(2 * 5, 2);
      expect(relError(await b.linear(x, w, 3, 5, 2), linearRef(x, w, 3, 5, 2))).toBeLessThan(TOL);
      await b.dispose();
    },
  );

  (hasGpu ? test.skip : test)(
    `device cuda without tfjs-node-gpu is a UsageError naming the package to install${hasGpu ? ' (skipped: tfjs-node-gpu is installed)' : ''}`,
    async () => {
      const err = await loadTfjs('cuda').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UsageError);
      expect((err as UsageError).line()).toContain('npm install @tensorflow/tfjs-node-gpu');
    },
  );

  test('with no tfjs at all, the UsageError says what to npm install', async () => {
    await jest.isolateModulesAsync(async () => {
      for (const name of [
        '@tensorflow/tfjs-node-gpu',
        '@tensorflow/tfjs-node',
        '@tensorflow/tfjs-core',
        '@tensorflow/tfjs-backend-wasm',
      ]) {
        jest.doMock(
          name,
          () => {
            throw Object.assign(new Error(`Cannot find module '${name}'`), { code: 'MODULE_NOT_FOUND' });
          },
          { virtual: true },
        );
      }
      const { loadTfjs: load } = require('../../src/backend/tfjs');
      const { UsageError: IsolatedUsageError } = require('../../src/errors');
      const err = await load('cpu').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IsolatedUsageError);
      expect(err.line()).toMatch(
        /npm install @tensorflow\/tfjs-node-gpu.*npm install @tensorflow\/tfjs-core @tensorflow\/tfjs-backend-wasm/,
      );
    });
  });
});
