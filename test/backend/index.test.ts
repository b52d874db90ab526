/**
 * @jest-environment ./test/backend/ort-environment.js
 */
import { UsageError } from '../../src/errors';
import { BACKEND_NAMES, createBackend, DEFAULT_BACKEND, isBackendName } from '../../src/backend/index';
import { linearRef } from '../../src/backend/ref';
import { randomMatrix, relError } from './matrices';

describe('createBackend', () => {
  test('the CLI names, onnx first and default', () => {
    expect(BACKEND_NAMES).toEqual(['onnx', 'tfjs', 'ref']);
    expect(DEFAULT_BACKEND).toBe('onnx');
    expect(isBackendName('ref')).toBe(true);
    expect(isBackendName('torch')).toBe(false);
  });

  test.each(['onnx', 'ref'] as const)('%s computes a linear', async (name) => {
    const b = await createBackend(name, { threads: 1 });
    expect(b.name).toBe(name);
    const [t, i, o] = [32, 48, 40];
    const x = randomMatrix(t * i, 1);
    const w = randomMatrix(o * i, 2);
    expect(relError(await b.linear(x, w, t, i, o), linearRef(x, w, t, i, o))).toBeLessThan(1e-4);
    await b.dispose();
  });

  test('unknown names and ref on cuda are usage errors', async () => {
    await expect(createBackend('torch' as never)).rejects.toThrow(UsageError);
    await expect(createBackend('ref', { device: 'cuda' })).rejects.toThrow(/CPU only/);
  });
});
