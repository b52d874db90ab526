/**
 * AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", MLSys):
 * for each scale group (src/quant/awq-groups.ts: the weights that read one input, and the tensor producing it) one
 * scale per input channel
 *   s = m^α / sqrt(max(m^α) · min(m^α)),   m_i = sqrt(Σ x_i² / rows), floored at 1e-4
 * (m is the RMS of the calibrated input, from the stats' imatrix; AWQ's reference code uses mean |x|), with α on the
 * grid {0, 1/20, …, 19/20} chosen to minimise the consumers' output error on the calibration inputs
 *   L(α) = Σ_consumers ‖(Q(W·diag(s))·diag(s)⁻¹ − W)·X‖² = Σ tr(ΔW·H·ΔWᵀ),   H = XᵀX
 * (Σ ΔW²·diag(H), the imatrix, when the stats hold no Hessians). Q is round-to-nearest on the grid the weight is
 * written with (its bits, the group size, symmetric or not); under GPTQ the search still rounds to nearest, as
 * AWQ-then-GPTQ pipelines do. Weights left unquantized (the router with --keep-router-fp, the shared-expert gate)
 * add nothing to L but are rescaled. α = 0 is s = 1, plain quantization, so the chosen L is never above it.
 * The fold: consumers' columns × s and the producer's outputs ÷ s. A norm w becomes w' = (off + w)/s − off rounded
 * to its dtype, and the consumers take the scale the rounded norm applies, s_i = (off + w_i)/(off + w'_i), so the
 * fold is exact in any dtype; a producer's rows (and bias) are divided by s. The quantizer then sees W·diag(s) and
 * the Hessian of the scaled input, diag(s)⁻¹·H·diag(s)⁻¹ (imatrix / s²). Groups are searched independently on the
 * original weights (v_proj and up_proj are consumers of one group and producers of another), as AutoAWQ does.
 */
import type { Backend } from '../backend/backend';
import type { TensorReader } from '../io/checkpoint';
import { fromFloat32, toFloat32 } from '../io/dtype';
import type { Architecture } from '../model/arch';
import { scaleGroups, ScaleGroup, Skipped } from './awq-groups';
import { candidateErrors } from './awq-loss';
import { Inputs, Weighting } from './weighting';

/** α takes the values i / ALPHA_GRID, i = 0 … ALPHA_GRID − 1 (AWQ's n_grid). */
export const ALPHA_GRID = 20;
/** AWQ clamps the scales' base at 1e-4: a channel no input reached does not get a zero scale. */
const MIN_MAGNITUDE = 1e-4;

export interface AwqOptions {
  groupSize: number;
  symmetric: boolean;
  /** The bits a weight will be written with; undefined: not quantized. */
  bitsOf: (weight: string) => number | undefined;
  /** Every group takes this α instead of searching (tests, and the identity check at 0). */
  alpha?: number;
  backend?: Backend;
  /** Called once per consumer read. */
  tick?: () => void;
}

export interface AwqGroupResult {
  group: string;
  alpha: number;
  /** L at the chosen α and at α = 0 (plain quantization), as defined in the header. */
  loss: number;
  loss_alpha0: number;
}

export interface AwqResult {
  groups: AwqGroupResult[];
  skipped: Skipped[];
}

/** The scales chosen, and the folded tensors and inputs they give. */
export class AwqFold {
  /** Consumer weight → the multiplier of each of its columns. */
  private readonly cols = new Map<string, Float32Array>();
  /** Producer weight or bias → the divisor of each of its rows. */
  private readonly rows = new Map<string, Float32Array>();
  /** Folded norm weights, already rounded to their dtype. */
  private readonly norms = new Map<string, Float32Array>();
  readonly result: AwqResult = { groups: [], skipped: [] };

  /** Whether the fold changes this tensor. */
  has(name: string): boolean {
    return this.cols.has(name) || this.rows.has(name) || this.norms.has(name);
  }

  /** The tensor as folded, float32 (call only when has(name)). */
  weight(name: string, reader: TensorReader): Float32Array {
    const norm = this.norms.get(name);
    if (norm) return Float32Array.from(norm);
    const w = reader.f32(name);
    const div = this.rows.get(name);
    const mul = this.cols.get(name);
    const cols = mul?.length ?? w.length / (div?.length ?? 1);
    for (let i = 0; i < w.length; i++) {
      const r = Math.floor(i / cols);
      if (div) w[i] /= div[r];
      if (mul) w[i] *= mul[i - r * cols];
    }
    return w;
  }

  /** The calibrated inputs of a consumer after the fold: the Hessian diag(s)⁻¹·H·diag(s)⁻¹, the imatrix / s². */
  inputs(name: string, x: Inputs | undefined): Inputs | undefined {
    const s = this.cols.get(name);
    if (!s || !x) return x;
    const n = s.length;
    const diag = x.diag?.map((v, i) => v / (s[i] * s[i]));
    let full: Float32Array | undefined;
    if (x.full) {
      full = new Float32Array(x.full.length);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) full[i * n + j] = x.full[i * n + j] / (s[i] * s[j]);
    }
    return { rows: x.rows, diag, full };
  }

  /** The per-column mean x² of a consumer's input after the fold. */
  importance(name: string, imp: Float64Array | undefined): Float64Array | undefined {
    const s = this.cols.get(name);
    return s && imp ? imp.map((v, i) => v / (s[i] * s[i])) : imp;
  }

  /** Records group g's scale s (s = 1 everywhere: nothing changes). */
  apply(g: ScaleGroup, s: Float32Array, arch: Architecture, reader: TensorReader): void {
    if (s.every((v) => v === 1)) return;
    let eff = s;
    if (g.producer.kind === 'norm') {
      const { folded, scale } = foldNorm(reader, g.producer.name, s, arch.normOffset);
      this.norms.set(g.producer.name, folded);
      eff = scale;
    } else {
      const map = g.producer.rows;
      const div = map ? Float32Array.from(map, (j) => (j < 0 ? 1 : s[j])) : s;
      this.rows.set(g.producer.name, div);
      if (g.producer.bias) this.rows.set(g.producer.bias, div);
    }
    const expanded = g.expand ? Float32Array.from(g.expand, (j) => eff[j]) : eff;
    for (const c of g.consumers) this.cols.set(c, expanded);
  }
}

/**
 * w' = (off + w)/s − off rounded to the norm's dtype, and the scale it applies: (off + w)/(off + w'), or s where
 * that ratio is not a positive number (a channel the norm zeroes).
 */
function foldNorm(
  reader: TensorReader,
  name: string,
  s: Float32Array,
  off: number,
): { folded: Float32Array; scale: Float32Array } {
  const w = reader.f32(name);
  const dtype = reader.dtype(name);
  const folded = toFloat32(
    fromFloat32(
      w.map((v, i) => (off + v) / s[i] - off),
      dtype,
    ),
    dtype,
  );
  const scale = s.map((si, i) => {
    const r = (off + w[i]) / (off + folded[i]);
    return Number.isFinite(r) && r > 0 ? r : si;
  });
  return { folded, scale };
}

/** m^α normalised by sqrt(max·min) (AWQ's auto_scale). */
export function scalesAt(m: Float64Array, alpha: number): Float32Array {
  const p = Float64Array.from(m, (v) => Math.pow(Math.max(v, MIN_MAGNITUDE), alpha));
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of p) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const norm = Math.sqrt(hi * lo);
  return Float32Array.from(p, (v) => v / norm);
}

/** m of a group: the RMS of its input per channel (v_o: over the query heads that share each kv channel). */
function magnitude(g: ScaleGroup, weighting: Weighting): Float64Array | undefined {
  const imp = weighting.importance(g.source);
  if (!imp) return undefined;
  if (!g.expand) return imp.map(Math.sqrt);
  const sum = new Float64Array(g.size);
  const n = new Float64Array(g.size);
  g.expand.forEach((j, c) => {
    sum[j] += imp[c];
    n[j] += 1;
  });
  return sum.map((v, j) => Math.sqrt(v / n[j]));
}

/** L(α) at each candidate α, one consumer read at a time. */
async function groupLosses(
  g: ScaleGroup,
  candidates: Float32Array[],
  reader: TensorReader,
  weighting: Weighting,
  o: AwqOptions,
): Promise<Float64Array> {
  const loss = new Float64Array(candidates.length);
  for (const c of g.consumers) {
    const bits = o.bitsOf(c);
    const x = weighting.inputs(c);
    o.tick?.();
    if (bits === undefined || !x || x.rows === 0) continue;
    const [rows, cols] = reader.ref(c).shape;
    if (rows === 0) continue;
    const w = reader.f32(c);
    const h = x.full ? { full: x.full } : { diag: x.diag! };
    const spec = { bits, groupSize: o.groupSize, symmetric: o.symmetric };
    const scales = candidates.map((s) => (g.expand ? Float32Array.from(g.expand, (j) => s[j]) : s));
    const errs = await candidateErrors(w, rows, cols, scales, spec, h, o.backend);
    errs.forEach((e, a) => (loss[a] += e));
  }
  return loss;
}

/** Searches every group's α (or takes o.alpha) and returns the fold. */
export async function searchAwq(
  arch: Architecture,
  reader: TensorReader,
  weighting: Weighting,
  o: AwqOptions,
  owned: (name: string) => boolean = () => true,
): Promise<AwqFold> {
  const fold = new AwqFold();
  const { groups, skipped } = scaleGroups(arch);
  fold.result.skipped.push(...skipped);
  for (const g of groups) {
    if (!owned(g.producer.name)) continue;
    const m = magnitude(g, weighting);
    if (!m || m.every((v) => v === 0)) {
      fold.result.skipped.push({ layer: g.layer, kind: g.kind, reason: `no calibrated inputs (${g.key})` });
      continue;
    }
    const alphas = o.alpha !== undefined ? [0, o.alpha] : [...Array(ALPHA_GRID).keys()].map((i) => i / ALPHA_GRID);
    const candidates = alphas.map((a) => scalesAt(m, a));
    const loss = await groupLosses(g, candidates, reader, weighting, o);
    let best = o.alpha !== undefined ? 1 : 0;
    if (o.alpha === undefined) for (let a = 1; a < alphas.length; a++) if (loss[a] < loss[best]) best = a;
    fold.apply(g, candidates[best], arch, reader);
    fold.result.groups.push({ group: g.key, alpha: alphas[best], loss: loss[best], loss_alpha0: loss[0] });
  }
  return fold;
}

/** The stats' view of the folded model: what the quantizer and the allocation's error measurement read. */
export class AwqWeighting extends Weighting {
  constructor(
    private readonly base: Weighting,
    private readonly fold: AwqFold,
  ) {
    super(base.stats, base.alpha, base.beta);
  }

  override inputs(weight: string): Inputs | undefined {
    return this.fold.inputs(weight, this.base.inputs(weight));
  }

  override importance(weight: string): Float64Array | undefined {
    return this.fold.importance(weight, this.base.importance(weight));
  }
}
