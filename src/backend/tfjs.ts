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
import type { AttentionOptions, Backend, GluOptions, LogitStats } from './backend';
import {
  attentionRef,
  attentionTokensByHeads,
  checkAttentionTokens,
  bmmRef,
  CausalMasks,
  checkAttention,
  checkBmm,
  checkLinear,
  checkLogitStats,
  checkSwiglu,
  intoOr,
  linearRef,
  logitStatsRef,
  swigluRef,
} from './ref';

/** The part of a tfjs tensor this adapter uses. */
export interface TfTensor {
  data(): Promise<ArrayLike<number> | ArrayLike<string>>;
  dispose(): void;
}

/** The part of the tfjs namespace (`import * as tf`) this adapter uses; any tfjs 4.x package provides it. */
export interface TfLike {
  tensor(values: Float32Array | Int32Array, shape: number[], dtype: 'float32' | 'int32'): TfTensor;
  matMul(a: TfTensor, b: TfTensor, transposeA?: boolean, transposeB?: boolean): TfTensor;
  add(a: TfTensor, b: TfTensor | number): TfTensor;
  sub(a: TfTensor, b: TfTensor): TfTensor;
  mul(a: TfTensor, b: TfTensor | number): TfTensor;
  minimum(a: TfTensor, b: TfTensor | number): TfTensor;
  maximum(a: TfTensor, b: TfTensor | number): TfTensor;
  logSumExp(x: TfTensor, axis?: number, keepDims?: boolean): TfTensor;
  div(a: TfTensor | number, b: TfTensor): TfTensor;
  sigmoid(x: TfTensor): TfTensor;
  softmax(logits: TfTensor, dim?: number): TfTensor;
  max(x: TfTensor, axis?: number, keepDims?: boolean): TfTensor;
  argMax(x: TfTensor, axis?: number): TfTensor;
  slice(x: TfTensor, begin: number[], size: number[]): TfTensor;
  reshape(x: TfTensor, shape: number[]): TfTensor;
  gather(x: TfTensor, indices: TfTensor): TfTensor;
  concat(tensors: TfTensor[], axis?: number): TfTensor;
  transpose(x: TfTensor, perm?: number[]): TfTensor;
  /** Runs fn and frees every tensor made inside it except those it returns. */
  tidy<T>(fn: () => T): T;
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
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- an optional package, loaded only when asked for
    return require(name) as T;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'MODULE_NOT_FOUND' && String(err.message).includes(`'${name}'`)) return undefined;
    throw new UsageError(`${name} is installed but does not load: ${String(err.message).split('\n')[0]}`, {
      hint: INSTALL_HINT,
    });
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
  if (!core || !wasm)
    throw new UsageError('the tfjs backend needs tfjs, and no usable tfjs package is installed', {
      hint: INSTALL_HINT,
    });
  if (core.getBackend() !== 'wasm') {
    wasm.setWasmPaths(wasmDir());
    if (!(await core.setBackend('wasm')))
      throw new UsageError(`${WASM} did not start (see the messages above)`, { hint: INSTALL_HINT });
  }
  await core.ready();
  return core;
}

/** A Float32Array of this realm over the same memory (tfjs or a test sandbox may hand one from another realm). */
function asFloat32(data: ArrayLike<number> | ArrayLike<string>, expected: number, what: string): Float32Array {
  if (data instanceof Float32Array && data.length === expected) return data;
  if (
    ArrayBuffer.isView(data) &&
    Object.prototype.toString.call(data) === '[object Float32Array]' &&
    data.byteLength === expected * 4
  ) {
    return new Float32Array(data.buffer, data.byteOffset, expected);
  }
  throw new InternalError(
    `tfjs returned ${Object.prototype.toString.call(data)} of length ${data.length} for ${what}, expected ${expected} float32`,
  );
}

/** asFloat32 for int32 results (argMax). */
function asInt32(data: ArrayLike<number> | ArrayLike<string>, expected: number, what: string): Int32Array {
  if (data instanceof Int32Array && data.length === expected) return data;
  if (
    ArrayBuffer.isView(data) &&
    Object.prototype.toString.call(data) === '[object Int32Array]' &&
    data.byteLength === expected * 4
  ) {
    return new Int32Array(data.buffer, data.byteOffset, expected);
  }
  throw new InternalError(
    `tfjs returned ${Object.prototype.toString.call(data)} of length ${data.length} for ${what}, expected ${expected} int32`,
  );
}

/** Downloads each tensor, then frees them all (also when a download fails). */
async function download(tensors: TfTensor[]): Promise<(ArrayLike<number> | ArrayLike<string>)[]> {
  try {
    return await Promise.all(tensors.map((t) => t.data()));
  } finally {
    for (const t of tensors) t.dispose();
  }
}

/**
 * tfjs-backend-wasm multiplies fast (XNNPACK: 30–41 GFLOP/s measured here) only for one 2-D product whose right
 * operand is not transposed; a transposed or batched product runs a plain loop at ≈ 3.4 GFLOP/s (measured:
 * 512×1024×1024 with transposeB 318 ms, on a pre-transposed w 26 ms). On wasm the adapter therefore splits
 * batches into 2-D products and transposes the right operand itself, which costs ≈ 10 ms per million floats:
 * that pays once the left operand has about 20 rows (1.7 vs 17 GMAC/s), hence this threshold.
 */
const WASM_TRANSPOSE_MIN_ROWS = 32;

/** tfjs gathers with int32 indices: the flat index of a logit in [rows, count] must fit one. */
const INT32_MAX = 0x7fffffff;

type Keep = <T extends TfTensor>(t: T) => T;

/** The `keep` to pass inside tf.tidy, which frees intermediates itself. */
const inTidy: Keep = (t) => t;

export class TfjsBackend implements Backend {
  readonly name = 'tfjs';
  /** tfjs-backend-wasm: use only its fast 2-D untransposed product (see WASM_TRANSPOSE_MIN_ROWS). */
  private readonly wasm: boolean;
  private readonly masks = new CausalMasks();

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

  async linear(
    x: Float32Array,
    w: Float32Array,
    tokens: number,
    inDim: number,
    outDim: number,
    bias?: Float32Array,
    into?: Float32Array,
  ): Promise<Float32Array> {
    checkLinear(x, w, tokens, inDim, outDim, bias, into);
    // nothing to multiply
    if (tokens * inDim * outDim === 0) return intoOr(into, linearRef(x, w, tokens, inDim, outDim, bias));
    const y = await this.scoped(async (keep) => {
      const tx = keep(this.tf.tensor(x, [tokens, inDim], 'float32'));
      const tw = keep(this.tf.tensor(w, [outDim, inDim], 'float32'));
      let y = this.timesTransposed(tx, tw, tokens, keep); // [tokens, outDim]
      if (bias) y = keep(this.tf.add(y, keep(this.tf.tensor(bias, [outDim], 'float32'))));
      return asFloat32(await y.data(), tokens * outDim, 'linear');
    });
    return intoOr(into, y);
  }

  async bmm(
    a: Float32Array,
    b: Float32Array,
    batch: number,
    m: number,
    k: number,
    n: number,
    transB: boolean,
  ): Promise<Float32Array> {
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

  async attention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    heads: number,
    T: number,
    dk: number,
    dv: number,
    scale: number,
    opts: AttentionOptions = {},
  ): Promise<Float32Array> {
    checkAttention(q, k, v, heads, T, dk, dv, scale, opts);
    // nothing to multiply
    if (heads * T * dk * dv === 0) return attentionRef(q, k, v, heads, T, dk, dv, scale, opts);
    const tf = this.tf;
    const mask = this.masks.get(T, opts.window, opts.chunk);
    const sinks = opts.sinks;
    const [o] = await download([
      tf.tidy(() => {
        const tm = tf.tensor(mask, [T, T], 'float32');
        // mask broadcasts over heads. A sink s scales softmax(a) by Σ exp(a) / (Σ exp(a) + exp(s)) = σ(lse(a) − s).
        const probs = (scores: TfTensor, sink?: TfTensor): TfTensor => {
          const a = tf.add(tf.mul(scores, scale), tm);
          const p = tf.softmax(a);
          return sink ? tf.mul(p, tf.sigmoid(tf.sub(tf.logSumExp(a, -1, true), sink))) : p;
        };
        if (!this.wasm) {
          const s = tf.matMul(
            tf.tensor(q, [heads, T, dk], 'float32'),
            tf.tensor(k, [heads, T, dk], 'float32'),
            false,
            true,
          ); // [H, T, T]
          const sink = sinks ? tf.tensor(sinks, [heads, 1, 1], 'float32') : undefined;
          return tf.matMul(probs(s, sink), tf.tensor(v, [heads, T, dv], 'float32')); // [H, T, dv]
        }
        // wasm: 2-D products only (see WASM_TRANSPOSE_MIN_ROWS), one head at a time, concatenated to [H·T, dv].
        const perHead: TfTensor[] = [];
        for (let h = 0; h < heads; h++) {
          const qh = tf.tensor(q.subarray(h * T * dk, (h + 1) * T * dk), [T, dk], 'float32');
          const kh = tf.tensor(k.subarray(h * T * dk, (h + 1) * T * dk), [T, dk], 'float32');
          const vh = tf.tensor(v.subarray(h * T * dv, (h + 1) * T * dv), [T, dv], 'float32');
          const sink = sinks ? tf.tensor(sinks.subarray(h, h + 1), [1, 1], 'float32') : undefined;
          perHead.push(tf.matMul(probs(this.timesTransposed(qh, kh, T, inTidy), sink), vh)); // [T, dv]
        }
        return tf.concat(perHead, 0);
      }),
    ]);
    return asFloat32(o, heads * T * dv, 'attention');
  }

  /** The activation of swiglu from gate and up [rows, width]: silu(g)·u, or gpt-oss's clamped form. */
  private glu(g: TfTensor, u: TfTensor, opts?: GluOptions): TfTensor {
    const tf = this.tf;
    const c = opts?.clamp;
    if (!c) return tf.mul(tf.mul(g, tf.sigmoid(g)), u); // silu(g) · u
    const gc = tf.minimum(g, c.limit);
    const uc = tf.maximum(tf.minimum(u, c.limit), -c.limit);
    return tf.mul(tf.add(uc, 1), tf.mul(gc, tf.sigmoid(tf.mul(gc, c.alpha))));
  }

  async attentionTokens(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    T: number,
    heads: number,
    kvHeads: number,
    dk: number,
    dv: number,
    scale: number,
    opts: AttentionOptions = {},
    into?: Float32Array,
  ): Promise<Float32Array> {
    checkAttentionTokens(q, k, v, T, heads, kvHeads, dk, dv, scale, opts, into);
    return attentionTokensByHeads(this, q, k, v, T, heads, kvHeads, dk, dv, scale, opts, into);
  }

  async swiglu(
    x: Float32Array,
    gateUp: Float32Array,
    down: Float32Array,
    rows: number,
    hidden: number,
    width: number,
    wantAct: boolean,
    opts?: GluOptions,
    into?: Float32Array,
  ): Promise<{ out: Float32Array; act?: Float32Array }> {
    checkSwiglu(x, gateUp, down, rows, hidden, width, opts, into);
    if (rows * hidden * width === 0) {
      const { out, act } = swigluRef(x, gateUp, down, rows, hidden, width, opts); // nothing to multiply
      return wantAct ? { out: intoOr(into, out), act } : { out: intoOr(into, out) };
    }
    const tf = this.tf;
    const bias = (b: Float32Array | undefined, n: number, y: TfTensor) =>
      b ? tf.add(y, tf.tensor(b, [n], 'float32')) : y;
    const results = await download(
      tf.tidy(() => {
        const tx = tf.tensor(x, [rows, hidden], 'float32');
        const gu = bias(
          opts?.gateUpBias,
          2 * width,
          this.timesTransposed(tx, tf.tensor(gateUp, [2 * width, hidden], 'float32'), rows, inTidy),
        ); // [rows, 2·width]
        const g = tf.slice(gu, [0, 0], [rows, width]);
        const u = tf.slice(gu, [0, width], [rows, width]);
        const act = this.glu(g, u, opts); // [rows, width]
        const out = bias(
          opts?.downBias,
          hidden,
          this.timesTransposed(act, tf.tensor(down, [hidden, width], 'float32'), rows, inTidy),
        ); // [rows, hidden]
        return wantAct ? [out, act] : [out];
      }),
    );
    const out = intoOr(into, asFloat32(results[0], rows * hidden, 'swiglu out'));
    return wantAct ? { out, act: asFloat32(results[1], rows * width, 'swiglu act') } : { out };
  }

  async logitStats(
    x: Float32Array,
    w: Float32Array,
    rows: number,
    hidden: number,
    count: number,
    targets: Int32Array,
    start: number,
  ): Promise<LogitStats> {
    checkLogitStats(x, w, rows, hidden, count, targets, start);
    // nothing to multiply
    if (rows * hidden * count === 0) return logitStatsRef(x, w, rows, hidden, count, targets, start);
    if (rows * count > INT32_MAX)
      throw new InternalError(
        `logitStats: a [${rows}, ${count}] block is too large for tfjs's int32 indices; use smaller blocks`,
      );
    // Row r's target logit sits at r·count + (targets[r] − start) of the flattened logits; rows without one
    // gather their first logit, replaced by NaN below.
    const inside = (r: number): boolean => targets[r] - start >= 0 && targets[r] - start < count;
    const flat = new Int32Array(rows);
    for (let r = 0; r < rows; r++) flat[r] = r * count + (inside(r) ? targets[r] - start : 0);
    const tf = this.tf;
    const [max, sumExp, argmax, target] = await download(
      tf.tidy(() => {
        const tx = tf.tensor(x, [rows, hidden], 'float32');
        const y = this.timesTransposed(tx, tf.tensor(w, [count, hidden], 'float32'), rows, inTidy); // [rows, count]
        // Σ exp(y − max) = 1 / max(softmax(y)): the largest probability is exp(0) / Σ. Softmax is one vectorised
        // kernel; exp is not on wasm (measured at [4096, 8192]: sub+exp+sum 680 ms, softmax+max 95 ms).
        const s = tf.div(1, tf.max(tf.softmax(y), 1)); // [rows]
        const picked = tf.gather(tf.reshape(y, [rows * count]), tf.tensor(flat, [rows], 'int32')); // [rows]
        return [tf.max(y, 1), s, tf.argMax(y, 1), picked];
      }),
    );
    const stats: LogitStats = {
      max: asFloat32(max, rows, 'logitStats max'),
      sumExp: asFloat32(sumExp, rows, 'logitStats sumExp'),
      argmax: asInt32(argmax, rows, 'logitStats argmax'),
      target: asFloat32(target, rows, 'logitStats target'),
    };
    for (let r = 0; r < rows; r++) if (!inside(r)) stats.target[r] = NaN;
    return stats;
  }

  async dispose(): Promise<void> {
    // Every tensor is freed after its call; the tfjs engine itself belongs to the process.
  }
}
