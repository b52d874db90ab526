/**
 * Router recalibration after a prune or merge (`--recalibrate-router`): the reduced model keeps the surviving
 * experts' router rows, but the hidden states reaching each router drift once earlier layers lost experts, and a
 * merged expert stands for several originals. Layer by layer, in order, on the calibration tokens, the reduced
 * model's router W₀ [E', h] is refitted so that its logits on its own MoE inputs x̃ match the target logits of the
 * original model among what remains:
 *
 *   target of new expert i = l_e                         when it is one original expert e (a prune),
 *                          = log Σ_{e∈S_i} exp(l_e)       softmax scoring, a merge of S_i (the group's probability),
 *                          = log expm1(Σ_{e∈S_i} softplus(l_e))  sigmoid scoring (noisy-OR: 1 − Π(1 − σ(l_e))),
 *
 * l the original model's router logits on its own inputs x. Least squares (the default, closed form), with a
 * ridge pulling toward W₀ and fitted as a correction so that a model that needs none gets exactly W₀ back:
 *
 *   W̃ = W₀ + Δ,  Δᵀ = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀR,  R = T − X̃W₀ᵀ  (the logit residual; λ = damp × mean diag X̃ᵀX̃).
 *
 * `kl` then lowers the KL divergence between the target routing distribution (softmax of T over the new experts,
 * or per expert σ(T) under sigmoid scoring) and the router's, by gradient steps on W̃ preconditioned with the same
 * (X̃ᵀX̃ + λI)⁻¹ (a step of 1/c for a logit curvature bound c: ½ softmax, ¼ sigmoid), halving a step that does not
 * lower the divergence. No backpropagation through the model: only the router of the layer being fitted changes.
 * Biases stay as the reduction wrote them (gpt-oss's router bias, DeepSeek-V3's correction bias: a kept expert's
 * target is its own original logit, so its bias ranks it as before). Agreement is the top-k set overlap between
 * the reduced model's routing and the target's (the original's routing among what remains), before and after.
 */
import type { Backend } from '../backend/backend';
import { addCross } from '../calib/gram';
import { HiddenStore } from '../calib/hidden-store';
import { batches, concat } from '../eval/perplexity';
import type { TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import { UsageError } from '../errors';
import { ForwardPass } from '../model/forward/model';
import { route } from '../model/forward/moe';
import { transpose } from '../quant/linalg';
import { dampedInverseFactor, solveWithFactor, topkOverlap } from '../quant/router-align';
import { Context, layerLabel } from '../ui/progress';

export const RECALIBRATION_MODES = ['off', 'ls', 'kl'] as const;
export type RecalibrationMode = (typeof RECALIBRATION_MODES)[number];

export interface RecalibrationOptions {
  mode: Exclude<RecalibrationMode, 'off'>;
  /** λ as a fraction of the mean diagonal of X̃ᵀX̃ (default 0.01). */
  damp?: number;
  /** Gradient steps of the kl mode (default 20). */
  klSteps?: number;
  batchTokens?: number;
  activationBudgetBytes?: number;
}

export interface LayerRecalibration {
  layer: number;
  /** Top-k overlap with the original's routing among what remains, mean over the calibration tokens. */
  before: number;
  after: number;
  /** The kl mode's divergence per token, before and after its steps (from the least-squares fit). */
  kl?: { before: number; after: number };
}

const softplus = (x: number) => (x > 0 ? x + Math.log1p(Math.exp(-x)) : Math.log1p(Math.exp(x)));

/**
 * The target logits [n, E'] of the new experts from the original logits [n, E]: `members[i]` the original experts
 * new expert i stands for (see the header).
 */
export function targetLogits(
  logits: Float32Array,
  n: number,
  E: number,
  members: readonly (readonly number[])[],
  scoring: 'softmax' | 'sigmoid',
): Float32Array {
  const En = members.length;
  const out = new Float32Array(n * En);
  for (let t = 0; t < n; t++) {
    const row = t * E;
    members.forEach((m, i) => {
      let v: number;
      if (m.length === 1) v = logits[row + m[0]];
      else if (scoring === 'softmax') {
        let max = -Infinity;
        for (const e of m) max = Math.max(max, logits[row + e]);
        let s = 0;
        for (const e of m) s += Math.exp(logits[row + e] - max);
        v = max + Math.log(s);
      } else {
        let s = 0;
        for (const e of m) s += softplus(logits[row + e]);
        v = s > 30 ? s : Math.log(Math.expm1(s));
      }
      out[t * En + i] = v;
    });
  }
  return out;
}

/** Mean over tokens of the routing divergence and its gradient in the logits: KL(target ‖ model). */
function divergence(
  logits: Float32Array,
  target: Float32Array,
  n: number,
  E: number,
  scoring: 'softmax' | 'sigmoid',
  grad?: Float32Array,
): number {
  let kl = 0;
  const p = new Float64Array(E);
  const q = new Float64Array(E);
  for (let t = 0; t < n; t++) {
    const o = t * E;
    if (scoring === 'softmax') {
      const norm = (src: Float32Array, dst: Float64Array) => {
        let max = -Infinity;
        for (let e = 0; e < E; e++) max = Math.max(max, src[o + e]);
        let s = 0;
        for (let e = 0; e < E; e++) s += dst[e] = Math.exp(src[o + e] - max);
        for (let e = 0; e < E; e++) dst[e] /= s;
      };
      norm(logits, p);
      norm(target, q);
      for (let e = 0; e < E; e++) {
        if (q[e] > 0) kl += q[e] * Math.log(q[e] / Math.max(p[e], 1e-300));
        if (grad) grad[o + e] = p[e] - q[e];
      }
    } else {
      for (let e = 0; e < E; e++) {
        const lp = logits[o + e];
        const lq = target[o + e];
        const sq = 1 / (1 + Math.exp(-lq));
        // Bernoulli KL in logits: sq·(log σ(lq) − log σ(lp)) + (1 − sq)·(log σ(−lq) − log σ(−lp))
        kl += sq * (softplus(-lp) - softplus(-lq)) + (1 - sq) * (softplus(lp) - softplus(lq));
        if (grad) grad[o + e] = 1 / (1 + Math.exp(-lp)) - sq;
      }
    }
  }
  return n ? kl / n : 0;
}

/** One layer's least-squares system: X̃ᵀX̃ and (X̃ᵀR)ᵀ, accumulated batch by batch. */
class RidgeSystem {
  readonly xx: Float64Array;
  readonly rx: Float64Array;
  constructor(
    readonly h: number,
    readonly E: number,
  ) {
    this.xx = new Float64Array(h * h);
    this.rx = new Float64Array(E * h);
  }

  async add(be: Backend, x: Float32Array, r: Float32Array, rows: number): Promise<void> {
    if (rows === 0) return;
    await addCross(be, this.xx, x, x, rows, this.h);
    const g = await be.linear(transpose(r, rows, this.E), transpose(x, rows, this.h), this.E, rows, this.h);
    for (let i = 0; i < g.length; i++) this.rx[i] += g[i];
  }

  /** L⁻¹ of X̃ᵀX̃ + λI, for Δ = B·L⁻ᵀ·L⁻¹. */
  async inverseFactor(damp: number, be: Backend): Promise<Float32Array> {
    return (await dampedInverseFactor(this.xx, this.h, damp, be)).Li;
  }
}

interface Batch {
  /** The original's routing among what remains (the target's top-k) and the reduced model's before/after. */
  target: Int32Array;
  before: Int32Array;
  after?: Int32Array;
  /** Target logits [rows, E'] (kl mode). */
  logits?: Float32Array;
}

/**
 * The reduced layer's throwaway pass over one batch (its router input does not depend on its router): the logit
 * residual enters the least-squares system; the routings are kept for the agreement.
 */
async function measure(
  fpR: ForwardPass,
  be: Backend,
  l: number,
  hidden: Float32Array,
  [n, T]: [number, number],
  target: Float32Array,
  sys: RidgeSystem,
  keep: ((x: Float32Array) => void) | undefined,
  corr: Float32Array | undefined,
): Promise<Batch> {
  const rows = n * T;
  const { h, E } = sys;
  let x: Float32Array | undefined;
  let mine: Float32Array | undefined;
  await fpR.layer(l, hidden, n, T, {
    router: (_l, r, input) => {
      x = input.slice(0, rows * h);
      mine = r.logits.slice();
    },
  });
  const residual = new Float32Array(rows * E);
  for (let i = 0; i < residual.length; i++) residual[i] = target[i] - mine![i];
  await sys.add(be, x!, residual, rows);
  keep?.(x!);
  return {
    target: route(target, rows, E, fpR.arch.routing, corr).experts,
    before: route(mine!, rows, E, fpR.arch.routing, corr).experts,
    logits: keep ? target : undefined,
  };
}

/** The score the refit's targets are built on: softmax or sigmoid (PhiMoE's sparsemixer is refused). */
export function recalScoring(arch: Architecture): 'softmax' | 'sigmoid' {
  const s = arch.routing.scoring;
  if (s === 'sparsemixer')
    throw new UsageError(`${arch.modelType}: --recalibrate-router is not defined for sparsemixer routing`, {
      hint: 'leave out --recalibrate-router',
    });
  return s;
}

/**
 * Refits every MoE layer's router of the reduced model (read by `reduced`, its architecture `archR`) toward the
 * original's routing on `windows`, in layer order. `members.get(layer)[i]` lists the original experts new expert i
 * of that layer stands for. Returns the fitted routers by tensor name and each layer's agreement.
 */
export async function recalibrateRouters(
  original: TensorReader,
  arch: Architecture,
  reduced: TensorReader,
  archR: Architecture,
  members: Map<number, number[][]>,
  windows: Int32Array[],
  be: Backend,
  ctx: Context,
  opts: RecalibrationOptions,
): Promise<{ routers: Map<string, Float32Array>; layers: LayerRecalibration[] }> {
  const h = arch.hidden;
  const E = arch.numExperts;
  const En = archR.numExperts;
  const k = archR.topK;
  const scoring = recalScoring(arch);
  const damp = opts.damp ?? 0.01;
  const groups = batches(windows, opts.batchTokens ?? 4096);
  const sizes = groups.map((g) => g.reduce((s, w) => s + w.length, 0) * h);
  const tokens = sizes.reduce((s, n) => s + n, 0) / h;
  const budget = (opts.activationBudgetBytes ?? 2e9) / 3;
  const stores = [new HiddenStore(sizes, budget), new HiddenStore(sizes, budget)];
  // The reduced model's router inputs of the layer being fitted (kl mode's steps run on them).
  const inputs = opts.mode === 'kl' ? new HiddenStore(sizes, budget) : undefined;
  const fpO = new ForwardPass(original, arch, be);
  const fpR = new ForwardPass(reduced, archR, be);
  const routers = new Map<string, Float32Array>();
  const layers: LayerRecalibration[] = [];
  try {
    groups.forEach((g, b) => {
      stores[0].put(b, fpO.embed(concat(g)));
      stores[1].put(b, fpR.embed(concat(g)));
    });
    for (let l = 0; l < arch.numLayers; l++) {
      const moe = arch.isMoeLayer(l);
      const progress = ctx.progress(`recalibrate routers ${layerLabel(l, arch.numLayers)}`, tokens, 'tokens');
      const key = arch.routerKey(l);
      const biasKey = archR.correctionBiasKey(l);
      const corr = moe && archR.routing.correctionBias && biasKey ? reduced.f32(biasKey) : undefined;
      const sys = moe ? new RidgeSystem(h, En) : undefined;
      const seen: Batch[] = [];
      const layerMembers = moe ? members.get(l) : undefined;
      if (moe && layerMembers?.length !== En)
        throw new Error(`router recalibration: layer ${l} has ${En} experts but ${layerMembers?.length} member lists`);
      for (let b = 0; b < groups.length; b++) {
        const T = groups[b][0].length;
        const n = groups[b].length;
        const rows = n * T;
        let orig: Float32Array | undefined;
        const hO = stores[0].get(b);
        await fpO.layer(l, hO, n, T, moe ? { router: (_l, r) => void (orig = r.logits.slice()) } : undefined);
        stores[0].put(b, hO);
        if (!moe) {
          const hR = stores[1].get(b);
          await fpR.layer(l, hR, n, T);
          stores[1].put(b, hR);
        } else {
          const target = targetLogits(orig!, rows, E, layerMembers!, scoring);
          const keep = inputs ? (x: Float32Array) => inputs.put(b, x) : undefined;
          seen.push(await measure(fpR, be, l, stores[1].get(b).slice(), [n, T], target, sys!, keep, corr));
        }
        progress.tick(rows);
      }
      progress.done();
      if (!moe) continue;
      const w0 = reduced.f32(key);
      const Li = await sys!.inverseFactor(damp, be);
      const delta = await solveWithFactor(Float32Array.from(sys!.rx), Li, En, h, be);
      let fitted: Float32Array<ArrayBufferLike> = Float32Array.from(w0, (v, i) => v + delta[i]);
      let kl: LayerRecalibration['kl'];
      if (inputs)
        ({ fitted, kl } = await lowerDivergence(fitted, Li, inputs, seen, groups, archR, l, reduced, be, opts));
      routers.set(key, fitted);
      fpR.weightOverrides.set(key, fitted);
      for (let b = 0; b < groups.length; b++) {
        const hR = stores[1].get(b);
        await fpR.layer(l, hR, groups[b].length, groups[b][0].length, {
          router: (_l, r) => void (seen[b].after = r.experts.slice()),
        });
        stores[1].put(b, hR);
      }
      const agreement = (pick: (s: Batch) => Int32Array) => {
        let sum = 0;
        let counted = 0;
        for (const s of seen) {
          const t = s.target.length / k;
          sum += topkOverlap(s.target, pick(s), k) * t;
          counted += t;
        }
        return counted ? sum / counted : 1;
      };
      layers.push({ layer: l, before: agreement((s) => s.before), after: agreement((s) => s.after!), kl });
      fpO.release();
      fpR.release();
    }
    return { routers, layers };
  } finally {
    stores.forEach((s) => s.close());
    inputs?.close();
  }
}

/** The kl mode's preconditioned gradient steps from the least-squares router `w` (see the header). */
async function lowerDivergence(
  w: Float32Array<ArrayBufferLike>,
  Li: Float32Array,
  inputs: HiddenStore,
  seen: Batch[],
  groups: Int32Array[][],
  archR: Architecture,
  layer: number,
  reduced: TensorReader,
  be: Backend,
  opts: RecalibrationOptions,
): Promise<{ fitted: Float32Array<ArrayBufferLike>; kl: { before: number; after: number } }> {
  const h = archR.hidden;
  const E = archR.numExperts;
  const scoring = recalScoring(archR);
  const biasKey = archR.correctionBiasKey(layer);
  const logitBias = archR.routing.logitBias && biasKey ? reduced.f32(biasKey) : undefined;
  // Σ over tokens of the divergence and, when asked, Σ X̃ᵀG as [E, h].
  const evaluate = async (cand: Float32Array, withGrad: boolean) => {
    let total = 0;
    let count = 0;
    const gx = withGrad ? new Float64Array(E * h) : undefined;
    for (let b = 0; b < groups.length; b++) {
      const x = inputs.get(b);
      const rows = x.length / h;
      const logits = await be.linear(x, cand, rows, h, E, logitBias);
      const grad = withGrad ? new Float32Array(rows * E) : undefined;
      total += divergence(logits, seen[b].logits!, rows, E, scoring, grad) * rows;
      count += rows;
      if (grad) {
        const g = await be.linear(transpose(grad, rows, E), transpose(x, rows, h), E, rows, h);
        for (let i = 0; i < g.length; i++) gx![i] += g[i];
      }
    }
    return { kl: count ? total / count : 0, gx };
  };
  let { kl, gx } = await evaluate(w, true);
  const start = kl;
  let step = scoring === 'softmax' ? 2 : 4;
  for (let s = 0; s < (opts.klSteps ?? 20) && step > 1e-3; s++) {
    const dir = await solveWithFactor(Float32Array.from(gx!), Li, E, h, be);
    const cand = Float32Array.from(w, (v, i) => v - step * dir[i]);
    const next = await evaluate(cand, true);
    if (next.kl < kl) {
      w = cand;
      ({ kl, gx } = next);
    } else step /= 2;
  }
  return { fitted: w, kl: { before: start, after: kl } };
}
