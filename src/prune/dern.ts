/**
 * Neuron recombination after expert pruning, after DERN (Zhou et al., EMNLP 2025, "Dropping Experts, Recombining
 * Neurons: Retraining-Free Pruning for Sparse Mixture-of-Experts LLMs"): the experts a selection drops are split
 * into neuron segments, each segment goes to the kept expert it is most compatible with, and the segments are
 * merged into that expert so that its width (and the checkpoint's layout) does not change.
 *
 * A segment is one intermediate neuron j of an expert: its gate row g_j, up row u_j and down column d_j, the three
 * pieces of that neuron's contribution d_j · silu(g_j·x) · (u_j·x). Under silu(gate) · up, negating u_j and d_j
 * together leaves the neuron's function unchanged, so its compatibility with a kept neuron i is
 *
 *   c(j, i) = ½ (√h · cos(g_j, g_i) + √(2h) · |cos([u_j; d_j], [u_i; d_i])|)
 *
 * in units of chance: the cosine of two unrelated directions in n dimensions has a spread of 1/√n, so one threshold
 * means the same at any hidden size (a threshold on the raw cosine would admit nearly everything at h = 256 and
 * nothing at h = 4096).
 * and a segment matched with a negative second term is merged with u_j, d_j negated (gpt-oss's clamped SwiGLU is not
 * odd in up: no flip, the signed cosine). Each segment of a dropped expert goes to the kept neuron of highest c among
 * the candidate experts (every kept expert, or the RECOMBINE_CANDIDATES whose router rows are closest to the dropped
 * expert's, which bounds the work to candidates × width² per segment set); a segment whose best c is below the
 * threshold τ is a conflict and is dropped. Within a kept expert, a neuron i that receives segments S_i becomes their
 * frequency-weighted mean with itself:
 *
 *   v_i ← (f_k v_i + Σ_{s∈S_i} f_{e(s)} v_s) / (f_k + Σ_{s∈S_i} f_{e(s)}),  v = gate row, up row, down column
 *
 * f the experts' routed-token shares from the calibration stats (segments of never-routed experts weigh 0); gate and
 * up biases (gpt-oss) merge alike, the down bias stays the kept expert's. A kept expert that receives nothing (every
 * one when τ is above any reachable c) is left bit-exact: with nothing recombined the output is the selection's
 * prune.
 */
import type { Backend } from '../backend/backend';
import type { TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import { ExpertWeights, loadExpert } from '../model/experts';
import { normalizeRows } from '../merge/align';

/** Kept experts searched for each dropped expert's segments, the nearest by router row, when more are kept. */
export const RECOMBINE_CANDIDATES = 8;
/**
 * The default compatibility threshold τ, in chance spreads: beyond what the best of a few hundred unrelated neurons
 * reaches (about 3). On both trained fixtures at 4 of 8 experts 3.5 beat REAP alone on held-out perplexity and KL,
 * 2.5 (nearly every segment merged) lost to it and 4.5 (almost none) equalled it (README).
 */
export const DEFAULT_RECOMBINE_THRESHOLD = 3.5;

export interface RecombinedLayer {
  /** The new kept experts (same order as `kept`), undefined where nothing was merged in. */
  experts: (ExpertWeights | undefined)[];
  /** Segments of the dropped experts merged in, and the segments there were. */
  recombined: number;
  segments: number;
}

/** Per neuron: the gate row [w, h] and the up row with the down column [w, 2h], each normalised. */
function neuronVectors(e: ExpertWeights, w: number, h: number): { gate: Float32Array; ud: Float32Array } {
  const ud = new Float32Array(w * 2 * h);
  for (let j = 0; j < w; j++) {
    ud.set(e.up.subarray(j * h, (j + 1) * h), j * 2 * h);
    for (let r = 0; r < h; r++) ud[j * 2 * h + h + r] = e.down[r * w + j];
  }
  return { gate: normalizeRows(e.gate, w, h), ud: normalizeRows(ud, w, 2 * h) };
}

function cosine(a: Float32Array, b: Float32Array): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

/** The kept experts (indices into `kept`) searched for dropped expert d: the nearest by router row. */
function candidates(router: Float32Array, h: number, kept: number[], d: number): number[] {
  const all = kept.map((_, i) => i);
  if (kept.length <= RECOMBINE_CANDIDATES) return all;
  const row = (e: number) => router.subarray(e * h, (e + 1) * h);
  const sim = kept.map((k) => cosine(row(d), row(k)));
  return all.sort((a, b) => sim[b] - sim[a] || a - b).slice(0, RECOMBINE_CANDIDATES);
}

/** Recombines the dropped experts' neurons of one MoE layer into the kept experts (see the header). */
export async function recombineLayer(
  reader: TensorReader,
  arch: Architecture,
  layer: number,
  kept: number[],
  freq: ArrayLike<number>,
  threshold: number,
  be: Backend,
): Promise<RecombinedLayer> {
  const h = arch.hidden;
  const w = arch.expertWidth;
  const flip = arch.expertGlu === undefined;
  const [sg, sud] = [Math.sqrt(h), Math.sqrt(2 * h)];
  const dropped = [...Array(arch.numExperts).keys()].filter((e) => !kept.includes(e));
  const keptW = kept.map((e) => loadExpert(reader, arch, layer, e));
  const keptV = keptW.map((e) => neuronVectors(e, w, h));
  const router = reader.f32(arch.routerKey(layer));
  // Per kept expert and neuron: the merged sums (allocated on first use) and their total weight.
  const sums: (ExpertWeights | undefined)[] = kept.map(() => undefined);
  const totals = kept.map((e) => new Float64Array(w).fill(freq[e]));
  const touched = kept.map(() => new Uint8Array(w));
  let recombined = 0;
  for (const d of dropped) {
    if (!(freq[d] > 0) || threshold === Infinity) continue;
    const seg = loadExpert(reader, arch, layer, d);
    const sv = neuronVectors(seg, w, h);
    const cand = candidates(router, h, kept, d);
    // best[j]: the kept expert (index into kept), its neuron and the compatibility and sign of segment j's match
    const best = [...Array(w)].map(() => ({ k: -1, i: -1, c: -Infinity, sign: 1 }));
    for (const k of cand) {
      const cg = await be.linear(sv.gate, keptV[k].gate, w, h, w);
      const cud = await be.linear(sv.ud, keptV[k].ud, w, 2 * h, w);
      for (let j = 0; j < w; j++)
        for (let i = 0; i < w; i++) {
          const u = cud[j * w + i];
          const c = 0.5 * (sg * cg[j * w + i] + sud * (flip ? Math.abs(u) : u));
          if (c > best[j].c) best[j] = { k, i, c, sign: flip && u < 0 ? -1 : 1 };
        }
    }
    for (let j = 0; j < w; j++) {
      const { k, i, c, sign } = best[j];
      if (k < 0 || !(c >= threshold)) continue;
      const sum = (sums[k] ??= initialSum(keptW[k], freq[kept[k]]));
      addNeuron(sum, seg, j, i, freq[d], sign, w, h);
      totals[k][i] += freq[d];
      touched[k][i] = 1;
      recombined++;
    }
  }
  const experts = sums.map((s, k) => (s ? finish(s, keptW[k], totals[k], touched[k], w, h) : undefined));
  return { experts, recombined, segments: dropped.length * w };
}

/** f_k × the kept expert, the start of its sums (the down bias is the kept expert's and stays as it is). */
function initialSum(e: ExpertWeights, f: number): ExpertWeights {
  const scale = (x: Float32Array) => Float32Array.from(x, (v) => v * f);
  const out: ExpertWeights = { gate: scale(e.gate), up: scale(e.up), down: scale(e.down) };
  if (e.bias) out.bias = { gate: scale(e.bias.gate), up: scale(e.bias.up), down: Float32Array.from(e.bias.down) };
  return out;
}

/** sum's neuron i += f × segment j of `seg` (up row and down column times `sign`). */
function addNeuron(
  sum: ExpertWeights,
  seg: ExpertWeights,
  j: number,
  i: number,
  f: number,
  sign: number,
  w: number,
  h: number,
): void {
  for (let c = 0; c < h; c++) {
    sum.gate[i * h + c] += f * seg.gate[j * h + c];
    sum.up[i * h + c] += f * sign * seg.up[j * h + c];
    sum.down[c * w + i] += f * sign * seg.down[c * w + j];
  }
  if (sum.bias && seg.bias) {
    sum.bias.gate[i] += f * seg.bias.gate[j];
    sum.bias.up[i] += f * sign * seg.bias.up[j];
  }
}

/** The sums divided by each neuron's total weight; a neuron that received nothing is the kept expert's, bit-exact. */
function finish(
  s: ExpertWeights,
  kept: ExpertWeights,
  totals: Float64Array,
  touched: Uint8Array,
  w: number,
  h: number,
): ExpertWeights {
  for (let i = 0; i < w; i++) {
    if (!touched[i]) {
      s.gate.set(kept.gate.subarray(i * h, (i + 1) * h), i * h);
      s.up.set(kept.up.subarray(i * h, (i + 1) * h), i * h);
      for (let c = 0; c < h; c++) s.down[c * w + i] = kept.down[c * w + i];
      if (s.bias && kept.bias) {
        s.bias.gate[i] = kept.bias.gate[i];
        s.bias.up[i] = kept.bias.up[i];
      }
      continue;
    }
    const inv = 1 / totals[i];
    for (let c = 0; c < h; c++) {
      s.gate[i * h + c] *= inv;
      s.up[i * h + c] *= inv;
      s.down[c * w + i] *= inv;
    }
    if (s.bias) {
      s.bias.gate[i] *= inv;
      s.bias.up[i] *= inv;
    }
  }
  return s;
}
