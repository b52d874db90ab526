/**
 * Incremental decoding with a KV cache: `extend` runs new tokens after the ones already cached (the prompt in one
 * prefill pass, then one token per step) through every layer, the same layer code as the window forward pass
 * (model.ts) with the token mixer replaced:
 * - attention (GQA and MLA): q, k and v of the new tokens at their absolute positions; k and v are appended to the
 *   layer's cache and each new query attends to the cached keys up to its own position (gpt-oss: within its
 *   sliding window, with the sinks). MLA caches the per-head keys and values (not the latent).
 * - Qwen3-Next / Qwen3.5 gated delta-net: the recurrent state S [dk, dv] per value head and the causal conv's last
 *   K − 1 inputs carry over between calls.
 * - MoE layers route each token as the window forward does.
 * Weights: all layers' float32 weights stay cached within the byte budget (ForwardOptions.cacheBytes); beyond it
 * they are read again at every step, so memory stays bounded. DeepSeek-V3.2 runs dense attention, exact while the
 * total length is at most index_topk (arch.checkWindow refuses more).
 */
import { firstAttended } from '../../backend/backend';
import type { AttentionOptions, Backend } from '../../backend/backend';
import { attendRow } from '../../backend/ref';
import { InternalError } from '../../errors';
import type { TensorReader } from '../../io/checkpoint';
import type { Architecture } from '../arch';
import { causalAttention, gqaOutput, gqaProject, Linear, mlaProject, Weights } from './attention';
import { deltaGates, deltaInputs, deltaOutput, DeltaNetSpec, deltaSilu, recurrenceFrom } from './deltanet';
import { ForwardObserver, ForwardOptions, ForwardPass, fullLogits } from './model';
import { scaleInPlace } from './ops';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

/** One attention layer's cache: keys [capacity, heads, dk] and values [capacity, heads, dv]. */
interface AttentionCache {
  k: Float32Array;
  v: Float32Array;
  heads: number;
  dk: number;
  dv: number;
}

/** A linear-attention layer's state: S per value head (float64 [dk, dv]), the conv's last K − 1 inputs [K − 1, C]. */
interface DeltaState {
  S: Float64Array[];
  conv: Float32Array;
}

function need(w: Weights, name: string): Float32Array {
  const t = w(name);
  if (!t) throw new InternalError(`decoder: weight ${name} not loaded`);
  return t;
}

/**
 * Softmax attention of N new queries q [N, H, dk] (absolute positions past..past+N−1) over the cached keys and
 * values of positions 0..past+N−1; query head h reads cache head ⌊h / (H / heads)⌋. Float64 sums as the ref
 * backend's attention. Returns [N, H, dv].
 */
export function attendCached(
  q: Float32Array,
  c: AttentionCache,
  past: number,
  N: number,
  H: number,
  scale: number,
  opts: AttentionOptions = {},
): Float32Array {
  const { heads: KV, dk, dv } = c;
  const group = H / KV;
  const out = new Float32Array(N * H * dv);
  const p = new Float64Array(past + N);
  const acc = new Float64Array(dv);
  for (let n = 0; n < N; n++) {
    const t = past + n;
    const first = firstAttended(t, opts);
    for (let h = 0; h < H; h++) {
      const kh = math.floor(h / group);
      const rows = { k: c.k, kBase: kh * dk, kStep: KV * dk, v: c.v, vBase: kh * dv, vStep: KV * dv };
      const sink = opts.sinks ? opts.sinks[h] : -Infinity;
      attendRow(q, (n * H + h) * dk, rows, dk, dv, first, t, scale, sink, opts.sinks !== undefined, p, acc);
      out.set(acc, (n * H + h) * dv);
    }
  }
  return out;
}

/** Causal depthwise conv of N new rows x [N, C] after the K − 1 previous inputs in `state` (updated), then silu. */
function convStep(x: Float32Array, weight: Float32Array, state: Float32Array, N: number, C: number, K: number) {
  const out = new Float32Array(N * C);
  const src = (j: number, c: number) => (j >= 0 ? x[j * C + c] : state[(K - 1 + j) * C + c]);
  for (let t = 0; t < N; t++) {
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let i = 0; i < K; i++) {
        s += weight[c * K + i] * src(t - (K - 1) + i, c); // a fresh state's zeros add nothing, as the window's start
      }
      out[t * C + c] = deltaSilu(math.fround(s));
    }
  }
  const next = new Float32Array(state.length);
  for (let r = 0; r < K - 1; r++) {
    const j = N - (K - 1) + r;
    for (let c = 0; c < C; c++) next[r * C + c] = src(j, c);
  }
  state.set(next);
  return out;
}

/**
 * What a decoder has cached: every layer's keys and values or recurrent state, and how many tokens. Opaque outside;
 * `Decoder.state` hands the live one out (extend mutates it), `Decoder.fork` copies it, so that several sequences
 * sharing a prefix (beam search: src/calib/ebss.ts) each run on their own from one decoder and its weight cache.
 */
export interface DecoderState {
  readonly attention: (AttentionCache | undefined)[];
  readonly deltas: (DeltaState | undefined)[];
  readonly past: number;
  readonly capacity: number;
}

export class Decoder extends ForwardPass {
  private attention: (AttentionCache | undefined)[] = [];
  private deltas: (DeltaState | undefined)[] = [];
  private past = 0;
  private capacity = 0;

  constructor(reader: TensorReader, arch: Architecture, be: Backend, opts: ForwardOptions = {}) {
    super(reader, arch, be, { ...opts, allLayers: true });
  }

  /** Tokens in the cache. */
  get length(): number {
    return this.past;
  }

  /** The live cache (not a copy: the next extend changes it). */
  get state(): DecoderState {
    return { attention: this.attention, deltas: this.deltas, past: this.past, capacity: this.capacity };
  }

  /** Continues from `s` (taken from `state` or `fork`; it is not copied, so later extends change it). */
  set state(s: DecoderState) {
    this.attention = s.attention;
    this.deltas = s.deltas;
    this.past = s.past;
    this.capacity = s.capacity;
  }

  /** A copy of `s` (default: the live cache) that later extends of the original leave alone. */
  fork(s: DecoderState = this.state): DecoderState {
    return {
      attention: s.attention.map((c) => c && { ...c, k: c.k.slice(), v: c.v.slice() }),
      deltas: s.deltas.map((d) => d && { S: d.S.map((m) => m.slice()), conv: d.conv.slice() }),
      past: s.past,
      capacity: s.capacity,
    };
  }

  /** Forgets the cached tokens (the weights stay cached). */
  reset(): void {
    this.attention = [];
    this.deltas = [];
    this.past = 0;
    this.capacity = 0;
  }

  /**
   * Runs `ids` after the cached tokens and caches them. Returns the logits [vocab] of the last new position, or of
   * every new position [N, vocab] with `all`. The observer sees the new tokens' layers as the window forward
   * reports them (the router's decisions, …).
   */
  async extend(ids: Int32Array, all = false, observer?: ForwardObserver): Promise<Float32Array> {
    const N = ids.length;
    if (N === 0) throw new InternalError('decoder: extend needs at least one token');
    this.arch.checkWindow(this.past + N);
    this.reserve(this.past + N);
    const hidden = this.embed(ids);
    for (let l = 0; l < this.arch.numLayers; l++) await this.layer(l, hidden, 1, N, observer);
    this.past += N;
    const h = this.arch.hidden;
    return all ? this.logits(hidden, N) : this.logits(hidden.subarray((N - 1) * h), 1);
  }

  /** Grows every attention cache to hold `tokens` positions (doubling). */
  private reserve(tokens: number): void {
    if (tokens <= this.capacity) return;
    const cap = math.max(tokens, 2 * this.capacity, 64);
    for (const c of this.attention) {
      if (!c) continue;
      const k = new Float32Array(cap * c.heads * c.dk);
      k.set(c.k);
      const v = new Float32Array(cap * c.heads * c.dv);
      v.set(c.v);
      c.k = k;
      c.v = v;
    }
    this.capacity = cap;
  }

  private cacheOf(l: number, heads: number, dk: number, dv: number): AttentionCache {
    const cap = this.capacity;
    this.attention[l] ??= {
      heads,
      dk,
      dv,
      k: new Float32Array(cap * heads * dk),
      v: new Float32Array(cap * heads * dv),
    };
    return this.attention[l];
  }

  protected override mixer(
    l: number,
    x: Float32Array,
    _windows: number,
    T: number,
    lin: Linear,
    w: Weights,
  ): Promise<Float32Array> {
    const linear = this.arch.linearAttention(l);
    return linear ? this.deltaMixer(l, x, T, linear, lin, w) : this.attentionMixer(l, x, T, lin, w);
  }

  private async attentionMixer(l: number, x: Float32Array, N: number, lin: Linear, w: Weights) {
    const a = this.spec.attention;
    const hidden = this.arch.hidden;
    const past = this.past;
    const rope = this.ropeFor(this.capacity); // ≥ past + N, grown by doubling: the tables are not rebuilt per step
    const pos = (n: number) => past + n;
    let heads: number;
    let dk: number;
    let dv: number;
    let kvHeads: number;
    let p: { q: Float32Array; k: Float32Array; v: Float32Array; gate?: Float32Array };
    let opts: AttentionOptions = {};
    if (a.kind === 'gqa') {
      const layer = this.arch.layerAttention(l);
      p = await gqaProject(lin, x, hidden, N, a, w, rope, pos, layer);
      [heads, kvHeads, dk, dv] = [a.heads, a.kvHeads, a.headDim, a.headDim];
      opts = { window: layer.window, chunk: layer.chunk, sinks: a.sinks ? need(w, 'sinks') : undefined };
    } else {
      p = await mlaProject(lin, x, hidden, N, a, w, rope, pos);
      [heads, kvHeads, dk, dv] = [a.heads, a.heads, a.nopeDim + a.ropeDim, a.vDim];
    }
    const c = this.cacheOf(l, kvHeads, dk, dv);
    c.k.set(p.k, past * kvHeads * dk);
    c.v.set(p.v, past * kvHeads * dv);
    let out: Float32Array;
    if (past === 0 && N > 1) {
      // the prefill: the window forward's attention on the backend
      out = await causalAttention(this.be, p.q, p.k, p.v, 1, N, heads, kvHeads, dk, dv, a.scale, opts);
    } else {
      out = attendCached(p.q, c, past, N, heads, a.scale, opts);
    }
    if (a.kind === 'gqa') return gqaOutput(lin, out, p.gate, N, a, hidden);
    return lin('o_proj', out, N, heads * dv, hidden);
  }

  private async deltaMixer(l: number, x: Float32Array, N: number, spec: DeltaNetSpec, lin: Linear, w: Weights) {
    const hidden = this.arch.hidden;
    const { mixed, z, b, a, C } = await deltaInputs(lin, x, hidden, N, spec);
    const K = spec.convKernel;
    const s = (this.deltas[l] ??= {
      S: Array.from({ length: spec.valueHeads }, () => new Float64Array(spec.keyDim * spec.valueDim)),
      conv: new Float32Array((K - 1) * C),
    });
    const conv = convStep(mixed, need(w, 'conv1d.weight'), s.conv, N, C, K);
    const { beta, decay } = deltaGates(spec, w, b, a, N);
    const core = new Float32Array(N * spec.valueHeads * spec.valueDim);
    recurrenceFrom(spec, conv, beta, decay, 0, N, C, (h) => s.S[h], core);
    return deltaOutput(lin, core, z, N, hidden, spec, w);
  }

  /** Final norm and lm_head of rows x [rows, hidden] → [rows, vocab]; lm_head kept within the budget when it fits. */
  private async logits(x: Float32Array, rows: number): Promise<Float32Array> {
    const a = this.arch;
    const name = a.tieEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    if (a.vocab * a.hidden * 4 > this.cacheBytes) {
      const { sink, logits } = fullLogits(rows, a.vocab);
      await this.head(x, rows, sink);
      return logits;
    }
    // norm, head and its bias kept with the lm_head (layer −1), not read again at every step
    const cached = (n: string) => this.load(n, -1);
    const normed = scaleInPlace(this.finalNorm(x, cached), 1 / a.multipliers.logits);
    const bias = a.headBias ? cached(a.headBias) : undefined;
    return this.be.linear(normed, cached(name), rows, a.hidden, a.vocab, bias);
  }
}
