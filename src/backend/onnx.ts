/**
 * The default backend: onnxruntime-node's CPU kernels (MLAS sgemm), or its CUDA provider with `device: 'cuda'`.
 * Each product is a one-node ONNX graph (see onnx-graph.ts), and each fused operation a small graph (onnx-fused.ts),
 * with symbolic dimensions, loaded from memory into an InferenceSession the first time it is needed and reused for
 * every shape after that. A run fetches only the outputs the caller wants (swiglu's act only when asked).
 *
 * Copies: `new ort.Tensor('float32', data, dims)` wraps the caller's Float32Array (checked: `tensor.data === data`)
 * and onnxruntime-node 1.x runs on the calling thread over that memory, so inputs are not copied; the output
 * array is returned as onnxruntime hands it over (measured: a preallocated output tensor was no faster, 35 ms
 * either way for a 64 MB result).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { InternalError, UsageError } from '../errors';
import type { AttentionOptions, Backend, GluOptions, LogitStats } from './backend';
import {
  attentionModel,
  attentionSinksModel,
  attentionTokensModel,
  gluModel,
  logitStatsModel,
  swigluModel,
} from './onnx-fused';
import { bmmModel, linearModel } from './onnx-graph';
import { defaultThreads } from './threads';
import {
  attentionRef,
  attentionTokensByHeads,
  attentionTokensRef,
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

type GraphKind =
  | 'linear'
  | 'linearBias'
  | 'bmm'
  | 'bmmTransB'
  | 'attention'
  | 'attentionSinks'
  | 'attentionTokens'
  | 'swiglu'
  | 'glu'
  | 'logitStats';

const GRAPHS: Record<GraphKind, () => Uint8Array> = {
  linear: () => linearModel(false),
  linearBias: () => linearModel(true),
  bmm: () => bmmModel(false),
  bmmTransB: () => bmmModel(true),
  attention: attentionModel,
  attentionSinks: attentionSinksModel,
  attentionTokens: attentionTokensModel,
  swiglu: swigluModel,
  glu: gluModel,
  logitStats: logitStatsModel,
};

type Outputs = Ort.InferenceSession.OnnxValueMapType;

export interface OnnxOptions {
  device?: 'cpu' | 'cuda';
  /** onnxruntime's intraOpNumThreads; default: defaultThreads() (MOE_THREADS, else every core). */
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

const INT32_MAX = 0x7fffffff;

/** The float32 output `name` of a run, checked for type and length. */
function floatOutput(result: Outputs, kind: GraphKind, name: string, expected: number): Float32Array {
  const data = result[name]?.data;
  if (!(data instanceof Float32Array) || data.length !== expected) {
    throw new InternalError(
      `onnxruntime returned ${data?.constructor.name ?? 'nothing'} of length ${String(data?.length)} for ${kind} ${name}, expected ${expected} float32`,
    );
  }
  return data;
}

export class OnnxBackend implements Backend {
  readonly name = 'onnx';
  private readonly sessions = new Map<GraphKind, Promise<Ort.InferenceSession>>();
  private readonly masks = new CausalMasks();
  private disposed = false;

  private constructor(
    private readonly ort: OrtModule,
    readonly device: 'cpu' | 'cuda',
    readonly threads: number,
  ) {}

  /** Loads onnxruntime-node; with `device: 'cuda'` also opens one session now, so a missing GPU fails early. */
  static async create(opts: OnnxOptions = {}): Promise<OnnxBackend> {
    const device = opts.device ?? 'cpu';
    const threads = opts.threads ?? defaultThreads();
    if (!Number.isInteger(threads) || threads < 1)
      throw new UsageError(`--threads must be a positive integer, got ${threads}`);
    if (device !== 'cpu' && device !== 'cuda')
      throw new UsageError(`unknown device ${String(device)}; use cpu or cuda`);
    const ort = await loadOrt();
    const backend = new OnnxBackend(ort, device, threads);
    if (device === 'cuda') await backend.checkCuda();
    return backend;
  }

  private async checkCuda(): Promise<void> {
    const lib = CUDA_PROVIDER_LIB[process.platform];
    if (!lib || !fs.existsSync(path.join(ortBinaryDir(), lib))) {
      throw new UsageError(
        `the onnx backend has no CUDA provider on this machine (${lib ?? `none for ${process.platform}`} is not installed)`,
        { hint: CUDA_HINT },
      );
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
      // The arena keeps the memory of earlier runs for the next ones. Without it every run's outputs and
      // intermediates are fresh pages from the OS: on this project's machine a first touch costs ~13 µs per 4 KB
      // page, which made the lm_head's logit statistics 3.4× slower (762 against 222 ms per 1,024 tokens) and the
      // attention 2.3×. Its cost is its peak per session, bounded by the blocks the forward pass hands over
      // (model.ts LOGIT_BLOCK_FLOATS). No memory pattern: shapes change from call to call.
      enableCpuMemArena: true,
      enableMemPattern: false,
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

  /**
   * Runs one graph and returns the outputs named in `fetches` (onnxruntime copies out only those), or writes them
   * into the tensors given there.
   */
  private async runGraph(
    kind: GraphKind,
    feeds: Record<string, Ort.Tensor>,
    fetches: string[] | Record<string, Ort.Tensor>,
  ): Promise<Outputs> {
    const session = await this.session(kind);
    try {
      return await session.run(feeds, fetches as Ort.InferenceSession.FetchesType);
    } catch (e) {
      throw new InternalError(`onnxruntime failed on ${kind}: ${firstLine(e)}`);
    }
  }

  private async run(
    kind: GraphKind,
    feeds: Record<string, Ort.Tensor>,
    output: string,
    expected: number,
    into?: { data: Float32Array; dims: number[] },
  ): Promise<Float32Array> {
    if (!into) return floatOutput(await this.runGraph(kind, feeds, [output]), kind, output, expected);
    await this.runGraph(kind, feeds, { [output]: this.tensor(into.data, into.dims) });
    return into.data; // written in place (the result's tensor is another view of it)
  }

  private tensor(data: Float32Array, dims: number[]): Ort.Tensor {
    return new this.ort.Tensor('float32', data, dims);
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
    if (tokens * inDim * outDim < TINY_PRODUCT_MACS) return intoOr(into, linearRef(x, w, tokens, inDim, outDim, bias));
    const feeds: Record<string, Ort.Tensor> = {
      X: this.tensor(x, [tokens, inDim]),
      W: this.tensor(w, [outDim, inDim]),
    };
    if (bias) feeds.B = this.tensor(bias, [outDim]);
    const out = into && { data: into, dims: [tokens, outDim] };
    return this.run(bias ? 'linearBias' : 'linear', feeds, 'Y', tokens * outDim, out); // [tokens, outDim]
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
    if (batch * m * k * n < TINY_PRODUCT_MACS) return bmmRef(a, b, batch, m, k, n, transB);
    const feeds = { A: this.tensor(a, [batch, m, k]), B: this.tensor(b, transB ? [batch, n, k] : [batch, k, n]) };
    return this.run(transB ? 'bmmTransB' : 'bmm', feeds, 'C', batch * m * n); // [batch, m, n]
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
    if (heads * T * T * (dk + dv) < TINY_PRODUCT_MACS) return attentionRef(q, k, v, heads, T, dk, dv, scale, opts);
    const feeds: Record<string, Ort.Tensor> = {
      Q: this.tensor(q, [heads, T, dk]),
      K: this.tensor(k, [heads, T, dk]),
      V: this.tensor(v, [heads, T, dv]),
      Scale: this.tensor(Float32Array.of(scale), []),
      Mask: this.tensor(this.masks.get(T, opts.window, opts.chunk), [T, T]),
    };
    if (!opts.sinks) return this.run('attention', feeds, 'O', heads * T * dv); // [H, T, dv]
    feeds.Sinks = this.tensor(opts.sinks, [heads, 1, 1]);
    return this.run('attentionSinks', feeds, 'O', heads * T * dv); // [H, T, dv]
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
    if (heads * T * T * (dk + dv) < TINY_PRODUCT_MACS)
      return intoOr(into, attentionTokensRef(q, k, v, T, heads, kvHeads, dk, dv, scale, opts));
    // sinks: the head-major graph has them
    if (opts.sinks) return attentionTokensByHeads(this, q, k, v, T, heads, kvHeads, dk, dv, scale, opts, into);
    const G = heads / kvHeads;
    const int64 = (dims: number[]) => new this.ort.Tensor('int64', BigInt64Array.from(dims, BigInt), [dims.length]);
    const feeds: Record<string, Ort.Tensor> = {
      Q: this.tensor(q, [T, heads, dk]),
      K: this.tensor(k, [T, kvHeads, dk]),
      V: this.tensor(v, [T, kvHeads, dv]),
      Scale: this.tensor(Float32Array.of(scale), []),
      Mask: this.tensor(this.masks.get(T, opts.window, opts.chunk), [T, T]),
      QShape: int64([kvHeads, G * T, dk]),
      SShape: int64([kvHeads, G, T, T]),
      PShape: int64([kvHeads, G * T, T]),
      OShape: int64([heads, T, dv]),
    };
    const out = into && { data: into, dims: [T, heads, dv] };
    return this.run('attentionTokens', feeds, 'O', T * heads * dv, out); // [T, H, dv]
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
    if (3 * rows * hidden * width < TINY_PRODUCT_MACS) {
      const { out, act } = swigluRef(x, gateUp, down, rows, hidden, width, opts);
      return wantAct ? { out: intoOr(into, out), act } : { out: intoOr(into, out) };
    }
    const feeds: Record<string, Ort.Tensor> = {
      X: this.tensor(x, [rows, hidden]),
      GateUp: this.tensor(gateUp, [2 * width, hidden]),
      Down: this.tensor(down, [hidden, width]),
    };
    const kind: GraphKind = opts && (opts.gateUpBias || opts.downBias || opts.clamp) ? 'glu' : 'swiglu';
    if (kind === 'glu') {
      const c = opts?.clamp;
      feeds.GateUpBias = this.tensor(opts?.gateUpBias ?? new Float32Array(2 * width), [2 * width]);
      feeds.DownBias = this.tensor(opts?.downBias ?? new Float32Array(hidden), [hidden]);
      feeds.Alpha = this.tensor(Float32Array.of(c ? c.alpha : 1), []);
      feeds.Limit = this.tensor(Float32Array.of(c ? c.limit : Infinity), []);
      feeds.Plus = this.tensor(Float32Array.of(c ? 1 : 0), []);
    }
    // with `into`, onnxruntime writes Out there (and allocates Act, when asked, itself)
    const fetches = into
      ? { Out: this.tensor(into, [rows, hidden]), ...(wantAct ? { Act: null as unknown as Ort.Tensor } : {}) }
      : wantAct
        ? ['Out', 'Act']
        : ['Out'];
    const result = await this.runGraph(kind, feeds, fetches);
    const out = into ?? floatOutput(result, kind, 'Out', rows * hidden); // [rows, hidden]
    return wantAct ? { out, act: floatOutput(result, kind, 'Act', rows * width) } : { out }; // act [rows, width]
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
    if (start > INT32_MAX) throw new InternalError(`logitStats: start ${start} does not fit the graph's int32 index`);
    if (rows * hidden * count < TINY_PRODUCT_MACS) return logitStatsRef(x, w, rows, hidden, count, targets, start);
    const feeds = {
      X: this.tensor(x, [rows, hidden]),
      W: this.tensor(w, [count, hidden]),
      Targets: new this.ort.Tensor('int32', targets, [rows, 1]),
      Start: new this.ort.Tensor('int32', Int32Array.of(start), []),
    };
    const result = await this.runGraph('logitStats', feeds, ['Max', 'SumExp', 'ArgMax', 'Target']); // each [rows, 1]
    const argmax = result.ArgMax?.data;
    if (!(argmax instanceof Int32Array) || argmax.length !== rows) {
      throw new InternalError(
        `onnxruntime returned ${argmax?.constructor.name ?? 'nothing'} of length ${String(argmax?.length)} for logitStats ArgMax, expected ${rows} int32`,
      );
    }
    return {
      max: floatOutput(result, 'logitStats', 'Max', rows),
      sumExp: floatOutput(result, 'logitStats', 'SumExp', rows),
      argmax,
      target: floatOutput(result, 'logitStats', 'Target', rows),
    };
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
