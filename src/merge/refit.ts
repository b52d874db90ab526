/**
 * Least-squares output refit of a merged (or pruned) MoE layer's down projections, after MergeMoE (Miao et al.,
 * 2025, "MergeMoE: Efficient Compression of MoE Models via Expert Output Merging"), which fits the merged expert's
 * output projection in closed form so that the compressed block reproduces the original block's output; here the
 * target is the whole layer's routed output, as NAEE's reconstruction loss measures it (src/prune/reconstruct.ts),
 * so the re-routing of the dropped experts' tokens is part of what is fitted.
 *
 * On the calibrated MoE-block input samples x_t (stats naee_in), with z_t = Σ_{e∈top-k} g_e(x_t)·E_e(x_t) the
 * original routed output and g'_i the new router's weights over the K merged experts (a_i(x) = silu(G_i x) ⊙ U_i x
 * each one's activations, D_i its down projection), one Gauss-Seidel sweep over the experts minimises, for each i
 * in turn with the others fixed,
 *   Σ_t ‖g'_i(t)·D_i·a_i(t) − r_i(t)‖² + λ_i‖D_i − D_i⁰‖²,   r_i(t) = z_t − Σ_{j≠i} g'_j(t)·D_j·a_j(t)
 * over the tokens that select i, in closed form: D_i = (C_i + λ_i·D_i⁰)(G_i + λ_i·I)⁻¹ with G_i = Σ_t g'² a aᵀ,
 * C_i = Σ_t g'·r·aᵀ, and the ridge λ_i = ridge · tr(G_i) / width pulling toward the merged D_i⁰ (it keeps the fit
 * on ~10³ samples from overfitting). Each step lowers the regularised calibration error; gate and up are kept,
 * so the expert keeps its width and the output stays a plain checkpoint.
 */
import type { Backend } from '../backend/backend';
import { UsageError } from '../errors';
import type { Architecture } from '../model/arch';
import { ExpertWeights, loadExpert } from '../model/experts';
import { route, Routing } from '../model/forward/moe';
import { concatRows } from '../model/forward/ops';
import type { TensorReader } from '../io/checkpoint';
import { choleskyWithInverse, matmulT, transpose } from '../quant/linalg';
import type { GroupInput, LayerRouter } from './method';

/** The routed output of one MoE layer [n, hidden] with the given router and experts, and each expert's parts. */
export interface LayerOutput {
  out: Float32Array;
  routing: Routing;
  /** Per expert: its output [n, hidden] and activations [n, width] on every sample. */
  expertOut: Float32Array[];
  act: Float32Array[];
}

/** Runs router and experts on the samples x [n, hidden] (plain SwiGLU experts only). */
export async function layerOutput(
  be: Backend,
  arch: Architecture,
  x: Float32Array,
  n: number,
  router: LayerRouter,
  experts: ExpertWeights[],
): Promise<LayerOutput> {
  const h = arch.hidden;
  const w = arch.expertWidth;
  const E = experts.length;
  const logitBias = arch.routing.logitBias ? router.bias : undefined;
  const logits = await be.linear(x, router.rows, n, h, E, logitBias);
  const routing = route(logits, n, E, arch.routing, router.bias);
  const expertOut: Float32Array[] = [];
  const act: Float32Array[] = [];
  for (const ex of experts) {
    const r = await be.swiglu(x, concatRows(ex.gate, ex.up), ex.down, n, h, w, true);
    expertOut.push(r.out);
    act.push(r.act!);
  }
  const out = new Float32Array(n * h);
  const k = arch.topK;
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < k; j++) {
      const e = routing.experts[t * k + j];
      const g = routing.weights[t * k + j];
      const y = expertOut[e];
      for (let c = 0; c < h; c++) out[t * h + c] += g * y[t * h + c];
    }
  }
  return { out, routing, expertOut, act };
}

/** The original layer's router (rows and correction bias) and experts, as written in the checkpoint. */
export function originalLayer(
  reader: TensorReader,
  arch: Architecture,
  layer: number,
): { router: LayerRouter; experts: ExpertWeights[] } {
  const biasKey = arch.correctionBiasKey(layer);
  const router = { rows: reader.f32(arch.routerKey(layer)), bias: biasKey ? reader.f32(biasKey) : undefined };
  const experts = [...Array(arch.numExperts).keys()].map((e) => loadExpert(reader, arch, layer, e));
  return { router, experts };
}

/** Mean over samples of ‖a − b‖² divided by the mean ‖b‖²: the relative squared error of a layer output. */
export function relativeError(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den > 0 ? num / den : 0;
}

/** Refuses experts the refit does not model (biases, gpt-oss's clamped activation). */
export function checkRefittable(arch: Architecture, layer: number): void {
  const biased = (['gate', 'up', 'down'] as const).some((p) => arch.expertBiasKey(layer, 0, p));
  if (arch.expertGlu || biased) {
    throw new UsageError(`--refit supports plain SwiGLU experts; ${arch.modelType} experts have biases or a clamp`, {
      hint: 'merge with --refit off',
    });
  }
}

export interface RefitResult {
  experts: ExpertWeights[];
  /** Relative squared error of the layer's routed output on the samples before and after. */
  errorBefore: number;
  errorAfter: number;
}

/**
 * One Gauss-Seidel sweep of the ridge least-squares fit of each expert's down projection (see the header). `target`
 * is the original routed output on x; experts and router are the reduced layer's.
 */
export async function refitDownProjections(
  be: Backend,
  arch: Architecture,
  x: Float32Array,
  n: number,
  target: Float32Array,
  router: LayerRouter,
  experts: ExpertWeights[],
  ridge: number,
): Promise<RefitResult> {
  const h = arch.hidden;
  const w = arch.expertWidth;
  const k = arch.topK;
  const cur = await layerOutput(be, arch, x, n, router, experts);
  const pred = Float64Array.from(cur.out);
  const errorBefore = relativeError(cur.out, target);
  const out: ExpertWeights[] = [];
  for (let i = 0; i < experts.length; i++) {
    // Tokens selecting i and their weights.
    const tok: number[] = [];
    const gw: number[] = [];
    for (let t = 0; t < n; t++) {
      for (let j = 0; j < k; j++) {
        if (cur.routing.experts[t * k + j] !== i) continue;
        tok.push(t);
        gw.push(cur.routing.weights[t * k + j]);
      }
    }
    const m = tok.length;
    const yi = cur.expertOut[i];
    if (m === 0) {
      out.push(experts[i]);
      continue;
    }
    // aT [w, m] = (g·a)ᵀ and rT [h, m] = rᵀ, for G = (g a)ᵀ(g a) and C = rᵀ(g a).
    const aT = new Float32Array(w * m);
    const rT = new Float32Array(h * m);
    tok.forEach((t, s) => {
      const g = gw[s];
      for (let c = 0; c < w; c++) aT[c * m + s] = g * cur.act[i][t * w + c];
      for (let c = 0; c < h; c++) rT[c * m + s] = target[t * h + c] - (pred[t * h + c] - g * yi[t * h + c]);
    });
    const G = await be.linear(aT, aT, w, m, w);
    const C = await be.linear(rT, aT, h, m, w);
    let trace = 0;
    for (let c = 0; c < w; c++) trace += G[c * w + c];
    const lambda = Math.max((ridge * trace) / w, 1e-12);
    for (let c = 0; c < w; c++) G[c * w + c] += lambda;
    // D = (C + λ·D⁰)·G⁻¹ = ((C + λ·D⁰)·L⁻ᵀ)·L⁻¹ with G = L·Lᵀ: two products on the backend.
    const d0 = experts[i].down; // [h, w]
    for (let q = 0; q < C.length; q++) C[q] += lambda * d0[q];
    const { Li } = await choleskyWithInverse(G, w, be);
    const down = await matmulT(await matmulT(C, Li, h, w, w, be), transpose(Li, w, w), h, w, w, be);
    const next = { ...experts[i], down };
    out.push(next);
    // Update the prediction with the refitted expert's output on its tokens.
    const actI = cur.act[i];
    tok.forEach((t, s) => {
      const g = gw[s];
      for (let r = 0; r < h; r++) {
        let y = 0;
        for (let c = 0; c < w; c++) y += down[r * w + c] * actI[t * w + c];
        pred[t * h + r] += g * (y - yi[t * h + r]);
      }
    });
  }
  const after = await layerOutput(be, arch, x, n, router, out);
  return { experts: out, errorBefore, errorAfter: relativeError(after.out, target) };
}

/** refineLayer of the shared steps: the refit of one reduced layer against the original layer's routed output. */
export async function refitLayer(
  experts: ExpertWeights[],
  router: LayerRouter,
  input: GroupInput,
  ridge: number,
): Promise<RefitResult> {
  const { reader, arch, layer, be, stats } = input;
  checkRefittable(arch, layer);
  const x = stats.f32(`layers.${layer}.moe.naee_in`);
  const n = x.length / arch.hidden;
  if (n === 0) {
    throw new UsageError('--refit needs calibrated MoE-block samples, and these stats have none', {
      file: stats.dir,
      hint: 're-run moe calibrate with --naee-tokens > 0',
    });
  }
  const orig = originalLayer(reader, arch, layer);
  const target = (await layerOutput(be, arch, x, n, orig.router, orig.experts)).out;
  return refitDownProjections(be, arch, x, n, target, router, experts, ridge);
}
