/**
 * Router-preserving quantization (after EAQuant: Fu et al., 2025, "EAQuant: Enhancing Post-Training Quantization
 * for MoE Models via Expert-Aware Optimization", its router logits distribution alignment): once attention and
 * experts are quantized, the hidden states reaching a router drift (x → x̃) and tokens change experts. Layer by
 * layer, in order, the quantized model's router W̃ (kept in the model's dtype, the size --keep-router-fp gives) is
 * fitted so that its logits on the quantized inputs match the original router's logits on the original inputs, over
 * the calibration tokens:
 *
 *   W̃ = argmin Σ_t ‖W·x_t − W̃·x̃_t‖² + λ‖W̃ − W₀‖²  ⇒  W̃ᵀ = (X̃ᵀX̃ + λI)⁻¹ (X̃ᵀX·Wᵀ + λW₀ᵀ),
 *
 * W₀ the router as the quantized checkpoint holds it (W itself, or W·diag(s) after AWQ's fold), λ = `damp` × the
 * mean diagonal of X̃ᵀX̃ (as GPTQ dampens; λ → ∞ keeps W₀). Matching the logits (least squares, a
 * closed form) stands in for the paper's KL between routing distributions: equal logits give equal distributions
 * under softmax and sigmoid scoring alike, and the fit needs no learning rate. Each layer's fit sees the quantized
 * model with every earlier router already aligned. The router's bias (gpt-oss) is left as it is: it adds the same
 * to both sides. Routing agreement (top-k set overlap with the original, mean over tokens) is measured on the same
 * tokens before and after.
 */
import type { Backend } from '../backend/backend';
import { addCross } from '../calib/gram';
import { HiddenStore } from '../calib/hidden-store';
import { batches, concat } from '../eval/perplexity';
import type { TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import { ForwardObserver, ForwardPass } from '../model/forward/model';
import type { Routing } from '../model/forward/moe';
import { Context, layerLabel } from '../ui/progress';
import { choleskyWithInverse, matmulT, transpose } from './linalg';

export interface RouterAlignOptions {
  /** λ as a fraction of the mean diagonal of X̃ᵀX̃ (default 0.01). */
  damp?: number;
  batchTokens?: number;
  activationBudgetBytes?: number;
}

export interface LayerAlignment {
  layer: number;
  /** Top-k set overlap with the original model's routing, mean over the calibration tokens. */
  before: number;
  after: number;
}

/** Mean |A ∩ B| / k over tokens of two top-k selections [tokens, k]. */
export function topkOverlap(a: Int32Array, b: Int32Array, k: number): number {
  const tokens = a.length / k;
  if (tokens === 0) return 1;
  let hits = 0;
  for (let t = 0; t < tokens; t++)
    for (let i = 0; i < k; i++)
      for (let j = 0; j < k; j++)
        if (a[t * k + i] === b[t * k + j]) {
          hits++;
          break;
        }
  return hits / (tokens * k);
}

/** L⁻¹ of the Cholesky factor of G + λI, and λ = damp × the mean diagonal of the Gram G [h, h] (1 when it is 0). */
export async function dampedInverseFactor(
  gram: Float64Array,
  h: number,
  damp: number,
  be?: Backend,
): Promise<{ Li: Float32Array; lambda: number }> {
  let mean = 0;
  for (let i = 0; i < h; i++) mean += gram[i * h + i];
  mean /= h;
  const lambda = damp * (mean > 0 ? mean : 1);
  const a = Float32Array.from(gram);
  for (let i = 0; i < h; i++) a[i * h + i] += lambda;
  return { Li: (await choleskyWithInverse(a, h, be)).Li, lambda };
}

/** B [E, h] · (G + λI)⁻¹ from the inverse factor Li (A⁻¹ = L⁻ᵀ·L⁻¹). */
export async function solveWithFactor(
  b: Float32Array,
  Li: Float32Array,
  E: number,
  h: number,
  be?: Backend,
): Promise<Float32Array> {
  const t1 = await matmulT(b, Li, E, h, h, be); // B·L⁻ᵀ
  return matmulT(t1, transpose(Li, h, h), E, h, h, be); // ·L⁻¹
}

/** W̃ [E, h] from the Grams (see the header): w the original router, w0 the quantized model's. */
export async function fitRouter(
  w: Float32Array,
  w0: Float32Array,
  E: number,
  h: number,
  qq: Float64Array,
  qo: Float64Array,
  damp: number,
  be?: Backend,
): Promise<Float32Array> {
  const { Li, lambda } = await dampedInverseFactor(qq, h, damp, be);
  // Bᵀ = W·(X̃ᵀX)ᵀ + λW₀  [E, h]
  const bt = await matmulT(w, Float32Array.from(qo), E, h, h, be);
  for (let i = 0; i < bt.length; i++) bt[i] += lambda * w0[i];
  return solveWithFactor(bt, Li, E, h, be);
}

/**
 * One model's pass over a layer: the routers' decisions per batch (kept for the agreement) and, when `input` is
 * asked, the router input of the last batch (consumed by the Grams before the next batch runs).
 */
interface Seen {
  experts: Int32Array[];
  input?: Float32Array;
}

function watch(layer: number, h: number, seen: Seen, input: boolean): ForwardObserver {
  return {
    router: (l: number, r: Routing, x: Float32Array, n: number) => {
      if (l !== layer) return;
      seen.experts.push(r.experts.slice());
      if (input) seen.input = x.slice(0, n * h);
    },
  };
}

/**
 * Fits every MoE layer's router of the quantized model (read by `quantized`) to the original's on `windows`, in
 * layer order; returns the fitted routers by tensor name and the agreement before and after each fit.
 */
export async function alignRouters(
  original: TensorReader,
  quantized: TensorReader,
  arch: Architecture,
  windows: Int32Array[],
  be: Backend,
  ctx: Context,
  opts: RouterAlignOptions = {},
): Promise<{ routers: Map<string, Float32Array>; layers: LayerAlignment[] }> {
  const h = arch.hidden;
  const E = arch.numExperts;
  const k = arch.topK;
  const groups = batches(windows, opts.batchTokens ?? 4096);
  const sizes = groups.map((g) => g.reduce((s, w) => s + w.length, 0) * h);
  const tokens = sizes.reduce((s, n) => s + n, 0) / h;
  const budget = (opts.activationBudgetBytes ?? 2e9) / 2;
  const stores = [new HiddenStore(sizes, budget), new HiddenStore(sizes, budget)];
  const fpO = new ForwardPass(original, arch, be);
  const fpQ = new ForwardPass(quantized, arch, be);
  const routers = new Map<string, Float32Array>();
  const layers: LayerAlignment[] = [];
  try {
    groups.forEach((g, b) => {
      stores[0].put(b, fpO.embed(concat(g)));
      stores[1].put(b, fpQ.embed(concat(g)));
    });
    for (let l = 0; l < arch.numLayers; l++) {
      const progress = ctx.progress(`align routers ${layerLabel(l, arch.numLayers)}`, tokens, 'tokens');
      const moe = arch.isMoeLayer(l);
      const qq = moe ? new Float64Array(h * h) : undefined;
      const qo = moe ? new Float64Array(h * h) : undefined;
      const origSeen: Seen = { experts: [] };
      const quantSeen: Seen = { experts: [] };
      for (let b = 0; b < groups.length; b++) {
        const T = groups[b][0].length;
        const n = groups[b].length;
        const hO = stores[0].get(b);
        await fpO.layer(l, hO, n, T, moe ? watch(l, h, origSeen, true) : undefined);
        stores[0].put(b, hO);
        if (moe) {
          // the quantized layer's router input does not depend on the router: a throwaway pass collects it
          await fpQ.layer(l, stores[1].get(b).slice(), n, T, watch(l, h, quantSeen, true));
          const rows = n * T;
          const [o, q] = [origSeen.input!, quantSeen.input!];
          await addCross(be, qq!, q, q, rows, h);
          await addCross(be, qo!, q, o, rows, h);
        } else {
          const hQ = stores[1].get(b);
          await fpQ.layer(l, hQ, n, T);
          stores[1].put(b, hQ);
        }
        progress.tick(n * T);
      }
      progress.done();
      if (!moe) continue;
      const key = arch.routerKey(l);
      const fitted = await fitRouter(original.f32(key), quantized.f32(key), E, h, qq!, qo!, opts.damp ?? 0.01, be);
      routers.set(key, fitted);
      fpQ.weightOverrides.set(key, fitted);
      const after: Seen = { experts: [] };
      for (let b = 0; b < groups.length; b++) {
        const hQ = stores[1].get(b);
        await fpQ.layer(l, hQ, groups[b].length, groups[b][0].length, watch(l, h, after, false));
        stores[1].put(b, hQ);
      }
      const agreement = (seen: Seen) => {
        let sum = 0;
        let counted = 0;
        seen.experts.forEach((experts, b) => {
          const t = experts.length / k;
          sum += topkOverlap(origSeen.experts[b], experts, k) * t;
          counted += t;
        });
        return counted ? sum / counted : 1;
      };
      layers.push({ layer: l, before: agreement(quantSeen), after: agreement(after) });
      fpO.release();
      fpQ.release();
    }
    return { routers, layers };
  } finally {
    stores.forEach((s) => s.close());
  }
}
