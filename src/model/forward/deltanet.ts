/**
 * Qwen3-Next's linear attention (transformers Qwen3NextGatedDeltaNet): the per-token recurrence in float64, or
 * chunk by chunk on the backend as transformers' torch_chunk_gated_delta_rule computes the same sums. Per window:
 *
 * - in_proj_qkvz [N, Hk·(2dk + 2r·dv)], r = Hv / Hk: per key head g, [q (dk) | k (dk) | v (r·dv) | z (r·dv)];
 *   in_proj_ba [N, Hk·2r]: per key head, [b (r) | a (r)]; value head g·r + j belongs to key head g.
 * - Qwen3.5-MoE stores them apart (`split`): in_proj_qkv [N, C] already in the conv's channel order, in_proj_z
 *   [N, Hv·dv], in_proj_b and in_proj_a [N, Hv] each in value-head order.
 * - conv1d: causal depthwise over the channels [q of every head | k | v] (weight [C, 1, K], zero history), then
 *   silu.
 * - q and k l2-normed per head (x · rsqrt(Σx² + 1e-6)), q also × dk^−½; beta = σ(b); g = −exp(A_log) ·
 *   softplus(a + dt_bias).
 * - state S [dk, dv] per value head, from 0: S ← S·exp(g_t); S ← S + k_t ⊗ (v_t − Sᵀk_t)·beta_t; o_t = Sᵀq_t.
 * - gated RMSNorm per value head: o · rsqrt(mean(o²) + eps) · norm.weight · silu(z); then out_proj.
 *
 * Cost: O(N · Hv · dk · dv) per layer. Without a backend (the forward pass on the ref backend) the plain
 * recurrence below, scalar JS in float64; with one, deltanet-chunked.ts puts those products on the backend's batched
 * matmul (measured at dk = dv = 128, T = 512 on onnx: 1.7× the tokens per CPU second of the recurrence). The
 * projections always use the backend's linear.
 */
import type { Backend } from '../../backend/backend';
import type { Linear, Weights } from './attention';
import { chunkedDeltaRule } from './deltanet-chunked';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

export interface DeltaNetSpec {
  kind: 'gated_deltanet';
  keyHeads: number;
  valueHeads: number;
  keyDim: number;
  valueDim: number;
  convKernel: number;
  eps: number;
  /** Separate in_proj_qkv / in_proj_z / in_proj_b / in_proj_a (Qwen3.5-MoE) instead of in_proj_qkvz / in_proj_ba. */
  split?: boolean;
}

function need(w: Weights, name: string): Float32Array {
  const t = w(name);
  if (!t) throw new Error(`linear attention weight ${name} not loaded`);
  return t;
}

function softplus(x: number): number {
  return x > 20 ? x : math.log1p(math.exp(x)); // torch's threshold 20
}

export function deltaSilu(x: number): number {
  return x / (1 + math.exp(-x));
}

/** The conv input [N, C] (C = 2·Hk·dk + Hv·dv), z [N, Hv·dv], b and a [N, Hv] from the two projections. */
function unpack(spec: DeltaNetSpec, qkvz: Float32Array, ba: Float32Array, N: number) {
  const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = spec;
  const r = Hv / Hk;
  const C = 2 * Hk * dk + Hv * dv;
  const group = 2 * dk + 2 * r * dv;
  const mixed = new Float32Array(N * C);
  const z = new Float32Array(N * Hv * dv);
  const b = new Float32Array(N * Hv);
  const a = new Float32Array(N * Hv);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < Hk; g++) {
      const s = n * Hk * group + g * group;
      mixed.set(qkvz.subarray(s, s + dk), n * C + g * dk);
      mixed.set(qkvz.subarray(s + dk, s + 2 * dk), n * C + Hk * dk + g * dk);
      mixed.set(qkvz.subarray(s + 2 * dk, s + 2 * dk + r * dv), n * C + 2 * Hk * dk + g * r * dv);
      z.set(qkvz.subarray(s + 2 * dk + r * dv, s + group), (n * Hv + g * r) * dv);
      for (let j = 0; j < r; j++) {
        b[n * Hv + g * r + j] = ba[n * Hk * 2 * r + g * 2 * r + j];
        a[n * Hv + g * r + j] = ba[n * Hk * 2 * r + g * 2 * r + r + j];
      }
    }
  }
  return { mixed, z, b, a, C };
}

/** The same from the four separate projections (Qwen3.5-MoE): nothing to reorder. */
async function project(lin: Linear, x: Float32Array, hidden: number, N: number, spec: DeltaNetSpec) {
  const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = spec;
  const C = 2 * Hk * dk + Hv * dv;
  const mixed = await lin('in_proj_qkv', x, N, hidden, C);
  const z = await lin('in_proj_z', x, N, hidden, Hv * dv);
  const b = await lin('in_proj_b', x, N, hidden, Hv);
  const a = await lin('in_proj_a', x, N, hidden, Hv);
  return { mixed, z, b, a, C };
}

/** Causal depthwise conv1d over each window's T tokens, then silu. x [N, C], weight [C, K]. */
function causalConv(x: Float32Array, weight: Float32Array, windows: number, T: number, C: number, K: number) {
  const out = new Float32Array(x.length);
  for (let w = 0; w < windows; w++) {
    for (let t = 0; t < T; t++) {
      const o = (w * T + t) * C;
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let i = 0; i < K; i++) {
          const src = t - (K - 1) + i;
          if (src >= 0) s += weight[c * K + i] * x[(w * T + src) * C + c];
        }
        out[o + c] = deltaSilu(math.fround(s));
      }
    }
  }
  return out;
}

/** Copies `dim` values from `src` at `from` into a float64 vector, l2-normalised (× extra). */
export function l2(src: Float32Array, from: number, dim: number, extra: number, into: Float64Array): void {
  let ss = 0;
  for (let i = 0; i < dim; i++) ss += src[from + i] * src[from + i];
  const inv = extra / math.sqrt(ss + 1e-6);
  for (let i = 0; i < dim; i++) into[i] = src[from + i] * inv;
}

/**
 * One token of one value head, in two row-major passes over S [dk, dv] (each sum over i in the same order as the
 * textbook loops, so the results are the same to the bit): S ← S·e and m = Sᵀk; delta = (v − m)·beta;
 * S ← S + k ⊗ delta and o = Sᵀq. `delta` returns o.
 */
export function step(
  S: Float64Array,
  q: Float64Array,
  k: Float64Array,
  conv: Float32Array,
  vo: number,
  e: number,
  bt: number,
  m: Float64Array,
  delta: Float64Array,
  dk: number,
  dv: number,
): void {
  m.fill(0);
  for (let i = 0, row = 0; i < dk; i++, row += dv) {
    const ki = k[i];
    for (let j = 0; j < dv; j++) {
      const s = S[row + j] * e;
      S[row + j] = s;
      m[j] += s * ki;
    }
  }
  for (let j = 0; j < dv; j++) delta[j] = (conv[vo + j] - m[j]) * bt;
  m.fill(0);
  for (let i = 0, row = 0; i < dk; i++, row += dv) {
    const ki = k[i];
    const qi = q[i];
    for (let j = 0; j < dv; j++) {
      const s = S[row + j] + ki * delta[j];
      S[row + j] = s;
      m[j] += s * qi;
    }
  }
  delta.set(m);
}

/** The gated delta rule over each window, each from a zero state: the core output [N, Hv·dv] before the gated norm. */
function recurrence(
  spec: DeltaNetSpec,
  conv: Float32Array,
  beta: Float64Array,
  decay: Float64Array,
  windows: number,
  T: number,
  C: number,
) {
  const out = new Float32Array(windows * T * spec.valueHeads * spec.valueDim);
  const S = new Float64Array(spec.keyDim * spec.valueDim);
  for (let w = 0; w < windows; w++) recurrenceFrom(spec, conv, beta, decay, w * T, T, C, () => S.fill(0), out);
  return out;
}

/**
 * The gated delta rule over the `count` tokens from row `first` of conv [rows, C], each value head h from the state
 * `state(h)` [dk, dv] (updated in place), its output written to the same rows of out [rows, Hv·dv]. The window
 * forward starts every window from a zero state; the decoder carries each head's state from step to step.
 */
export function recurrenceFrom(
  spec: DeltaNetSpec,
  conv: Float32Array,
  beta: Float64Array,
  decay: Float64Array,
  first: number,
  count: number,
  C: number,
  state: (h: number) => Float64Array,
  out: Float32Array,
): void {
  const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = spec;
  const r = Hv / Hk;
  const q = new Float64Array(dk);
  const k = new Float64Array(dk);
  const delta = new Float64Array(dv);
  const m = new Float64Array(dv);
  for (let h = 0; h < Hv; h++) {
    const g = math.floor(h / r);
    const S = state(h);
    for (let n = first; n < first + count; n++) {
      l2(conv, n * C + g * dk, dk, 1 / math.sqrt(dk), q);
      l2(conv, n * C + Hk * dk + g * dk, dk, 1, k);
      const vo = n * C + 2 * Hk * dk + h * dv;
      step(S, q, k, conv, vo, math.exp(decay[n * Hv + h]), beta[n * Hv + h], m, delta, dk, dv);
      out.set(delta, (n * Hv + h) * dv);
    }
  }
}

/** The conv input [N, C], z, b and a of x [N, hidden] (either projection layout). */
export async function deltaInputs(lin: Linear, x: Float32Array, hidden: number, N: number, spec: DeltaNetSpec) {
  const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = spec;
  return spec.split
    ? project(lin, x, hidden, N, spec)
    : unpack(
        spec,
        await lin('in_proj_qkvz', x, N, hidden, 2 * Hk * dk + 2 * Hv * dv),
        await lin('in_proj_ba', x, N, hidden, 2 * Hv),
        N,
      );
}

/** beta = σ(b) and the log-decay g = −exp(A_log) · softplus(a + dt_bias), [N, Hv] each. */
export function deltaGates(spec: DeltaNetSpec, w: Weights, b: Float32Array, a: Float32Array, N: number) {
  const Hv = spec.valueHeads;
  const aLog = need(w, 'A_log');
  const dtBias = need(w, 'dt_bias');
  const beta = new Float64Array(N * Hv);
  const decay = new Float64Array(N * Hv);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < Hv; h++) {
      const i = n * Hv + h;
      beta[i] = 1 / (1 + math.exp(-b[i]));
      decay[i] = -math.exp(aLog[h]) * softplus(math.fround(a[i] + dtBias[h]));
    }
  }
  return { beta, decay };
}

/** The gated RMSNorm of the core output [N, Hv·dv] (in place) and out_proj. */
export function deltaOutput(
  lin: Linear,
  core: Float32Array,
  z: Float32Array,
  N: number,
  hidden: number,
  spec: DeltaNetSpec,
  w: Weights,
): Promise<Float32Array> {
  const { valueHeads: Hv, valueDim: dv } = spec;
  const norm = need(w, 'norm.weight');
  for (let row = 0; row < N * Hv; row++) {
    const o = row * dv;
    let ss = 0;
    for (let j = 0; j < dv; j++) ss += core[o + j] * core[o + j];
    const inv = 1 / math.sqrt(ss / dv + spec.eps);
    for (let j = 0; j < dv; j++) core[o + j] = math.fround(core[o + j] * inv) * norm[j] * deltaSilu(z[o + j]);
  }
  return lin('out_proj', core, N, Hv * dv, hidden);
}

export async function gatedDeltaNet(
  lin: Linear,
  x: Float32Array,
  hidden: number,
  windows: number,
  T: number,
  spec: DeltaNetSpec,
  w: Weights,
  be?: Backend,
): Promise<Float32Array> {
  const N = windows * T;
  const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = spec;
  const { mixed, z, b, a, C } = await deltaInputs(lin, x, hidden, N, spec);
  const conv = causalConv(mixed, need(w, 'conv1d.weight'), windows, T, C, spec.convKernel);
  const { beta, decay } = deltaGates(spec, w, b, a, N);
  const core = be
    ? await chunkedDeltaRule(be, { conv, beta, decay, windows, T, C, Hk, Hv, dk, dv })
    : recurrence(spec, conv, beta, decay, windows, T, C);
  return deltaOutput(lin, core, z, N, hidden, spec, w);
}
