/**
 * Rotary position embeddings: inverse frequencies for the rope types these models use (default, linear,
 * dynamic within the trained length, yarn, llama3), following transformers' modeling_rope_utils, and the two
 * layouts: rotate-half (Llama/Qwen/Mixtral/OLMoE) and interleaved pairs (DeepSeek).
 */
import type { ConfigReader } from '../config';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

export interface RopeTables {
  /** Rotary dimension (even). */
  dim: number;
  /** cos and sin of position·inv_freq, × attention factor: [positions, dim/2]. */
  cos: Float32Array;
  sin: Float32Array;
  positions: number;
}

/** rope_parameters (transformers 5) merged over the older rope_theta + rope_scaling keys. */
export function ropeParameters(cfg: ConfigReader): Record<string, unknown> {
  const c = cfg.config;
  const scaling = (c.rope_scaling ?? {}) as Record<string, unknown>;
  const params = (c.rope_parameters ?? {}) as Record<string, unknown>;
  const merged: Record<string, unknown> = { ...scaling, ...params };
  merged.rope_theta ??= c.rope_theta ?? 10000;
  merged.rope_type ??= merged.type ?? 'default';
  return merged;
}

function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * math.log(scale) + 1;
}

/**
 * The rotary base of `dim` rotated dimensions: rope_theta, raised once for HunYuan's NTK-alpha rotary (rope_type
 * dynamic with alpha) to rope_theta · alpha^(dim / (dim − 2)) — also what GGUF stores as its freq_base.
 */
export function ropeBase(p: Record<string, unknown>, dim: number): number {
  const base = Number(p.rope_theta ?? 10000);
  return p.rope_type === 'dynamic' && typeof p.alpha === 'number' ? base * math.pow(p.alpha, dim / (dim - 2)) : base;
}

/** base^(−2i/dim), computed in float32 as transformers does (so long contexts agree). */
function plainInverseFrequencies(base: number, dim: number): Float64Array {
  const invFreq = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++)
    invFreq[i] = math.fround(1 / math.fround(math.pow(base, math.fround((2 * i) / dim))));
  return invFreq;
}

/**
 * The per-frequency divisors of a llama3 or freq_factors rotary (llama.cpp's rope_freqs tensor); undefined for an
 * unscaled one. Other types: Error.
 */
export function ropeFreqFactors(p: Record<string, unknown>, dim: number): Float64Array | undefined {
  const type = String(p.rope_type ?? 'default');
  if (type === 'default') return undefined;
  const invFreq = plainInverseFrequencies(ropeBase(p, dim), dim);
  if (type === 'llama3') return llama3Factors(invFreq, p);
  if (type === 'freq_factors') return Float64Array.from(givenFactors(p, dim / 2));
  throw new Error(`rope type "${type}" has no frequency factors`);
}

/** Inverse frequencies (float64) and the factor applied to cos/sin. */
export function inverseFrequencies(
  p: Record<string, unknown>,
  dim: number,
  maxPositions: number,
): { invFreq: Float64Array; attentionFactor: number } {
  const base = ropeBase(p, dim);
  const invFreq = plainInverseFrequencies(base, dim);
  const type = String(p.rope_type);
  const factor = Number(p.factor ?? 1);
  switch (type) {
    case 'default':
    case 'dynamic': // dynamic NTK changes nothing until the sequence exceeds the trained length
      return { invFreq, attentionFactor: 1 };
    case 'linear':
      return { invFreq: invFreq.map((f) => f / factor), attentionFactor: 1 };
    case 'llama3': {
      const factors = llama3Factors(invFreq, p);
      return { invFreq: invFreq.map((f, i) => f / factors[i]), attentionFactor: 1 };
    }
    case 'freq_factors': {
      const factors = givenFactors(p, invFreq.length);
      return { invFreq: invFreq.map((f, i) => f / factors[i]), attentionFactor: 1 };
    }
    case 'yarn':
      return yarn(invFreq, p, dim, base, maxPositions);
    case 'longrope':
      return longrope(p, dim, base);
    default:
      throw new Error(`rope type "${type}" is not supported`);
  }
}

/**
 * PhiMoE's longrope as PhimoeRotaryEmbedding runs it: the inverse frequencies always from the short factors,
 * 1 / (short_factor_i · base^(2i/d)) in float32, and cos/sin × short_mscale. (Past original_max_position_embeddings
 * transformers switches cos/sin to long_mscale for every position: the architecture refuses such windows.)
 */
function longrope(
  p: Record<string, unknown>,
  dim: number,
  base: number,
): { invFreq: Float64Array; attentionFactor: number } {
  const short = p.short_factor;
  if (!Array.isArray(short) || short.length !== dim / 2 || short.some((v) => typeof v !== 'number'))
    throw new Error(`longrope short_factor must be ${dim / 2} numbers`);
  const f = math.fround;
  const invFreq = Float64Array.from({ length: dim / 2 }, (_, i) =>
    f(1 / f(f(short[i] as number) * f(math.pow(base, f((2 * i) / dim))))),
  );
  return { invFreq, attentionFactor: Number(p.short_mscale ?? 1) };
}

/**
 * Llama 3's per-frequency divisors (1 for short wavelengths, `factor` for long ones, a smooth blend between): the
 * inverse frequencies are invFreq_i / factor_i, as transformers' _compute_llama3_parameters and llama.cpp's
 * rope_freqs tensor (convert_hf_to_gguf.py) define them.
 */
export function llama3Factors(invFreq: Float64Array, p: Record<string, unknown>): Float64Array {
  const factor = Number(p.factor);
  const low = Number(p.low_freq_factor);
  const high = Number(p.high_freq_factor);
  const old = Number(p.original_max_position_embeddings);
  return invFreq.map((f) => {
    const wavelen = (2 * math.PI) / f;
    if (wavelen < old / high) return 1;
    if (wavelen > old / low) return factor;
    const smooth = (old / wavelen - low) / (high - low);
    return 1 / ((1 - smooth) / factor + smooth);
  });
}

/**
 * Per-frequency divisors given explicitly (rope_type 'freq_factors': what moe reads from a GGUF file's rope_freqs
 * tensor, llama.cpp's form of Llama 3's scaling; not a transformers rope type).
 */
function givenFactors(p: Record<string, unknown>, n: number): number[] {
  const factors = p.factors;
  if (!Array.isArray(factors) || factors.length !== n || factors.some((v) => typeof v !== 'number'))
    throw new Error(`rope freq_factors must be ${n} numbers`);
  return factors as number[];
}

function yarn(
  invFreq: Float64Array,
  p: Record<string, unknown>,
  dim: number,
  base: number,
  maxPositions: number,
): { invFreq: Float64Array; attentionFactor: number } {
  const original = Number(p.original_max_position_embeddings ?? maxPositions);
  const factor = p.factor !== undefined && p.factor !== null ? Number(p.factor) : maxPositions / original;
  let attentionFactor = p.attention_factor as number | undefined;
  if (attentionFactor === undefined || attentionFactor === null) {
    const m = p.mscale as number | undefined;
    const mAll = p.mscale_all_dim as number | undefined;
    attentionFactor = m && mAll ? yarnMscale(factor, m) / yarnMscale(factor, mAll) : yarnMscale(factor);
  }
  const betaFast = Number(p.beta_fast || 32);
  const betaSlow = Number(p.beta_slow || 1);
  const truncate = p.truncate === undefined ? true : !!p.truncate;
  const corrDim = (rot: number) => (dim * math.log(original / (rot * 2 * math.PI))) / (2 * math.log(base));
  let low = corrDim(betaFast);
  let high = corrDim(betaSlow);
  if (truncate) {
    low = math.floor(low);
    high = math.ceil(high);
  }
  low = math.max(low, 0);
  high = math.min(high, dim - 1);
  if (low === high) high += 0.001;
  const out = new Float64Array(invFreq.length);
  for (let i = 0; i < invFreq.length; i++) {
    const ramp = math.min(1, math.max(0, (i - low) / (high - low)));
    const extrapolation = 1 - ramp;
    out[i] = (invFreq[i] / factor) * (1 - extrapolation) + invFreq[i] * extrapolation;
  }
  return { invFreq: out, attentionFactor };
}

export function ropeTables(
  p: Record<string, unknown>,
  dim: number,
  positions: number,
  maxPositions: number,
): RopeTables {
  const { invFreq, attentionFactor } = inverseFrequencies(p, dim, maxPositions);
  const half = dim / 2;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let t = 0; t < positions; t++) {
    for (let i = 0; i < half; i++) {
      const a = math.fround(t * math.fround(invFreq[i])); // float32 like transformers
      cos[t * half + i] = math.cos(a) * attentionFactor;
      sin[t * half + i] = math.sin(a) * attentionFactor;
    }
  }
  return { dim, cos, sin, positions };
}

/**
 * Rotates, in place, `heads` vectors of `stride` floats per token, each starting at `offset` within its head,
 * for tokens at positions `pos[token]`. x: [tokens, heads, stride].
 */
export function applyRope(
  x: Float32Array,
  tokens: number,
  heads: number,
  stride: number,
  offset: number,
  tables: RopeTables,
  pos: (token: number) => number,
  interleaved: boolean,
): void {
  const half = tables.dim / 2;
  for (let n = 0; n < tokens; n++) {
    const p = pos(n) * half;
    for (let h = 0; h < heads; h++) {
      const base = (n * heads + h) * stride + offset;
      for (let i = 0; i < half; i++) {
        const c = tables.cos[p + i];
        const s = tables.sin[p + i];
        const a = interleaved ? base + 2 * i : base + i;
        const b = interleaved ? base + 2 * i + 1 : base + i + half;
        const x1 = x[a];
        const x2 = x[b];
        x[a] = x1 * c - x2 * s;
        x[b] = x2 * c + x1 * s;
      }
    }
  }
}
