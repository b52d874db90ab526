/**
 * MOE_THREADS: the default of --threads for the onnx backend (and RTN's worker pool, src/quant/execute.ts).
 */
import * as os from 'node:os';
import { createBackend } from '../../src/backend';
import { defaultThreads } from '../../src/backend/threads';
import { UsageError } from '../../src/errors';

describe('MOE_THREADS', () => {
  const saved = process.env.MOE_THREADS;
  afterEach(() => {
    if (saved === undefined) delete process.env.MOE_THREADS;
    else process.env.MOE_THREADS = saved;
  });

  test('unset or empty: every core; set: that many; --threads wins over it', async () => {
    delete process.env.MOE_THREADS;
    expect(defaultThreads()).toBe(os.availableParallelism());
    process.env.MOE_THREADS = '';
    expect(defaultThreads()).toBe(os.availableParallelism());
    process.env.MOE_THREADS = '3';
    expect(defaultThreads()).toBe(3);
    const be = (await createBackend('onnx')) as unknown as { threads: number };
    expect(be.threads).toBe(3);
    const explicit = (await createBackend('onnx', { threads: 1 })) as unknown as { threads: number };
    expect(explicit.threads).toBe(1);
  });

  test.each(['0', '-2', '1.5', 'two'])('MOE_THREADS=%s is refused in one line', (v) => {
    process.env.MOE_THREADS = v;
    expect(() => defaultThreads()).toThrow(UsageError);
    expect(() => defaultThreads()).toThrow(`MOE_THREADS must be a positive integer, got "${v}"`);
  });
});
