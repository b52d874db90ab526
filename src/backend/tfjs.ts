/**
 * The opt-in tfjs backend. `@tensorflow/tfjs-node-gpu` is never a dependency (its install step downloads
 * libtensorflow, which needs CUDA 11 and the network), so it is loaded only if the user installed it. The
 * adapter takes any tfjs namespace, which is how the tests run the same code on tfjs-core + the wasm backend.
 *
 * Loading order: tfjs-node-gpu, then tfjs-node (same API, CPU), then tfjs-core with tfjs-backend-wasm
 * (its .wasm files read from node_modules, never fetched). tfjs keeps its engine in a process-wide global;
 * that is tfjs's design, not ours. Threads: tfjs-backend-wasm has no threads under Node and tfjs-node sizes its
 * own pool, so the `threads` option does not apply here.
 */
import * as path from 'node:path';
import { InternalError, UsageError } from '../errors';
import type { Backend } from './backend';
import { checkBmm, checkLinear, linearRef, bmmRef } from './ref';

/** The part of a tfjs tensor this adapter uses. */
export interface TfTensor {
  data(): Promise<ArrayLike<number> | ArrayLike<string>>;
  dispose(): void;
}

/** The part of the tfjs namespace (`import * as tf`) this adapter uses; any tfjs 4.x package provides it. */
export interface TfLike {
  tensor(values: Float32Array, shape: number[], dtype: 'float32'): TfTensor;
  matMul(a: TfTensor, b: TfTensor, transposeA?: boolean, transposeB?: boolean): TfTensor;
  add(a: TfTensor, b: TfTensor): TfTensor;
  transpose(x: TfTensor, perm?: number[]): TfTensor;
  getBackend(): string;
}

interface WasmBackendModule {
  setWasmPaths(prefix: string): void;
}

interface TfCoreModule extends TfLike {
  setBackend(name: string): Promise<boolean>;
  ready(): Promise<void>;
}

const NODE_GPU = '@tensorflow/tfjs-node-gpu';
const NODE_CPU = '@tensorflow/tfjs-node';
const CORE = '@tensorflow/tfjs-core';
const WASM = '@tensorflow/tfjs-backend-wasm';

const INSTALL_HINT =
  `install one of: \`npm install ${NODE_GPU}\` (NVIDIA GPU; its install downloads libtensorflow and needs CUDA 11), ` +
  `or \`npm install ${CORE} ${WASM}\` (CPU, offline); or use --backend onnx`;

/** `require(name)`, or undefined when that package is not installed. Other load failures become UsageErrors. */
function optionalRequire<T>(name: string): T | undefined {
  try {
    return require(name) as T;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'MODULE_NOT_FOUND' && String(err.message).includes(`'${name}'`)) return undefined;
    throw new UsageError(`${name} is installed but does not load: ${String(err.message).split('\n')[0]}`, { hint: INSTALL_HINT });
  }
}

/** The folder holding tfjs-backend-wasm's .wasm files, with the trailing separator emscripten expects. */
function wasmDir(): string {
  return path.join(path.dirname(require.resolve(`${WASM}/package.json`)), 'dist') + path.sep;
}

/** The tfjs namespace to use: see the file header for the order. */
export async function loadTfjs(device: 'cpu' | 'cuda' = 'cpu'): Promise<TfLike> {
  const gpu = optionalRequire<TfLike>(NODE_GPU);
  if (gpu) return gpu;
  if (device === 'cuda') {
    throw new UsageError(`the tfjs backend needs ${NODE_GPU} for --device cuda, and it is not installed`, {
      hint: `run \`npm install ${NODE_GPU}\` (downloads libtensorflow; needs CUDA 11), or use --device cpu`,
    });
  }
  const cpu = optionalRequire<TfLike>(NODE_CPU);
  if (cpu) return cpu;
  const core = optionalRequire<TfCoreModule>(CORE);
  const wasm = core && optionalRequire<WasmBackendModule>(WASM);
  if (!core || !wasm) throw new UsageError('the tfjs backend needs tfjs, and no usable tfjs package is installed', { hint: INSTALL_HINT });
  if (core.getBackend() !== 'wasm') {
    wasm.setWasmPaths(wasmDir());
    if (!(await core.setBackend('wasm'))) throw new UsageError(`${WASM} did not start (see the messages above)`, { hint: INSTALL_HINT });
  }
  await core.ready();
  return core;
}

/** A Float32Array of this realm over the same memory (tfjs or a test sandbox may hand one from another realm). */
function asFloat32(data: ArrayLike<number> | ArrayLike<string>, expected: number, what: string): Float32Array {
  if (data instanceof Float32Array && data.length === expected) return data;
  if (ArrayBuffer.isView(data) && Object.prototype.toString.call(data) === '[object Float32Array]' && data.byteLength === expected * 4) {
    return new Float32Array(data.buffer, data.byteOffset, expected);
  }
  throw new InternalError(`tfjs returned ${Object.prototype.toString.call(data)} of length ${data.length} for ${what}, expected ${expected} float32`);
}

/**
 * tfjs-backend-wasm multiplies fast (XNNPACK: 30–41 GFLOP/s measured here) only for one 2-D product whose right
 * operand is not transposed; a transposed or batched product runs a plain loop at ≈ 3.4 GFLOP/s (measured:
 * 512×1024×1024 with transposeB 318 ms, on a pre-transposed w 26 ms). On wasm the adapter therefore splits
 * batches into 2-D products and transposes the right operand itself, which costs ≈ 10 ms per million floats:
 * that pays once the left operand has about 20 rows (1.7 vs 17 GMAC/s), hence this threshold.
 */
const WASM_TRANSPOSE_MIN_ROWS = 32;

type Keep = <T extends TfTensor>(t: T) => T;

export class TfjsBackend implements Backend {
  readonly name = 'tfjs';
  /** tfjs-backend-wasm: use only its fast 2-D untransposed product (see WASM_TRANSPOSE_MIN_ROWS). */
  private readonly wasm: boolean;

  constructor(readonly tf: TfLike) {
    this.wasm = tf.getBackend() === 'wasm';
  }

  static async create(opts: { device?: 'cpu' | 'cuda' } = {}): Promise<TfjsBackend> {
    return new TfjsBackend(await loadTfjs(opts.device));
  }

  /** Runs `fn`, then frees every tensor it passed to `keep`. */
  private async scoped<T>(fn: (keep: Keep) => Promise<T>): Promise<T> {
    const made: TfTensor[] = [];
    try {
      return await fn((t) => {
        made.push(t);
        return t;
      });
    } finally {
      for (const t of made) t.dispose();
    }
  }

  /** a [rows, k] · bᵀ for b [n, k] → [rows, n]. */
  private timesTransposed(a: TfTensor, b: TfTensor, rows: number, keep: Keep): TfTensor {
    if (this.wasm && rows >= WASM_TRANSPOSE_MIN_ROWS) return keep(this.tf.matMul(a, keep(this.tf.transpose(b))));
    return keep(this.tf.matMul(a, b, false, true));
  }

  async linear(x: Float32Array, w: Float32Array, tokens: number, inDim: number, outDim: number, bias?: Float32Array): Promise<Float32Array> {
    checkLinear(x, w, tokens, inDim, outDim, bias);
    if (tokens * inDim * outDim === 0) return linearRef(x, w, tokens, inDim, outDim, bias); // nothing to multiply
    return this.scoped(async (keep) => {
      const tx = keep(this.tf.tensor(x, [tokens, inDim], 'float32'));
      const tw = keep(this.tf.tensor(w, [outDim, inDim], 'float32'));
      let y = this.timesTransposed(tx, tw, tokens, keep); // [tokens, outDim]
      if (bias) y = keep(this.tf.add(y, keep(this.tf.tensor(bias, [outDim], 'float32'))));
      return asFloat32(await y.data(), tokens * outDim, 'linear');
    });
  }

  async bmm(a: Float32Array, b: Float32Array, batch: number, m: number, k: number, n: number, transB: boolean): Promise<Float32Array> {
    checkBmm(a, b, batch, m, k, n, transB);
    if (batch * m * k * n === 0) return bmmRef(a, b, batch, m, k, n, transB); // nothing to multiply
    if (!this.wasm) {
      return this.scoped(async (keep) => {
        const ta = keep(this.tf.tensor(a, [batch, m, k], 'float32'));
        const tb = keep(this.tf.tensor(b, transB ? [batch, n, k] : [batch, k, n], 'float32'));
        const c = keep(this.tf.matMul(ta, tb, false, transB)); // [batch, m, n]
        return asFloat32(await c.data(), batch * m * n, 'bmm');
      });
    }
    const c = new Float32Array(batch * m * n);
    for (let s = 0; s < batch; s++) {
      const part = await this.scoped(async (keep) => {
        const ta = keep(this.tf.tensor(a.subarray(s * m * k, (s + 1) * m * k), [m, k], 'float32'));
        const tb = keep(this.tf.tensor(b.subarray(s * k * n, (s + 1) * k * n), transB ? [n, k] : [k, n], 'float32'));
        const cs = transB ? this.timesTransposed(ta, tb, m, keep) : keep(this.tf.matMul(ta, tb)); // [m, n]
        return asFloat32(await cs.data(), m * n, 'bmm');
      });
      c.set(part, s * m * n);
    }
    return c;
  }

  async dispose(): Promise<void> {
    // Every tensor is freed after its call; the tfjs engine itself belongs to the process.
  }
}
