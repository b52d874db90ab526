/**
 * Picks a matmul backend by name (the CLI's `--backend`). Each backend module is loaded only when chosen, so
 * commands that never multiply do not pay for loading onnxruntime's native library.
 */
import { UsageError } from '../errors';
import type { Backend, BackendName } from './backend';

export type { Backend, BackendName } from './backend';

/** The values `--backend` accepts, the default first. */
export const BACKEND_NAMES: readonly BackendName[] = ['onnx', 'tfjs', 'ref'];
export const DEFAULT_BACKEND: BackendName = 'onnx';

export interface BackendOptions {
  /** 'cuda' asks onnx for its CUDA provider, or tfjs for tfjs-node-gpu; default 'cpu'. */
  device?: 'cpu' | 'cuda';
  /** Threads for the onnx backend (default: defaultThreads(): MOE_THREADS, else every core). */
  threads?: number;
}

export function isBackendName(s: unknown): s is BackendName {
  return typeof s === 'string' && (BACKEND_NAMES as readonly string[]).includes(s);
}

export async function createBackend(name: BackendName, opts: BackendOptions = {}): Promise<Backend> {
  switch (name) {
    case 'onnx': {
      const { OnnxBackend } = await import('./onnx');
      return OnnxBackend.create(opts);
    }
    case 'tfjs': {
      const { TfjsBackend } = await import('./tfjs');
      return TfjsBackend.create(opts);
    }
    case 'ref': {
      if (opts.device === 'cuda')
        throw new UsageError('the ref backend runs on the CPU only', {
          hint: 'use --backend onnx --device cuda, or drop --device',
        });
      const { RefBackend } = await import('./ref');
      return new RefBackend();
    }
    default:
      throw new UsageError(`unknown backend ${String(name)}`, { hint: `use one of ${BACKEND_NAMES.join(', ')}` });
  }
}
