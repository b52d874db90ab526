/**
 * The reference backend: plain TypeScript loops, float32 in, float64 accumulation, float32 out. Tests check
 * every other backend against it; the onnx backend also uses its kernels for products too small to be worth
 * a native call. Also home of the shape checks every backend runs before touching data.
 */
import { InternalError } from '../errors';
import { firstAttended } from './backend';
import type { AttentionOptions, Backend, GluOptions, LogitStats } from './backend';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

function checkDims(what: string, dims: Record<string, number>): void {
  for (const [name, v] of Object.entries(dims)) {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new InternalError(`${what}: ${name} must be a non-negative integer, got ${v}`);
  }
}

function checkLength(what: string, name: string, a: Float32Array | Int32Array, expected: number, shape: string): void {
  if (a.length !== expected)
    throw new InternalError(`${what}: ${name} should hold ${shape} = ${expected} values, got ${a.length}`);
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of a `linear` call. */
export function checkLinear(
  x: Float32Array,
  w: Float32Array,
  tokens: number,
  inDim: number,
  outDim: number,
  bias?: Float32Array,
  into?: Float32Array,
): void {
  checkDims('linear', { tokens, inDim, outDim });
  checkLength('linear', 'x', x, tokens * inDim, `[${tokens}, ${inDim}]`);
  checkLength('linear', 'w', w, outDim * inDim, `[${outDim}, ${inDim}]`);
  if (bias) checkLength('linear', 'bias', bias, outDim, `[${outDim}]`);
  if (into) checkLength('linear', 'into', into, tokens * outDim, `[${tokens}, ${outDim}]`);
}

/** The result written into `into` when given (a backend method's reusable output buffer), else itself. */
export function intoOr(into: Float32Array | undefined, result: Float32Array): Float32Array {
  if (!into) return result;
  into.set(result);
  return into;
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of a `bmm` call. */
export function checkBmm(
  a: Float32Array,
  b: Float32Array,
  batch: number,
  m: number,
  k: number,
  n: number,
  transB: boolean,
): void {
  checkDims('bmm', { batch, m, k, n });
  checkLength('bmm', 'a', a, batch * m * k, `[${batch}, ${m}, ${k}]`);
  checkLength('bmm', 'b', b, batch * k * n, transB ? `[${batch}, ${n}, ${k}]` : `[${batch}, ${k}, ${n}]`);
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of an `attention` call. */
export function checkAttention(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  heads: number,
  T: number,
  dk: number,
  dv: number,
  scale: number,
  opts: AttentionOptions = {},
): void {
  checkDims('attention', { heads, T, dk, dv });
  checkLength('attention', 'q', q, heads * T * dk, `[${heads}, ${T}, ${dk}]`);
  checkLength('attention', 'k', k, heads * T * dk, `[${heads}, ${T}, ${dk}]`);
  checkLength('attention', 'v', v, heads * T * dv, `[${heads}, ${T}, ${dv}]`);
  if (!Number.isFinite(scale)) throw new InternalError(`attention: scale must be a finite number, got ${scale}`);
  if (opts.sinks) checkLength('attention', 'sinks', opts.sinks, heads, `[${heads}]`);
  if (opts.window !== undefined && !(Number.isSafeInteger(opts.window) && opts.window > 0))
    throw new InternalError(`attention: window must be a positive integer, got ${opts.window}`);
  if (opts.chunk !== undefined && !(Number.isSafeInteger(opts.chunk) && opts.chunk > 0))
    throw new InternalError(`attention: chunk must be a positive integer, got ${opts.chunk}`);
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of a `swiglu` call. */
export function checkSwiglu(
  x: Float32Array,
  gateUp: Float32Array,
  down: Float32Array,
  rows: number,
  hidden: number,
  width: number,
  opts: GluOptions = {},
  into?: Float32Array,
): void {
  checkDims('swiglu', { rows, hidden, width });
  if (into) checkLength('swiglu', 'into', into, rows * hidden, `[${rows}, ${hidden}]`);
  checkLength('swiglu', 'x', x, rows * hidden, `[${rows}, ${hidden}]`);
  checkLength('swiglu', 'gateUp', gateUp, 2 * width * hidden, `[2·${width}, ${hidden}]`);
  checkLength('swiglu', 'down', down, hidden * width, `[${hidden}, ${width}]`);
  if (opts.gateUpBias) checkLength('swiglu', 'gateUpBias', opts.gateUpBias, 2 * width, `[2·${width}]`);
  if (opts.downBias) checkLength('swiglu', 'downBias', opts.downBias, hidden, `[${hidden}]`);
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of a `logitStats` call. */
export function checkLogitStats(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  hidden: number,
  count: number,
  targets: Int32Array,
  start: number,
): void {
  checkDims('logitStats', { rows, hidden, count, start });
  checkLength('logitStats', 'x', x, rows * hidden, `[${rows}, ${hidden}]`);
  checkLength('logitStats', 'w', w, count * hidden, `[${count}, ${hidden}]`);
  checkLength('logitStats', 'targets', targets, rows, `[${rows}]`);
}

/**
 * y [tokens, outDim] = x [tokens, inDim] · wᵀ (+ bias). Each output is the dot product of a row of x and a row
 * of w, both contiguous, so the inner loop walks memory in order.
 */
export function linearRef(
  x: Float32Array,
  w: Float32Array,
  tokens: number,
  inDim: number,
  outDim: number,
  bias?: Float32Array,
): Float32Array {
  const y = new Float32Array(tokens * outDim);
  for (let t = 0; t < tokens; t++) {
    const xRow = t * inDim;
    for (let o = 0; o < outDim; o++) {
      const wRow = o * inDim;
      let acc = bias ? bias[o] : 0; // a JS number: float64
      for (let i = 0; i < inDim; i++) acc += x[xRow + i] * w[wRow + i];
      y[t * outDim + o] = acc;
    }
  }
  return y;
}

/**
 * c [batch, m, n] = a [batch, m, k] · b, b [batch, k, n] or with transB [batch, n, k]. Without transB the
 * loop is the i-p-j order (a row of c accumulates scaled rows of b) so that b is read row by row too.
 */
export function bmmRef(
  a: Float32Array,
  b: Float32Array,
  batch: number,
  m: number,
  k: number,
  n: number,
  transB: boolean,
): Float32Array {
  const c = new Float32Array(batch * m * n);
  const acc = new Float64Array(n); // one row of c, in float64
  for (let s = 0; s < batch; s++) {
    const aBase = s * m * k;
    const bBase = s * k * n;
    for (let i = 0; i < m; i++) {
      const aRow = aBase + i * k;
      const cRow = (s * m + i) * n;
      if (transB) {
        for (let j = 0; j < n; j++) {
          const bRow = bBase + j * k;
          let sum = 0;
          for (let p = 0; p < k; p++) sum += a[aRow + p] * b[bRow + p];
          c[cRow + j] = sum;
        }
      } else {
        acc.fill(0);
        for (let p = 0; p < k; p++) {
          const av = a[aRow + p];
          const bRow = bBase + p * n;
          for (let j = 0; j < n; j++) acc[j] += av * b[bRow + j];
        }
        for (let j = 0; j < n; j++) c[cRow + j] = acc[j];
      }
    }
  }
  return c;
}

/**
 * softmax(q·kᵀ·scale + causal mask)·v per head: q, k [H, T, dk], v [H, T, dv] → [H, T, dv]. One query row at a
 * time: its scores over positions 0..t (float64; the last opts.window of them), the max subtracted before exp, then
 * the weighted sum of v rows. A sink (opts.sinks[h]) takes part in the max and the denominator only, as in
 * transformers' gpt-oss eager_attention_forward.
 */
export function attentionRef(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  heads: number,
  T: number,
  dk: number,
  dv: number,
  scale: number,
  opts: AttentionOptions = {},
): Float32Array {
  const out = new Float32Array(heads * T * dv);
  const p = new Float64Array(T); // scores, then probabilities, of one query row
  const acc = new Float64Array(dv); // one output row
  for (let h = 0; h < heads; h++) {
    const base = h * T;
    const sink = opts.sinks ? opts.sinks[h] : -Infinity;
    for (let t = 0; t < T; t++) {
      const rows = { k, kBase: base * dk, kStep: dk, v, vBase: base * dv, vStep: dv };
      attendRow(
        q,
        (base + t) * dk,
        rows,
        dk,
        dv,
        firstAttended(t, opts),
        t,
        scale,
        sink,
        opts.sinks !== undefined,
        p,
        acc,
      );
      out.set(acc, (base + t) * dv); // float64 → float32
    }
  }
  return out;
}

export function checkAttentionTokens(
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
): void {
  checkDims('attentionTokens', { T, heads, kvHeads, dk, dv });
  if (heads % kvHeads !== 0)
    throw new InternalError(`attentionTokens: ${heads} query heads do not divide into ${kvHeads} key/value heads`);
  checkLength('attentionTokens', 'q', q, T * heads * dk, `[${T}, ${heads}, ${dk}]`);
  checkLength('attentionTokens', 'k', k, T * kvHeads * dk, `[${T}, ${kvHeads}, ${dk}]`);
  checkLength('attentionTokens', 'v', v, T * kvHeads * dv, `[${T}, ${kvHeads}, ${dv}]`);
  if (into) checkLength('attentionTokens', 'into', into, T * heads * dv, `[${T}, ${heads}, ${dv}]`);
  checkAttention(new Float32Array(0), new Float32Array(0), new Float32Array(0), 0, 0, 0, 0, scale, {
    ...opts,
    sinks: undefined,
  });
  if (opts.sinks) checkLength('attentionTokens', 'sinks', opts.sinks, heads, `[${heads}]`);
}

/**
 * Backend.attentionTokens by the definition: each query row attends over its key/value head's rows where they lie
 * (row s of head j at (s·KV + j)·d), as attentionRef does head-major.
 */
export function attentionTokensRef(
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
): Float32Array {
  const out = new Float32Array(T * heads * dv);
  const p = new Float64Array(T);
  const acc = new Float64Array(dv);
  const group = heads / kvHeads;
  for (let h = 0; h < heads; h++) {
    const j = math.floor(h / group);
    const rows = { k, kBase: j * dk, kStep: kvHeads * dk, v, vBase: j * dv, vStep: kvHeads * dv };
    const sink = opts.sinks ? opts.sinks[h] : -Infinity;
    for (let t = 0; t < T; t++) {
      const at = (t * heads + h) * dk;
      attendRow(q, at, rows, dk, dv, firstAttended(t, opts), t, scale, sink, opts.sinks !== undefined, p, acc);
      out.set(acc, (t * heads + h) * dv);
    }
  }
  return out;
}

/** [T, srcHeads, d] → [H, T, d], head h reading source head ⌊h / (H / srcHeads)⌋. */
export function headMajor(x: Float32Array, T: number, H: number, srcHeads: number, d: number): Float32Array {
  const out = new Float32Array(H * T * d);
  const group = H / srcHeads;
  for (let h = 0; h < H; h++) {
    const j = math.floor(h / group);
    for (let t = 0; t < T; t++)
      out.set(x.subarray((t * srcHeads + j) * d, (t * srcHeads + j + 1) * d), (h * T + t) * d);
  }
  return out;
}

/** [H, T, d] → [T, H, d], into `into` when given. */
export function tokenMajor(x: Float32Array, T: number, H: number, d: number, into?: Float32Array): Float32Array {
  const out = into ?? new Float32Array(T * H * d);
  for (let h = 0; h < H; h++)
    for (let t = 0; t < T; t++) out.set(x.subarray((h * T + t) * d, (h * T + t + 1) * d), (t * H + h) * d);
  return out;
}

/** attentionTokens through a backend's head-major attention (the operands transposed here). */
export async function attentionTokensByHeads(
  be: Pick<Backend, 'attention'>,
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
  const o = await be.attention(
    headMajor(q, T, heads, heads, dk),
    headMajor(k, T, heads, kvHeads, dk),
    headMajor(v, T, heads, kvHeads, dv),
    heads,
    T,
    dk,
    dv,
    scale,
    opts,
  );
  return tokenMajor(o, T, heads, dv, into);
}

/** Where the key and value rows of one head sit: position s's row starts at base + s·step. */
export interface KvRows {
  k: Float32Array;
  kBase: number;
  kStep: number;
  v: Float32Array;
  vBase: number;
  vStep: number;
}

/**
 * One query row's attention into acc [dv]: its scores (float64) over positions first..last, the max (and the sink,
 * when `hasSink`) subtracted before exp, then the weighted sum of the value rows. `p` holds at least last + 1 scores.
 * Shared by attentionRef and the decoder's cached attention (src/model/forward/decode.ts).
 */
export function attendRow(
  q: Float32Array,
  qRow: number,
  r: KvRows,
  dk: number,
  dv: number,
  first: number,
  last: number,
  scale: number,
  sink: number,
  hasSink: boolean,
  p: Float64Array,
  acc: Float64Array,
): void {
  let max = sink;
  for (let s = first; s <= last; s++) {
    const kRow = r.kBase + s * r.kStep;
    let dot = 0;
    for (let i = 0; i < dk; i++) dot += q[qRow + i] * r.k[kRow + i];
    p[s] = dot * scale;
    if (p[s] > max) max = p[s];
  }
  let sum = hasSink ? math.exp(sink - max) : 0;
  for (let s = first; s <= last; s++) {
    p[s] = math.exp(p[s] - max);
    sum += p[s];
  }
  acc.fill(0);
  for (let s = first; s <= last; s++) {
    const weight = p[s] / sum;
    const vRow = r.vBase + s * r.vStep;
    for (let j = 0; j < dv; j++) acc[j] += weight * r.v[vRow + j];
  }
}

/**
 * act [rows, width] = silu(x·gateᵀ) ⊙ (x·upᵀ), out [rows, hidden] = act·downᵀ. The two products are linearRef's
 * (float32 results), and act is rounded to float32 before the second one: the same numbers the forward pass got
 * from `linear` + its own swiglu loop + `linear`, so switching it to the fused call changes nothing on this backend.
 * opts adds the biases to the products and replaces the activation by gpt-oss's clamped one (GluOptions).
 */
export function swigluRef(
  x: Float32Array,
  gateUp: Float32Array,
  down: Float32Array,
  rows: number,
  hidden: number,
  width: number,
  opts: GluOptions = {},
): { out: Float32Array; act: Float32Array } {
  const gu = linearRef(x, gateUp, rows, hidden, 2 * width, opts.gateUpBias); // [rows, 2·width]: gate | up
  const act = new Float32Array(rows * width);
  const c = opts.clamp;
  for (let r = 0; r < rows; r++) {
    const g = r * 2 * width;
    for (let i = 0; i < width; i++) {
      const gate = gu[g + i];
      const up = gu[g + width + i];
      if (!c)
        act[r * width + i] = (gate / (1 + math.exp(-gate))) * up; // silu(gate) · up
      else {
        const gc = math.min(gate, c.limit);
        const uc = math.min(math.max(up, -c.limit), c.limit);
        act[r * width + i] = (uc + 1) * (gc / (1 + math.exp(-c.alpha * gc)));
      }
    }
  }
  return { out: linearRef(act, down, rows, width, hidden, opts.downBias), act };
}

/**
 * LogitStats of logits = x·wᵀ, one row at a time (never more than one row of logits). A logit is linearRef's:
 * the float64 dot product rounded to float32, so max, argmax and target are values `linear` would have returned.
 * Ties go to the lowest index (a later logit must be strictly larger); NaN logits are skipped by max and argmax.
 * An empty block (count 0) gives max −∞, sumExp 0, argmax −1 and target NaN.
 */
export function logitStatsRef(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  hidden: number,
  count: number,
  targets: Int32Array,
  start: number,
): LogitStats {
  const stats: LogitStats = {
    max: new Float32Array(rows),
    sumExp: new Float32Array(rows),
    argmax: new Int32Array(rows),
    target: new Float32Array(rows),
  };
  const logits = new Float32Array(count); // one row
  for (let r = 0; r < rows; r++) {
    const xRow = r * hidden;
    let max = -Infinity;
    let arg = -1;
    for (let c = 0; c < count; c++) {
      const wRow = c * hidden;
      let dot = 0;
      for (let i = 0; i < hidden; i++) dot += x[xRow + i] * w[wRow + i];
      logits[c] = dot;
      if (logits[c] > max) {
        max = logits[c];
        arg = c;
      }
    }
    let sum = 0;
    for (let c = 0; c < count; c++) sum += math.exp(logits[c] - max);
    const t = targets[r] - start;
    stats.max[r] = max;
    stats.sumExp[r] = sum;
    stats.argmax[r] = arg;
    stats.target[r] = t >= 0 && t < count ? logits[t] : NaN;
  }
  return stats;
}

/**
 * The additive causal mask [T, T] that the onnx and tfjs backends add to the scaled scores before their softmax:
 * 0 where a query may look (firstAttended(t) ≤ s ≤ t: the sliding window and chunk when given), −∞ elsewhere.
 * exp(−∞ − max) is exactly 0, and the diagonal keeps every row's max finite.
 */
export function causalMask(T: number, window?: number, chunk?: number): Float32Array {
  const mask = new Float32Array(T * T);
  for (let t = 0; t < T; t++) {
    mask.fill(-Infinity, t * T + t + 1, (t + 1) * T);
    mask.fill(-Infinity, t * T, t * T + firstAttended(t, { window, chunk }));
  }
  return mask;
}

/**
 * Causal masks kept for this many (window length, sliding window) pairs. The forward pass runs windows of one
 * length (a shorter last window at most), with at most two attention kinds (full and sliding), so a cache holds a
 * few; the bound only keeps an unusual caller from growing it.
 */
const MASK_CACHE_SIZE = 8;

/** causalMask(T, window), built once per window length and sliding window. */
export class CausalMasks {
  private readonly masks = new Map<string, Float32Array>();

  get(T: number, window?: number, chunk?: number): Float32Array {
    const key = `${T}:${window ?? ''}:${chunk ?? ''}`;
    let m = this.masks.get(key);
    if (!m) {
      if (this.masks.size >= MASK_CACHE_SIZE) this.masks.clear();
      m = causalMask(T, window, chunk);
      this.masks.set(key, m);
    }
    return m;
  }
}

export class RefBackend implements Backend {
  readonly name = 'ref';

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
    return intoOr(into, attentionTokensRef(q, k, v, T, heads, kvHeads, dk, dv, scale, opts));
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
    return intoOr(into, linearRef(x, w, tokens, inDim, outDim, bias));
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
    return bmmRef(a, b, batch, m, k, n, transB);
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
    opts?: AttentionOptions,
  ): Promise<Float32Array> {
    checkAttention(q, k, v, heads, T, dk, dv, scale, opts);
    return attentionRef(q, k, v, heads, T, dk, dv, scale, opts);
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
    const { out, act } = swigluRef(x, gateUp, down, rows, hidden, width, opts);
    return wantAct ? { out: intoOr(into, out), act } : { out: intoOr(into, out) };
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
    return logitStatsRef(x, w, rows, hidden, count, targets, start);
  }

  async dispose(): Promise<void> {}
}
