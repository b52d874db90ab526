/**
 * The matmul backend: the few dense products the forward pass spends its time in. Shapes are row-major
 * Float32Arrays; weights follow PyTorch's nn.Linear layout [out, in].
 * Implementations: onnxruntime-node (default), a plain TypeScript reference (tests), tfjs (opt-in).
 */

export interface Backend extends FusedOps {
  readonly name: string;
  /**
   * y = x · wᵀ (+ bias): x [tokens, inDim], w [outDim, inDim], bias [outDim] → y [tokens, outDim]; written into
   * `into` (tokens × outDim values) and returned when given, so a caller can reuse one buffer.
   */
  linear(
    x: Float32Array,
    w: Float32Array,
    tokens: number,
    inDim: number,
    outDim: number,
    bias?: Float32Array,
    into?: Float32Array,
  ): Promise<Float32Array>;
  /**
   * Batched product c[b] = a[b] · (transB ? b[b]ᵀ : b[b]):
   * a [batch, m, k]; b [batch, k, n] or, with transB, [batch, n, k] → c [batch, m, n].
   */
  bmm(
    a: Float32Array,
    b: Float32Array,
    batch: number,
    m: number,
    k: number,
    n: number,
    transB: boolean,
  ): Promise<Float32Array>;
  /** Frees native resources. */
  dispose(): Promise<void>;
}

export type BackendName = 'onnx' | 'ref' | 'tfjs';

/** Per-row statistics of one block of lm_head logits (see Backend.logitStats). */
export interface LogitStats {
  /** max over the block's logits, per row */
  max: Float32Array;
  /** Σ exp(logit − max) over the block, per row */
  sumExp: Float32Array;
  /** index (within the block) of the largest logit, per row */
  argmax: Int32Array;
  /** the logit of row r's target id when it lies in the block, else NaN */
  target: Float32Array;
}

/** What some attentions add to the causal softmax (gpt-oss). */
export interface AttentionOptions {
  /** Sliding window: position t attends to positions max(0, t − window + 1)..t (transformers' sliding_window). */
  window?: number;
  /**
   * Chunked attention (Llama 4's rope layers, transformers' attention_chunk_size): position t attends only to positions
   * of its own chunk, ⌊t / chunk⌋ · chunk..t.
   */
  chunk?: number;
  /**
   * Per-head sink logits [heads]: one more logit in each row's softmax, with no value (gpt-oss `self_attn.sinks`):
   * p_s = exp(a_s − m) / (Σ_s' exp(a_s' − m) + exp(sink − m)), m the max over the row's scores and the sink.
   */
  sinks?: Float32Array;
}

/** The first position that position t attends to under opts' sliding window and chunking (0 without either). */
export function firstAttended(t: number, opts: AttentionOptions): number {
  let first = opts.window ? Math.max(0, t - opts.window + 1) : 0;
  if (opts.chunk) first = Math.max(first, Math.floor(t / opts.chunk) * opts.chunk);
  return first;
}

/** What some gated MLPs add to silu(gate) · up (gpt-oss's experts). */
export interface GluOptions {
  /** [2·width]: gate biases, then up biases (the order of gateUp's rows). */
  gateUpBias?: Float32Array;
  /** [hidden] */
  downBias?: Float32Array;
  /** gate = min(gate, limit), up = clamp(up, −limit, limit), act = (up + 1) · gate · σ(alpha · gate). */
  clamp?: { alpha: number; limit: number };
}

/**
 * Fused operations: whole pieces of the forward pass in one call, so that no per-element work is left to
 * JavaScript. Every backend implements them; RefBackend defines their exact meaning.
 */
export interface FusedOps {
  /**
   * Causal softmax attention of one window: softmax(q·kᵀ·scale + causal mask)·v per head, with q [H, T, dk],
   * k [H, T, dk], v [H, T, dv] → [H, T, dv]. Position t attends to positions 0..t (with opts.window, the last
   * `window` of them), and opts.sinks adds a per-head logit to each softmax denominator.
   */
  attention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    heads: number,
    T: number,
    dk: number,
    dv: number,
    scale: number,
    opts?: AttentionOptions,
  ): Promise<Float32Array>;
  /**
   * attention() on token-major operands of one window, as the projections give them: q [T, H, dk], k [T, KV, dk],
   * v [T, KV, dv] → [T, H, dv], query head h attending with key/value head ⌊h / (H / KV)⌋ (grouped-query
   * attention; KV = H for one key/value head per query head). The result goes into `into` when given.
   */
  attentionTokens(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    T: number,
    heads: number,
    kvHeads: number,
    dk: number,
    dv: number,
    scale: number,
    opts?: AttentionOptions,
    into?: Float32Array,
  ): Promise<Float32Array>;
  /**
   * A SwiGLU MLP: act = silu(x·gateᵀ) ⊙ (x·upᵀ), out = act·downᵀ, with x [rows, hidden], gateUp [2·width, hidden]
   * (gate rows first, then up rows), down [hidden, width] → out [rows, hidden]; act [rows, width] also when asked.
   * opts adds biases to both products and gpt-oss's clamped activation (GluOptions). `into` (rows × hidden values)
   * receives out when given.
   */
  swiglu(
    x: Float32Array,
    gateUp: Float32Array,
    down: Float32Array,
    rows: number,
    hidden: number,
    width: number,
    wantAct: boolean,
    opts?: GluOptions,
    into?: Float32Array,
  ): Promise<{ out: Float32Array; act?: Float32Array }>;
  /**
   * Statistics of logits = x·wᵀ for x [rows, hidden], w [count, hidden] (the lm_head rows of vocab ids
   * start..start+count−1), without returning the logits: see LogitStats. targets [rows] holds absolute vocab ids
   * (−1: none).
   */
  logitStats(
    x: Float32Array,
    w: Float32Array,
    rows: number,
    hidden: number,
    count: number,
    targets: Int32Array,
    start: number,
  ): Promise<LogitStats>;
}
