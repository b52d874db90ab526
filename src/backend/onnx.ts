/**
 * The default backend: onnxruntime-node's CPU kernels (MLAS sgemm), or its CUDA provider with `device: 'cuda'`.
 * Each product is a one-node ONNX graph (see onnx-graph.ts) with symbolic dimensions, loaded from memory into an
 * InferenceSession the first time it is needed and reused for every shape after that.
 *
 * Copies: `new ort.Tensor('float32', data, dims)` wraps the caller's Float32Array (checked: `tensor.data === data`)
 * and onnxruntime-node 1.x runs on the calling thread over that memory, so inputs are not copied; the output
 * array is returned as onnxruntime hands it over (measured: a preallocated output tensor was no faster, 35 ms
 * either way for a 64 MB result).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { InternalError, UsageError } from '../errors';
import type { Backend } from './backend';
import { bmmModel, linearModel } from './onnx-graph';
import { bmmRef, checkBmm, checkLinear, linearRef } from './ref';

/**
 * Products with fewer multiply-adds than this run in TypeScript. Measured on this project's 2-core machine
 * (onnxruntime-node 1.30, Node 20): one session.run costs ≈ 9–12 µs however small the product (1×8×8: 15–19 µs),
 * while the TS loop does ≈ 1 multiply-add per ns: 1×64×64 (4,096) 5–6 µs in TS vs 9–11 µs in onnxruntime,
 * 4×64×64 (16,384) 18 µs vs 10 µs. The crossover is near 8,192.
 */
export const TINY_PRODUCT_MACS = 8192;

/**
 * onnxruntime's worker threads spin between runs by default. Sessions here run back to back from one thread, and
 * each session owns its own pool, so a pool spinning after its run would steal a core from the next session's run
 * or from the JS in between. Measured (2 threads, 2 cores): linear 256×1024×1024, bmm 16×128×64×128, linear again,
 * in a loop: 3.0–4.4 ms per round without spinning vs 5.9–7.3 ms with it; one large linear alone was no slower.
 */
const ALLOW_SPINNING = '0';

/** onnxruntime's log level 3 = errors only (its warnings about unused graph optimisations are noise here). */
const ORT_LOG_ERRORS_ONLY = 3;

type GraphKind = 'linear' | 'linearBias' | 'bmm' | 'bmmTransB';

const GRAPHS: Record<GraphKind, () => Uint8Array> = {
  linear: () => linearModel(false),
  linearBias: () => linearModel(true),
  bmm: () => bmmModel(false),
  bmmTransB: () => bmmModel(true),
};

export interface OnnxOptions {
  device?: 'cpu' | 'cuda';
  /** onnxruntime's intraOpNumThreads; default: os.availableParallelism(). */
  threads?: number;
}

type OrtModule = typeof Ort;

async function loadOrt(): Promise<OrtModule> {
  try {
    return await import('onnxruntime-node');
  } catch (e) {
    throw new UsageError(`the onnx backend cannot load onnxruntime-node: ${firstLine(e)}`, {
      hint: 'run `ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node`, or pick another backend with --backend ref',
    });
  }
}

function firstLine(e: unknown): string {
  return String(e instanceof Error ? e.message : e).split('\n')[0];
}

/** Where onnxruntime-node keeps its native libraries (the folder its binding.js loads from). */
function ortBinaryDir(): string {
  const pkg = path.dirname(require.resolve('onnxruntime-node/package.json'));
  return path.join(pkg, 'bin', 'napi-v6', process.platform, process.arch);
}

const CUDA_PROVIDER_LIB: Partial<Record<NodeJS.Platform, string>> = {
  linux: 'libonnxruntime_providers_cuda.so',
  win32: 'onnxruntime_providers_cuda.dll',
};

const CUDA_HINT =
  'the CUDA provider needs an NVIDIA GPU, CUDA 12 and onnxruntime-node installed with ONNXRUNTIME_NODE_INSTALL=cuda12 ' +
  '(its install step downloads the provider); or use --device cpu';

export class OnnxBackend implements Backend {
  readonly name = 'onnx';
  private readonly sessions = new Map<GraphKind, Promise<Ort.InferenceSession>>();
  private disposed = false;

  private constructor(
    private readonly ort: OrtModule,
    readonly device: 'cpu' | 'cuda',
    readonly threads: number,
  ) {}

  /** Loads onnxruntime-node; with `device: 'cuda'` also opens one session now, so a missing GPU fails early. */
  static async create(opts: OnnxOptions = {}): Promise<OnnxBackend> {
    const device = opts.device ?? 'cpu';
    const threads = opts.threads ?? os.availableParallelism();
    if (!Number.isInteger(threads) || threads < 1) throw new UsageError(`--threads must be a positive integer, got ${threads}`);
    if (device !== 'cpu' && device !== 'cuda') throw new UsageError(`unknown device ${String(device)}; use cpu or cuda`);
    const ort = await loadOrt();
    const backend = new OnnxBackend(ort, device, threads);
    if (device === 'cuda') await backend.checkCuda();
    return backend;
  }

  private async checkCuda(): Promise<void> {
    const lib = CUDA_PROVIDER_LIB[process.platform];
    if (!lib || !fs.existsSync(path.join(ortBinaryDir(), lib))) {
      throw new UsageError(`the onnx backend has no CUDA provider on this machine (${lib ?? `none for ${process.platform}`} is not installed)`, { hint: CUDA_HINT });
    }
    try {
      await this.session('linear');
    } catch (e) {
      throw new UsageError(`the onnx backend cannot start its CUDA provider: ${firstLine(e)}`, { hint: CUDA_HINT });
    }
  }

  private sessionOptions(): Ort.InferenceSession.SessionOptions {
    return {
      executionProviders: [this.device],
      intraOpNumThreads: this.threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      logSeverityLevel: ORT_LOG_ERRORS_ONLY,
      extra: { session: { intra_op: { allow_spinning: ALLOW_SPINNING } } },
    };
  }

  /** The session for one graph, created on first use and kept until dispose(). */
  private session(kind: GraphKind): Promise<Ort.InferenceSession> {
    if (this.disposed) throw new InternalError('onnx backend used after dispose()');
    let s = this.sessions.get(kind);
    if (!s) {
      s = this.ort.InferenceSession.create(GRAPHS[kind](), this.sessionOptions());
      this.sessions.set(kind, s);
      s.catch(() => this.sessions.delete(kind)); // a failed create is retried by the next call, not cached
    }
    return s;
  }

  private async run(kind: GraphKind, feeds: Record<string, Ort.Tensor>, output: string, expected: number): Promise<Float32Array> {
    const session = await this.session(kind);
    let result: Ort.InferenceSession.OnnxValueMapType;
    try {
      result = await session.run(feeds);
    } catch (e) {
      throw new InternalError(`onnxruntime failed on ${kind}: ${firstLine(e)}`);
    }
    const data = result[output]?.data;
    if (!(data instanceof Float32Array) || data.length !== expected) {
      throw new InternalError(`onnxruntime returned ${data?.constructor.name ?? 'nothing'} of length ${String(data?.length)} for ${kind}, expected ${expected} float32`);
    }
    return data;
  }

  private tensor(data: Float32Array, dims: number[]): Ort.Tensor {
    return new this.ort.Tensor('float32', data, dims);
  }

  async linear(x: Float32Array, w: Float32Array, tokens: number, inDim: number, outDim: number, bias?: Float32Array): Promise<Float32Array> {
    checkLinear(x, w, tokens, inDim, outDim, bias);
    if (tokens * inDim * outDim < TINY_PRODUCT_MACS) return linearRef(x, w, tokens, inDim, outDim, bias);
    const feeds: Record<string, Ort.Tensor> = { X: this.tensor(x, [tokens, inDim]), W: this.tensor(w, [outDim, inDim]) };
    if (bias) feeds.B = this.tensor(bias, [outDim]);
    return this.run(bias ? 'linearBias' : 'linear', feeds, 'Y', tokens * outDim); // [tokens, outDim]
  }

  async bmm(a: Float32Array, b: Float32Array, batch: number, m: number, k: number, n: number, transB: boolean): Promise<Float32Array> {
    checkBmm(a, b, batch, m, k, n, transB);
    if (batch * m * k * n < TINY_PRODUCT_MACS) return bmmRef(a, b, batch, m, k, n, transB);
    const feeds = { A: this.tensor(a, [batch, m, k]), B: this.tensor(b, transB ? [batch, n, k] : [batch, k, n]) };
    return this.run(transB ? 'bmmTransB' : 'bmm', feeds, 'C', batch * m * n); // [batch, m, n]
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    const pending = [...this.sessions.values()];
    this.sessions.clear();
    for (const p of await Promise.allSettled(pending)) {
      if (p.status === 'fulfilled') await p.value.release();
    }
  }
}
