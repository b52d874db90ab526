/**
 * The forward pass, one layer at a time: a layer's weights are loaded (as float32) and every window of the batch
 * runs through it. Between layers the weights are released. Within a layer, weights stay cached up to a byte
 * budget, so a caller that runs many batches through the same layer (calibration) reads them once; routed
 * experts beyond the budget are read again for each batch. Memory: attention and dense weights, the cached
 * experts (at most the budget) and the activations.
 */
import type { Backend, GluOptions, LogitStats } from '../../backend/backend';
import { TensorReader } from '../../io/checkpoint';
import { WasmArena } from '../../io/wasm-arena';
import type { Architecture } from '../arch';
import { expertGluOptions } from '../experts';
import { gqa, Linear, mla, Weights } from './attention';
import { gatedDeltaNet } from './deltanet';
import { gatherRows, outputWeights, route, Routing, scaleRows, scatterAdd, tokensPerExpert } from './moe';
import { addInPlace, layerNorm, rmsNorm, scaleInPlace, sigmoid } from './ops';
import { ropeTables, RopeTables } from './rope';
import { forwardSpec, ForwardSpec } from './spec';

/** The rows a routed expert's linear layer runs on (ForwardObserver.linear). */
export interface ExpertRows {
  /** True: tokens routed to the expert; false: the others (ForwardObserver.allExperts). */
  routed: boolean;
  /**
   * [rows]: each routed token's routing weight as the forward applies it, or each other token's router probability
   * for the expert (softmax or sigmoid score).
   */
  weights: Float32Array;
}

/** Observer hooks, for calibration and routing comparisons. Arrays are only valid during the call. */
export interface ForwardObserver {
  /**
   * The input of a linear layer, named by its weight tensor, [rows, inDim]. For routed experts the rows are the
   * tokens routed to it (with `allExperts`, then also the others); gate_proj and up_proj share one input, reported
   * once under gate_proj. `expertRows`, for routed experts only, says what the rows are.
   */
  linear?(weight: string, x: Float32Array, rows: number, inDim: number, expertRows?: ExpertRows): void;
  /**
   * Every routed expert also runs on the tokens not routed to it, for `linear` only (calibration's --all-experts):
   * the block's output, `expert` and every routed statistic stay those of the routed tokens.
   */
  allExperts?: boolean;
  /** The router's decision in a MoE layer; `input` is the MoE block's input [tokens, hidden]. */
  router?(layer: number, routing: Routing, input: Float32Array, tokens: number): void;
  /** One routed expert: its output rows (before the routing weight) and which tokens they are. */
  expert?(layer: number, expert: number, output: Float32Array, tokens: Int32Array, slots: Int32Array): void;
  /** The whole MoE block (routed + shared), [tokens, hidden] each. */
  moe?(layer: number, input: Float32Array, output: Float32Array, tokens: number): void;
  /** The residual stream after a layer, [tokens, hidden]. */
  layer?(layer: number, hidden: Float32Array, tokens: number): void;
}

export interface LogitBlock {
  /** [rows, count] logits for vocab ids [start, start + count). */
  logits: Float32Array;
  rows: number;
  start: number;
  count: number;
}

/** Receives logits in blocks of rows × vocab range. */
export type LogitSink = (logits: Float32Array, rows: number, vocabStart: number, count: number) => void;

/** lm_head rows per block at most: bounds the weight slice for large vocabularies. */
const VOCAB_BLOCK = 8192;
/**
 * Logits per block at most (rows × vocab ids): 8 MB of float32, whatever the batch size. The product runs as fast
 * in blocks of 512 vocab rows as of 8,192 (measured: 1,024 or 4,096 rows × hidden 1024, 155–163 GMAC/s either way)
 * and smaller blocks touch less memory (the backend's buffers, the weight block).
 */
const LOGIT_BLOCK_FLOATS = 2 * 1024 * 1024;
/** Fewer vocab rows than this per block would make the lm_head product call-bound. */
const MIN_VOCAB_BLOCK = 256;

/** Vocab rows per lm_head block for a batch of N positions. */
export function vocabBlock(N: number, vocab: number): number {
  return Math.min(vocab, VOCAB_BLOCK, Math.max(MIN_VOCAB_BLOCK, Math.floor(LOGIT_BLOCK_FLOATS / Math.max(1, N))));
}
/** Default bytes of float32 weights kept per layer across batches. */
export const DEFAULT_LAYER_CACHE_BYTES = 1 << 30;

interface MlpWeights {
  gateUp: Float32Array;
  down: Float32Array;
  width: number;
  /** Biases and activation of gpt-oss's experts. */
  opts?: GluOptions;
}

export interface ForwardOptions {
  /** Bytes of a layer's float32 weights kept between batches (0: read them for every batch). */
  cacheBytes?: number;
  /**
   * Keep weights of every layer (not only the current one) within cacheBytes: the decoder runs all layers for each
   * token, so the first layers' weights stay in memory and the rest are read again per step.
   */
  allLayers?: boolean;
}

/**
 * Float32 buffers of released weights, handed to the next weights of the same size (the next layer's are the same
 * shapes). A fresh array costs a page fault per 4 KB on first touch, which measured 2–10× the cost of decoding
 * bf16 into it; the pool keeps at most maxBytes.
 */
class BufferPool {
  private free = new Map<number, Float32Array[]>();
  private bytes = 0;
  /** Where new buffers come from while it has room: bf16 weights decode into them by SIMD (io/wasm-arena.ts). */
  private readonly arena: WasmArena | undefined;

  constructor(private readonly maxBytes: number) {
    this.arena = WasmArena.create(maxBytes + ARENA_SCRATCH_BYTES);
  }

  take(n: number): Float32Array {
    const a = this.free.get(n)?.pop();
    if (!a) return this.arena?.alloc(n) ?? new Float32Array(n);
    this.bytes -= a.byteLength;
    return a;
  }

  give(a: Float32Array): void {
    if (this.bytes + a.byteLength > this.maxBytes) {
      this.arena?.dispose(a); // the arena keeps it for the next alloc of that size
      return;
    }
    const list = this.free.get(a.length);
    if (list) list.push(a);
    else this.free.set(a.length, [a]);
    this.bytes += a.byteLength;
  }
}

/** Arena room beyond the pool's: the raw bytes of the tensor being decoded (checkpoint.ts reads ≤ 64 MB at once). */
const ARENA_SCRATCH_BYTES = 80 << 20;

/** Pool room beyond the layer cache: the weights read again for each batch (experts beyond the cache, lm_head). */
const POOL_SLACK_BYTES = 64 << 20;

/** A weight's name without its layer (model.layers.3.self_attn.q_proj.weight → self_attn.q_proj.weight). */
function roleOf(name: string): string {
  return name.replace(/^model\.layers\.\d+\./, '');
}

/** The token indices in [0, N) not in `sorted` (ascending). */
function complement(sorted: Int32Array, N: number): Int32Array {
  const out = new Int32Array(N - sorted.length);
  let j = 0;
  let o = 0;
  for (let t = 0; t < N; t++) {
    if (j < sorted.length && sorted[j] === t) j++;
    else out[o++] = t;
  }
  return out;
}

export class ForwardPass {
  readonly spec: ForwardSpec;
  private rope?: RopeTables;
  private cache = new Map<string, Float32Array>();
  private cacheLayer = -1;
  private cached = 0;
  protected readonly cacheBytes: number;
  private readonly allLayers: boolean;
  private readonly pool: BufferPool;
  /** Pooled weights outside the cache, given back once the expert or block that used them is done. */
  private loose: Float32Array[] = [];
  /** Inside layers(): weights are used once, not cached. */
  private streaming = false;
  /** Weights used instead of the reader's, by tensor name (router alignment, src/quant/router-align.ts). */
  readonly weightOverrides = new Map<string, Float32Array>();
  /** Activation buffers reused from layer to layer, by role (see scratch()). */
  private scratchBufs = new Map<string, Float32Array>();

  constructor(
    protected readonly reader: TensorReader,
    readonly arch: Architecture,
    protected readonly be: Backend,
    opts: ForwardOptions = {},
  ) {
    this.spec = forwardSpec(arch);
    this.cacheBytes = opts.cacheBytes ?? DEFAULT_LAYER_CACHE_BYTES;
    this.allLayers = !!opts.allLayers;
    this.pool = new BufferPool(this.cacheBytes + POOL_SLACK_BYTES);
  }

  /**
   * The backend for the linear attention's chunked delta rule (deltanet-chunked.ts), or undefined for the per-token
   * recurrence: on the ref backend, whose batched matmul is scalar TS, the recurrence is faster (measured 2.5× at
   * dk = dv = 128, T = 512), and the goldens check it in float64.
   */
  private get chunkedOn(): Backend | undefined {
    return this.be.name === 'ref' ? undefined : this.be;
  }

  /** A weight as float32, from the layer cache when it is there. */
  protected load(name: string, layer: number): Float32Array {
    if (!this.allLayers && layer !== this.cacheLayer) this.release(layer);
    const given = this.weightOverrides.get(name);
    if (given) return given;
    const hit = this.cache.get(name);
    if (hit) return hit;
    return this.keep(name, true, this.reader.f32Into(name, this.pool.take(this.numel(name))));
  }

  /**
   * A reusable activation buffer of n floats for `role`, valid until the next request for the same role: fresh
   * arrays per layer cost page faults (~13 µs per 4 KB on this project's machine, 3–5× the work on them).
   */
  private scratch(role: string, n: number): Float32Array {
    let b = this.scratchBufs.get(role);
    if (!b || b.length < n) {
      b = new Float32Array(n);
      this.scratchBufs.set(role, b);
    }
    return b.subarray(0, n);
  }

  private numel(name: string): number {
    return this.reader.ref(name).shape.reduce((a, b) => a * b, 1);
  }

  /** Caches a pooled weight when `cacheable` and the budget allows, else keeps it to be given back (recycle). */
  private keep(key: string, cacheable: boolean, t: Float32Array): Float32Array {
    if (cacheable && !this.streaming && this.cached + t.byteLength <= this.cacheBytes) {
      this.cache.set(key, t);
      this.cached += t.byteLength;
    } else {
      this.loose.push(t);
    }
    return t;
  }

  /** Gives the weights used outside the cache back to the pool: their user must be done with them. */
  private recycle(): void {
    for (const t of this.loose) this.pool.give(t);
    this.loose = [];
  }

  private fused(key: string, layer: number, make: (alloc: (n: number) => Float32Array) => Float32Array): Float32Array {
    const same = this.allLayers || layer === this.cacheLayer;
    const hit = this.cache.get(key);
    if (hit && same) return hit;
    return this.keep(
      key,
      same,
      make((n) => this.pool.take(n)),
    );
  }

  /** Drops the cached weights (called automatically when another layer starts); their buffers go to the pool. */
  release(nextLayer = -1): void {
    for (const t of this.cache.values()) this.pool.give(t);
    this.recycle();
    this.cache.clear();
    this.cached = 0;
    this.cacheLayer = nextLayer;
  }

  protected ropeFor(T: number): RopeTables {
    if (!this.rope || this.rope.positions < T)
      this.rope = ropeTables(this.spec.rope, this.spec.ropeDim, T, this.spec.maxPositions);
    return this.rope;
  }

  /** Embeds windows of token ids: [tokens, hidden]. */
  embed(ids: Int32Array): Float32Array {
    return scaleInPlace(this.reader.gatherF32('model.embed_tokens.weight', ids), this.arch.multipliers.embedding);
  }

  /** Runs all layers over the hidden states of `windows` windows of length T, in place. */
  async layers(hidden: Float32Array, windows: number, T: number, observer?: ForwardObserver): Promise<void> {
    // Each layer runs once here, so caching its weights gains nothing: every weight goes back to the pool as soon as
    // it is used, and the pool hands the same few buffers round (a smaller working set, no fresh memory per layer).
    this.streamWeights(true);
    try {
      for (let l = 0; l < this.arch.numLayers; l++) await this.layer(l, hidden, windows, T, observer);
    } finally {
      this.streamWeights(false);
    }
    this.release();
  }

  /**
   * Whether each layer runs one batch only (layers(), or a calibration of one batch): its weights are then used
   * once, so they go back to the pool as soon as they are used instead of filling the layer cache.
   */
  streamWeights(on: boolean): void {
    this.streaming = on && !this.allLayers;
  }

  /** y = x·Wᵀ + b for the weight `name` (bias `name` with .bias), telling the observer its input. */
  private async linear(
    name: string,
    layer: number,
    x: Float32Array,
    rows: number,
    inDim: number,
    outDim: number,
    observer?: ForwardObserver,
    reuse = false,
  ): Promise<Float32Array> {
    observer?.linear?.(name, x, rows, inDim);
    const biasName = name.replace(/\.weight$/, '.bias');
    const bias = this.arch.classify(biasName) ? this.load(biasName, layer) : undefined;
    // reuse: the output is dead once the layer is done, so it goes to the same buffer in every layer
    const into = reuse ? this.scratch(roleOf(name), rows * outDim) : undefined;
    return this.be.linear(x, this.load(name, layer), rows, inDim, outDim, bias, into);
  }

  async layer(l: number, hidden: Float32Array, windows: number, T: number, observer?: ForwardObserver): Promise<void> {
    const h = this.arch.hidden;
    const N = windows * T;
    const p = `model.layers.${l}`;
    this.arch.checkWindow(T); // e.g. DeepSeek-V3.2: dense attention is exact only up to index_topk tokens
    if (!this.allLayers && l !== this.cacheLayer) this.release(l);
    // the norm's output is dead once the mixer returns: the MLP's input reuses its buffer
    const normBuf = this.scratch('norm', N * h);
    const normed = this.norm(hidden, `${p}.input_layernorm.weight`, l, normBuf);
    const linear = this.arch.linearAttention(l);
    const mixer = linear ? 'linear_attn' : 'self_attn';
    const w = (name: string) => {
      const full = `${p}.${mixer}.${name}`;
      if (!this.arch.classify(full)) return undefined;
      // the gated norm of the linear attention is not zero-centred; q_norm / k_norm are
      return !linear && name.endsWith('norm.weight') ? this.normWeight(full, l) : this.load(full, l);
    };
    const lin: Linear = (proj, x, rows, inDim, outDim) =>
      this.linear(`${p}.${mixer}.${proj}.weight`, l, x, rows, inDim, outDim, observer, true);
    const residual = this.arch.multipliers.residual;
    addInPlace(hidden, await this.mixer(l, normed, windows, T, lin, w), residual);
    this.recycle();
    const x = this.norm(hidden, `${p}.post_attention_layernorm.weight`, l, normBuf);
    const out = this.arch.isMoeLayer(l)
      ? await this.moeBlock(l, x, N, observer)
      : await this.mlp(this.arch.denseMlpPrefix(l), l, x, N, observer);
    addInPlace(hidden, out, residual);
    this.recycle();
    observer?.layer?.(l, hidden, N);
  }

  /** Layer l's attention (or linear attention) of its normed input [windows × T, hidden]; the decoder's caches. */
  protected mixer(
    l: number,
    x: Float32Array,
    windows: number,
    T: number,
    lin: Linear,
    w: Weights,
  ): Promise<Float32Array> {
    const h = this.arch.hidden;
    const linear = this.arch.linearAttention(l);
    if (linear) return gatedDeltaNet(lin, x, h, windows, T, linear, w, this.chunkedOn);
    const a = this.spec.attention;
    const rope = this.ropeFor(T);
    return a.kind === 'gqa'
      ? gqa(this.be, lin, x, h, windows, T, a, w, rope, this.arch.layerAttention(l))
      : mla(this.be, lin, x, h, windows, T, a, w, rope);
  }

  /** The norm `weight` names (an RMSNorm, or PhiMoE's LayerNorm with its bias) of x [rows, hidden]. */
  norm(x: Float32Array, weight: string, layer: number, out?: Float32Array): Float32Array {
    const h = this.arch.hidden;
    if (!this.arch.layerNorms) return rmsNorm(x, this.normWeight(weight, layer), h, this.spec.eps, out);
    const bias = this.load(weight.replace(/\.weight$/, '.bias'), layer);
    return layerNorm(x, this.load(weight, layer), bias, h, this.spec.eps, out, this.arch.biasedRmsNorms);
  }

  /** An RMSNorm weight plus the architecture's offset (Qwen3-Next's zero-centred norms apply 1 + weight). */
  private normWeight(name: string, layer: number): Float32Array {
    const off = this.arch.normOffset;
    if (off === 0) return this.load(name, layer);
    return this.fused(`${name}+${off}`, layer, (alloc) => {
      const t = this.reader.f32Into(name, alloc(this.numel(name)));
      for (let i = 0; i < t.length; i++) t[i] += off;
      return t;
    });
  }

  private mlpWeights(gate: string, up: string, down: string, l: number): MlpWeights {
    // gate and up rows decoded straight into one buffer: the swiglu's fused [2·width, hidden] operand, no copy
    const gateUp = this.fused(`${gate}+up`, l, (alloc) => {
      const ng = this.numel(gate);
      const t = alloc(ng + this.numel(up));
      this.reader.f32Into(gate, t.subarray(0, ng));
      this.reader.f32Into(up, t.subarray(ng));
      return t;
    });
    const d = this.load(down, l);
    return { gateUp, down: d, width: d.length / this.arch.hidden };
  }

  /** down(silu(gate(x)) · up(x)) for x [rows, hidden], gate and up fused into one product. */
  private async runMlp(
    w: MlpWeights,
    names: { gate: string; down: string },
    x: Float32Array,
    rows: number,
    observer?: ForwardObserver,
    into?: Float32Array,
    expertRows?: ExpertRows,
  ): Promise<Float32Array> {
    const h = this.arch.hidden;
    if (rows === 0) return new Float32Array(0);
    observer?.linear?.(names.gate, x, rows, h, expertRows);
    const wantAct = !!observer?.linear;
    const { out, act } = await this.be.swiglu(x, w.gateUp, w.down, rows, h, w.width, wantAct, w.opts, into);
    if (wantAct) observer!.linear!(names.down, act!, rows, w.width, expertRows);
    return out;
  }

  private mlp(
    prefix: string,
    l: number,
    x: Float32Array,
    rows: number,
    observer?: ForwardObserver,
  ): Promise<Float32Array> {
    const names = {
      gate: `${prefix}.gate_proj.weight`,
      up: `${prefix}.up_proj.weight`,
      down: `${prefix}.down_proj.weight`,
    };
    const w = this.mlpWeights(names.gate, names.up, names.down, l);
    return this.runMlp(w, names, x, rows, observer, this.scratch(roleOf(prefix), rows * this.arch.hidden));
  }

  /**
   * --all-experts: expert e on the tokens the router did not send it, for the linear observers only (their rows
   * weighted by the router probability, or scaled by it for input-scaled experts); the output is dropped, so the
   * forward and the routed statistics are those of a plain pass.
   */
  private async observeUnrouted(
    weights: MlpWeights,
    names: { gate: string; down: string },
    x: Float32Array,
    N: number,
    routed: Int32Array,
    probs: Float32Array,
    e: number,
    observer: ForwardObserver,
  ): Promise<void> {
    const h = this.arch.hidden;
    const E = this.arch.numExperts;
    const others = complement(routed, N);
    if (others.length === 0) return;
    const rows = others.length;
    const xo = gatherRows(x, h, others, this.scratch('expertIn', rows * h));
    const g = Float32Array.from(others, (t) => probs[t * E + e]);
    // input-scaled experts (Llama 4) would see g · x had the router chosen them
    if (this.arch.routing.inputScaled) scaleRows(xo, h, g);
    const p = { routed: false, weights: this.arch.routing.inputScaled ? g.fill(1) : g };
    await this.runMlp(weights, names, xo, rows, observer, this.scratch('expertOut', rows * h), p);
  }

  private async moeBlock(l: number, x: Float32Array, N: number, observer?: ForwardObserver): Promise<Float32Array> {
    const a = this.arch;
    const h = a.hidden;
    const E = a.numExperts;
    const k = a.topK;
    const logits = await this.linear(a.routerKey(l), l, x, N, h, E, observer);
    const biasKey = a.correctionBiasKey(l);
    const routing = route(logits, N, E, a.routing, biasKey ? this.load(biasKey, l) : undefined);
    observer?.router?.(l, routing, x, N);
    const out = this.scratch('moe', N * h).fill(0);
    const lists = tokensPerExpert(routing, N, k, E);
    const scaled = !!a.routing.inputScaled;
    const applied = outputWeights(routing, a.routing);
    const allExperts = !!observer?.linear && !!observer.allExperts;
    for (let e = 0; e < E; e++) {
      const { tokens, slots } = lists[e];
      if (tokens.length === 0 && (!allExperts || N === 0)) continue;
      const names = { gate: a.expertKey(l, e, 'gate'), up: a.expertKey(l, e, 'up'), down: a.expertKey(l, e, 'down') };
      const weights = this.mlpWeights(names.gate, names.up, names.down, l);
      weights.opts = expertGluOptions(a, l, e, (name) => this.load(name, l));
      const rows = tokens.length;
      if (rows > 0) {
        // ye includes the down bias (gpt-oss): the routing weight scales it too, and observers see it (REAP).
        const xe = gatherRows(x, h, tokens, this.scratch('expertIn', rows * h));
        if (scaled)
          scaleRows(
            xe,
            h,
            Float32Array.from(tokens, (t, i) => routing.weights[t * k + slots[i]]),
          );
        const gates = observer?.linear
          ? { routed: true, weights: Float32Array.from(tokens, (t, i) => applied[t * k + slots[i]]) }
          : undefined;
        const ye = await this.runMlp(weights, names, xe, rows, observer, this.scratch('expertOut', rows * h), gates);
        observer?.expert?.(l, e, ye, tokens, slots);
        scatterAdd(out, ye, h, tokens, slots, applied, k);
      }
      if (allExperts) await this.observeUnrouted(weights, names, x, N, tokens, routing.probs, e, observer!);
      this.recycle();
    }
    if (this.spec.shared !== 'none') {
      const s = await this.mlp(a.sharedExpertPrefix(l), l, x, N, observer);
      if (this.spec.shared === 'gated') {
        const gate = await this.linear(a.sharedGateKey(l), l, x, N, h, 1, observer);
        for (let n = 0; n < N; n++) {
          const g = sigmoid(gate[n]);
          for (let j = 0; j < h; j++) s[n * h + j] *= g;
        }
      }
      addInPlace(out, s);
    }
    observer?.moe?.(l, x, out, N);
    return out;
  }

  /** Final norm and lm_head (tied to the embeddings when the config says so), in blocks of the vocabulary. */
  async *headBlocks(hidden: Float32Array, N: number): AsyncGenerator<LogitBlock> {
    const { x, blocks } = this.headInput(hidden, N);
    for (const { start, count, w } of blocks()) {
      const wb = w();
      const logits = await this.be.linear(x, wb, N, this.arch.hidden, count, this.headBiasOf(start, count));
      this.pool.give(wb);
      yield { logits, rows: N, start, count };
    }
  }

  /**
   * The final norm of hidden [rows, hidden]; its weights come from `weight` (by default read here: model.norm is
   * outside every layer's cache; the decoder passes its cached loader).
   */
  protected finalNorm(
    hidden: Float32Array,
    weight: (name: string) => Float32Array = (name) => this.reader.f32(name),
  ): Float32Array {
    const a = this.arch;
    const w = weight('model.norm.weight');
    if (a.layerNorms)
      return layerNorm(hidden, w, weight('model.norm.bias'), a.hidden, this.spec.eps, undefined, a.biasedRmsNorms);
    const off = a.normOffset;
    return rmsNorm(hidden, off === 0 ? w : w.map((v) => v + off), a.hidden, this.spec.eps);
  }

  /** The lm_head bias of vocabulary entries start..start+count (PhiMoE), if the model has one. */
  protected headBiasOf(start: number, count: number): Float32Array | undefined {
    const name = this.arch.headBias;
    return name ? this.reader.rowsF32(name, start, count) : undefined;
  }

  /** The final-normed hidden states and the lm_head's vocabulary blocks (rows loaded when asked). */
  private headInput(hidden: Float32Array, N: number) {
    const a = this.arch;
    // GraniteMoE's logits / logits_scaling, applied to the normed states the lm_head multiplies
    const x = scaleInPlace(this.finalNorm(hidden), 1 / a.multipliers.logits);
    const name = a.tieEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    const block = vocabBlock(N, a.vocab);
    const reader = this.reader;
    const pool = this.pool;
    // each block's rows decoded into a pooled buffer, which the caller gives back once the block is computed
    function* blocks() {
      for (let start = 0; start < a.vocab; start += block) {
        const count = Math.min(block, a.vocab - start);
        yield { start, count, w: () => reader.rowsF32Into(name, start, count, pool.take(count * a.hidden)) };
      }
    }
    return { x, blocks };
  }

  /**
   * Per-row logit statistics over the whole vocabulary (Backend.logitStats per block); logits stay in the backend.
   */
  async headStats(
    hidden: Float32Array,
    N: number,
    targets: Int32Array,
    into: { merge(b: LogitStats, start: number): void },
  ): Promise<void> {
    const { x, blocks } = this.headInput(hidden, N);
    const h = this.arch.hidden;
    // an lm_head bias (PhiMoE) rides along as one more input column: [x | 1] · [W | b]ᵀ = x·Wᵀ + b
    const withBias = !!this.arch.headBias;
    const xb = withBias ? appendColumn(x, N, h, () => 1) : x;
    for (const { start, count, w } of blocks()) {
      const wb = w();
      const bias = this.headBiasOf(start, count);
      const wt = bias ? appendColumn(wb, count, h, (r) => bias[r]) : wb;
      into.merge(await this.be.logitStats(xb, wt, N, withBias ? h + 1 : h, count, targets, start), start);
      this.pool.give(wb);
    }
  }

  async head(hidden: Float32Array, N: number, sink: LogitSink): Promise<void> {
    for await (const b of this.headBlocks(hidden, N)) sink(b.logits, b.rows, b.start, b.count);
  }

  /** Embeds, runs every layer and the head for windows of equal length T (ids: [windows × T]). */
  async run(ids: Int32Array, windows: number, T: number, sink: LogitSink, observer?: ForwardObserver): Promise<void> {
    const hidden = this.embed(ids);
    await this.layers(hidden, windows, T, observer);
    await this.head(hidden, windows * T, sink);
  }
}

/** [rows, cols] with one more column, value(r) in row r. */
function appendColumn(x: Float32Array, rows: number, cols: number, value: (r: number) => number): Float32Array {
  const out = new Float32Array(rows * (cols + 1));
  for (let r = 0; r < rows; r++) {
    out.set(x.subarray(r * cols, (r + 1) * cols), r * (cols + 1));
    out[r * (cols + 1) + cols] = value(r);
  }
  return out;
}

/** A sink that keeps the full logits [rows, vocab] (small models and tests only). */
export function fullLogits(rows: number, vocab: number): { sink: LogitSink; logits: Float32Array } {
  const logits = new Float32Array(rows * vocab);
  const sink: LogitSink = (block, n, start, count) => {
    for (let r = 0; r < n; r++) logits.set(block.subarray(r * count, (r + 1) * count), r * vocab + start);
  };
  return { sink, logits };
}
