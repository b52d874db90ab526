/**
 * The parameters and steps the built-in merge methods share (methods.ts, anchored.ts): similarity by the
 * `similarity` parameter, the (aligned when `align`) weighted average, the router row by `router`, and the optional
 * least-squares output refit (refit.ts). The numeric modules load on first use: the command line reads the
 * registry at start-up.
 */
import type { Linkage } from './grouping';
import { MergeMethod, MergeParamDef, Similarity, SIMILARITIES } from './method';

export const ROUTER_MODES = ['dominant', 'weighted'] as const;
export type RouterMode = (typeof ROUTER_MODES)[number];
export const LINKAGES: readonly Linkage[] = ['single', 'complete', 'average'];

export const similarityParam = (dflt: Similarity): MergeParamDef => ({
  name: 'similarity',
  type: 'choice',
  choices: SIMILARITIES,
  default: dflt,
  description: 'expert similarity the groups are built from',
});
export const alignParam = (dflt: boolean): MergeParamDef => ({
  name: 'align',
  type: 'boolean',
  default: dflt,
  description: 'neuron alignment before averaging',
});
export const routerParam = (dflt: RouterMode): MergeParamDef => ({
  name: 'router',
  type: 'choice',
  choices: ROUTER_MODES,
  default: dflt,
  description: "router row per merged expert: the dominant expert's or the frequency-weighted mean",
});
/** The least-squares output refit of refit.ts, after the merge, and its ridge. */
export const refitParams = (dflt: boolean): MergeParamDef[] => [
  {
    name: 'refit',
    type: 'boolean',
    default: dflt,
    description: "least-squares refit of the merged experts' down projections to the layer's calibrated output",
  },
  {
    name: 'refit-ridge',
    type: 'number',
    min: 0,
    default: 0.1,
    description: 'refit ridge λ as a share of the mean diagonal of the activation Gram (pulls toward the merge)',
  },
];
export const linkageParam: MergeParamDef = {
  name: 'linkage',
  type: 'choice',
  choices: LINKAGES,
  default: 'average',
  description: 'hcsmoe linkage',
};

/** The steps msmoe, hcsmoe, average and anchored share. */
export const shared: Pick<
  MergeMethod,
  'similarity' | 'readsExperts' | 'merge' | 'routerWeights' | 'refines' | 'refineLayer'
> = {
  similarity: async (input, p) => (await import('./similarity')).expertSimilarity(p.similarity as Similarity, input),
  readsExperts: (p) => p.similarity !== 'router-logits',
  merge: async (group, input, p) => (await import('./average')).averageExperts(group, input, p.align === true),
  routerWeights: (group, p) => (p.router === 'weighted' ? group.weights : undefined),
  refines: (p) => p.refit === true,
  refineLayer: async (experts, router, input, p) =>
    (await import('./refit')).refitLayer(experts, router, input, p['refit-ridge'] as number),
};
