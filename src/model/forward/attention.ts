/**
 * Causal self-attention over windows that are run on their own (no cache, no padding): grouped-query attention
 * (Mixtral, Qwen2/3-MoE, OLMoE) and DeepSeek's multi-head latent attention (MLA). Activations are rows of all
 * windows' tokens, [tokens, features], with tokens = windows × T.
 */
import type { AttentionOptions, Backend } from '../../backend/backend';
import { applyRope, RopeTables } from './rope';
import { rmsNorm, rmsNormStrided } from './ops';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

export interface GqaSpec {
  kind: 'gqa';
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Qwen3: RMSNorm per head of q and k; OLMoE: over the whole q and k projections. */
  qkNorm: 'none' | 'head' | 'full';
  /** OLMoE's optional clamp of q, k and v. */
  clipQkv?: number;
  /** gpt-oss: a learned per-head logit in every softmax denominator (`self_attn.sinks` [heads]). */
  sinks?: boolean;
  /**
   * Qwen3-Next: q_proj gives per head [query (headDim) | gate (headDim)]; the attention output is multiplied by
   * sigmoid(gate) before o_proj.
   */
  outputGate?: boolean;
  /**
   * Rotary dimensions of each head when the family decides them (GLM-4.5: partial_rotary_factor, default 0.5);
   * otherwise head_dim × partial_rotary_factor (default 1).
   */
  ropeDim?: number;
  /**
   * HunYuan: the per-head q/k norms come after the rotary (qkNorm 'head'), stored as self_attn.query_layernorm /
   * key_layernorm.
   */
  qkNormAfterRope?: boolean;
  /** Llama 4: rotate (2i, 2i+1) pairs (the complex-number form) instead of rotate-half. */
  interleaved?: boolean;
  /** Llama 4 (use_qk_norm): each head of q and k RMS-normalised without a weight after the rotary, on rope layers. */
  l2QkNorm?: boolean;
  /**
   * Llama 4's attention temperature tuning on its NoPE layers: q × (1 + attnScale · log1p(⌊(pos + 1) / floorScale⌋)).
   */
  temperature?: { floorScale: number; attnScale: number };
  scale: number;
  eps: number;
}

/** What differs between the attention layers of one model (Llama 4: NoPE layers, chunked rope layers). */
export interface LayerAttention {
  /** The rotary embedding is applied (false: a NoPE layer). */
  rope: boolean;
  /** AttentionOptions.window / .chunk of the layer. */
  window?: number;
  chunk?: number;
}

export interface MlaSpec {
  kind: 'mla';
  heads: number;
  qLoraRank?: number;
  kvLoraRank: number;
  nopeDim: number;
  ropeDim: number;
  vDim: number;
  /** DeepSeek-V3 with rope_interleave and V2: rotate (2i, 2i+1) pairs; otherwise rotate-half. */
  interleaved: boolean;
  scale: number;
  eps: number;
}

export type AttentionSpec = GqaSpec | MlaSpec;

/** Attention weights of one layer by their name under `self_attn.` (e.g. "q_norm.weight"). */
export type Weights = (name: string) => Float32Array | undefined;

/**
 * Applies the projection `proj` (e.g. "q_proj": its weight and bias if any) to x [rows, inDim] → [rows, outDim].
 * The forward pass supplies it, so it can load weights and show every linear's input to observers.
 */
export type Linear = (
  proj: string,
  x: Float32Array,
  rows: number,
  inDim: number,
  outDim: number,
) => Promise<Float32Array>;

function need(w: Weights, name: string): Float32Array {
  const t = w(name);
  if (!t) throw new Error(`attention weight ${name} not loaded`);
  return t;
}

/**
 * Softmax(Q·Kᵀ·scale + causal mask)·V for each window, token-major as the projections give them: q [tokens, H, dk],
 * k [tokens, KV, dk], v [tokens, KV, dv] → [tokens, H, dv]; query head h reads key/value head ⌊h / (H / KV)⌋.
 */
export async function causalAttention(
  be: Backend,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  windows: number,
  T: number,
  H: number,
  KV: number,
  dk: number,
  dv: number,
  scale: number,
  opts?: AttentionOptions,
): Promise<Float32Array> {
  const out = new Float32Array(windows * T * H * dv);
  for (let w = 0; w < windows; w++) {
    const rows = (n: number, d: number) => [w * T * n * d, (w + 1) * T * n * d] as const;
    await be.attentionTokens(
      q.subarray(...rows(H, dk)),
      k.subarray(...rows(KV, dk)),
      v.subarray(...rows(KV, dv)),
      T,
      H,
      KV,
      dk,
      dv,
      scale,
      opts,
      out.subarray(...rows(H, dv)),
    );
  }
  return out;
}

/** Splits rows of [first (d) | second (d)] into two [rows, d] arrays. */
function splitHeads(x: Float32Array, rows: number, d: number): [Float32Array, Float32Array] {
  const a = new Float32Array(rows * d);
  const b = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) {
    a.set(x.subarray(2 * r * d, (2 * r + 1) * d), r * d);
    b.set(x.subarray((2 * r + 1) * d, (2 * r + 2) * d), r * d);
  }
  return [a, b];
}

/** q, k and v of x [N, hidden] for tokens at positions pos(n): projected, clipped, q/k-normed and rotated. */
export async function gqaProject(
  lin: Linear,
  x: Float32Array,
  hidden: number,
  N: number,
  spec: GqaSpec,
  w: Weights,
  rope: RopeTables,
  pos: (n: number) => number,
  layer: LayerAttention = { rope: true },
): Promise<{ q: Float32Array; k: Float32Array; v: Float32Array; gate?: Float32Array }> {
  const { heads: H, kvHeads: KV, headDim: d } = spec;
  let q = await lin('q_proj', x, N, hidden, (spec.outputGate ? 2 : 1) * H * d);
  let gate: Float32Array | undefined;
  if (spec.outputGate) [q, gate] = splitHeads(q, N * H, d);
  const k = await lin('k_proj', x, N, hidden, KV * d);
  const v = await lin('v_proj', x, N, hidden, KV * d);
  if (spec.clipQkv !== undefined) {
    const c = spec.clipQkv;
    for (const a of [q, k, v]) for (let i = 0; i < a.length; i++) a[i] = math.min(c, math.max(-c, a[i]));
  }
  /** Each head of q and k RMS-normalised, with these weights (none: Llama 4's L2 norm). */
  const perHead = (qw?: Float32Array, kw?: Float32Array) => {
    rmsNormStrided(q, N * H, d, 0, d, qw, spec.eps);
    rmsNormStrided(k, N * KV, d, 0, d, kw, spec.eps);
  };
  if (spec.qkNorm === 'full') {
    rmsNorm(q, need(w, 'q_norm.weight'), H * d, spec.eps, q);
    rmsNorm(k, need(w, 'k_norm.weight'), KV * d, spec.eps, k);
  } else if (spec.qkNorm === 'head' && !spec.qkNormAfterRope) {
    perHead(need(w, 'q_norm.weight'), need(w, 'k_norm.weight'));
  }
  if (layer.rope) {
    applyRope(q, N, H, d, 0, rope, pos, !!spec.interleaved);
    applyRope(k, N, KV, d, 0, rope, pos, !!spec.interleaved);
    if (spec.qkNorm === 'head' && spec.qkNormAfterRope)
      perHead(need(w, 'query_layernorm.weight'), need(w, 'key_layernorm.weight'));
    if (spec.l2QkNorm) perHead();
  } else if (spec.temperature) {
    temperatureTune(q, N, H * d, spec.temperature, pos);
  }
  return { q, k, v, gate };
}

/**
 * Llama 4's query scale on NoPE layers, in float32 as transformers computes it:
 * 1 + attnScale · log1p(⌊(pos + 1) / floorScale⌋), row n of q [N, cols] at position pos(n).
 */
function temperatureTune(
  q: Float32Array,
  N: number,
  cols: number,
  t: { floorScale: number; attnScale: number },
  pos: (n: number) => number,
): void {
  const f = math.fround;
  for (let n = 0; n < N; n++) {
    const s = f(f(f(math.log1p(math.floor(f(f(pos(n) + 1) / t.floorScale)))) * f(t.attnScale)) + 1);
    for (let i = n * cols; i < (n + 1) * cols; i++) q[i] = f(q[i] * s);
  }
}

/** Qwen3-Next's output gate (out × sigmoid(gate), in place) and o_proj. */
export function gqaOutput(
  lin: Linear,
  out: Float32Array,
  gate: Float32Array | undefined,
  N: number,
  spec: GqaSpec,
  hidden: number,
): Promise<Float32Array> {
  if (gate) for (let i = 0; i < out.length; i++) out[i] *= 1 / (1 + math.exp(-gate[i]));
  return lin('o_proj', out, N, spec.heads * spec.headDim, hidden);
}

export async function gqa(
  be: Backend,
  lin: Linear,
  x: Float32Array,
  hidden: number,
  windows: number,
  T: number,
  spec: GqaSpec,
  w: Weights,
  rope: RopeTables,
  layer: LayerAttention = { rope: true },
): Promise<Float32Array> {
  const N = windows * T;
  const { heads: H, kvHeads: KV, headDim: d } = spec;
  const { q, k, v, gate } = await gqaProject(lin, x, hidden, N, spec, w, rope, (n) => n % T, layer);
  const out = await causalAttention(be, q, k, v, windows, T, H, KV, d, d, spec.scale, {
    window: layer.window,
    chunk: layer.chunk,
    sinks: spec.sinks ? need(w, 'sinks') : undefined,
  });
  return gqaOutput(lin, out, gate, N, spec, hidden);
}

/**
 * MLA's q [N, H, nope | rope] and per-head keys [N, H, nope | rope] and values [N, H, v] of x [N, hidden] for
 * tokens at positions pos(n), the rotary parts rotated.
 */
export async function mlaProject(
  lin: Linear,
  x: Float32Array,
  hidden: number,
  N: number,
  spec: MlaSpec,
  w: Weights,
  rope: RopeTables,
  pos: (n: number) => number,
): Promise<{ q: Float32Array; k: Float32Array; v: Float32Array }> {
  const { heads: H, nopeDim, ropeDim, vDim, kvLoraRank } = spec;
  const dk = nopeDim + ropeDim;
  let q: Float32Array;
  if (spec.qLoraRank) {
    const qa = await lin('q_a_proj', x, N, hidden, spec.qLoraRank);
    rmsNorm(qa, need(w, 'q_a_layernorm.weight'), spec.qLoraRank, spec.eps, qa);
    q = await lin('q_b_proj', qa, N, spec.qLoraRank, H * dk);
  } else {
    q = await lin('q_proj', x, N, hidden, H * dk);
  }
  const ckv = await lin('kv_a_proj_with_mqa', x, N, hidden, kvLoraRank + ropeDim); // [N, rank + rope]
  const latent = new Float32Array(N * kvLoraRank);
  for (let n = 0; n < N; n++)
    latent.set(ckv.subarray(n * (kvLoraRank + ropeDim), n * (kvLoraRank + ropeDim) + kvLoraRank), n * kvLoraRank);
  rmsNorm(latent, need(w, 'kv_a_layernorm.weight'), kvLoraRank, spec.eps, latent);
  const kv = await lin('kv_b_proj', latent, N, kvLoraRank, H * (nopeDim + vDim)); // [N, H, nope + v]
  applyRope(q, N, H, dk, nopeDim, rope, pos, spec.interleaved); // rotary part of each head of q
  applyRope(ckv, N, 1, kvLoraRank + ropeDim, kvLoraRank, rope, pos, spec.interleaved); // the shared rotary key
  const k = new Float32Array(N * H * dk);
  const v = new Float32Array(N * H * vDim);
  for (let n = 0; n < N; n++) {
    const rot = ckv.subarray(n * (kvLoraRank + ropeDim) + kvLoraRank, (n + 1) * (kvLoraRank + ropeDim));
    for (let h = 0; h < H; h++) {
      const from = (n * H + h) * (nopeDim + vDim);
      k.set(kv.subarray(from, from + nopeDim), (n * H + h) * dk);
      k.set(rot, (n * H + h) * dk + nopeDim);
      v.set(kv.subarray(from + nopeDim, from + nopeDim + vDim), (n * H + h) * vDim);
    }
  }
  return { q, k, v };
}

export async function mla(
  be: Backend,
  lin: Linear,
  x: Float32Array,
  hidden: number,
  windows: number,
  T: number,
  spec: MlaSpec,
  w: Weights,
  rope: RopeTables,
): Promise<Float32Array> {
  const N = windows * T;
  const { heads: H, vDim } = spec;
  const dk = spec.nopeDim + spec.ropeDim;
  const { q, k, v } = await mlaProject(lin, x, hidden, N, spec, w, rope, (n) => n % T);
  const out = await causalAttention(be, q, k, v, windows, T, H, H, dk, vDim, spec.scale);
  return lin('o_proj', out, N, H * vDim, hidden);
}
