/**
 * anchored: a merge anchored on REAP's choice (Lasby et al., 2025, "REAP the Experts: Why Pruning Prevails for
 * One-Shot MoE Compression"). REAP argues that merging loses to pruning because it takes from the router its
 * independent control over the merged experts ("functional subspace collapse") and because frequency-chosen
 * dominants are not the experts that matter most; so here
 *  - the dominant experts are REAP's kept set: the K largest REAP saliencies S_e = mean over e's tokens of
 *    g_e(x)·‖E_e(x)‖ (per DeepSeek routing group, as prune --method reap), and every other expert joins the
 *    dominant it is most similar to (M-SMoE's assignment, Li et al., ICLR 2024);
 *  - member weights are dominant-heavy: w_d = α (--dominant-weight) and the others share 1 − α in proportion to
 *    their REAP saliency, θ = α·θ_d + (1 − α)·Σ_m (S_m / Σ S)·θ_m after M-SMoE's neuron alignment. α = 1 is exactly
 *    `moe prune --method reap` (written byte for byte the same), α = frequency share is M-SMoE's weighting;
 *  - optionally (--refit on) the down projections are refitted by least squares to the layer's calibrated output
 *    (refit.ts, MergeMoE-style), which also accounts for the dropped experts' tokens being re-routed.
 */
import { loadExpert } from '../model/experts';
import { msmoeGroups } from './grouping';
import type { GroupingInput, MergeMethod } from './method';
import { alignParam, refitParams, routerParam, shared, similarityParam } from './steps';

/** The dominant weight α and the rest split by REAP saliency (uniformly when the others have none). */
export function anchoredWeights(reap: ArrayLike<number>, members: number[], alpha: number): number[] {
  if (members.length === 1) return [1];
  const rest = members.slice(1).map((e) => Math.max(0, reap[e]));
  const total = rest.reduce((s, x) => s + x, 0);
  return [alpha, ...rest.map((x) => (1 - alpha) * (total > 0 ? x / total : 1 / rest.length))];
}

export const anchored: MergeMethod = {
  ...shared,
  name: 'anchored',
  summary: "REAP-anchored merge: REAP's kept experts as dominants, dominant-heavy saliency weights, optional refit",
  paper: 'Lasby et al., 2025, "REAP the Experts" (selection); Li et al., ICLR 2024, "Merge, then Compress" (merge)',
  parameters: [
    similarityParam('expert-output'),
    alignParam(true),
    routerParam('dominant'),
    {
      name: 'dominant-weight',
      type: 'number',
      min: 0,
      max: 1,
      default: 0.9,
      description: "the dominant expert's weight α in its group's merge (1: the REAP prune)",
    },
    ...refitParams(false),
  ],
  groups: (g: GroupingInput) => msmoeGroups(g.reap, g.sim, g.E, g.keep, g.routingGroups),
  weights: (_freq, group, p, g) => anchoredWeights(g.reap, group.members, p['dominant-weight'] as number),
  // With every other weight 0 the merge is the dominant itself (not 1·θ_d + 0·θ_m, whose −0 would become +0).
  merge: async (group, input, p) =>
    group.weights.slice(1).every((w) => w === 0)
      ? { expert: loadExpert(input.reader, input.arch, input.layer, group.dominant) }
      : shared.merge(group, input, p),
};
