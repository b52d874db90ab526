/**
 * The default thread count of the onnx backend and of RTN's worker pool when `--threads` is not given: MOE_THREADS
 * when set (as OMP_NUM_THREADS is for OpenMP programs: a machine running several jobs side by side gives each a
 * share of its cores), else every core (os.availableParallelism()).
 */
import * as os from 'node:os';
import { UsageError } from '../errors';

export function defaultThreads(): number {
  const env = process.env.MOE_THREADS;
  if (env === undefined || env === '') return os.availableParallelism();
  const n = Number(env);
  if (!Number.isInteger(n) || n < 1)
    throw new UsageError(`MOE_THREADS must be a positive integer, got "${env}"`, {
      hint: 'unset it to use every core, or pass --threads N',
    });
  return n;
}
