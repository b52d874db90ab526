/**
 * Expert-merging methods: the registry (registerMergeMethod) and the built-in methods. What a method declares
 * and implements is in method.ts.
 *  - msmoe: M-SMoE (Li et al., ICLR 2024, "Merge, then Compress"): dominant experts by frequency, members by
 *    similarity, neurons aligned, frequency-weighted average.
 *  - hcsmoe: HC-SMoE (Chen et al., 2024): hierarchical clustering of expert outputs, frequency-weighted average
 *    of aligned experts.
 *  - average: M-SMoE's groups, plain uniform average, no alignment (a baseline).
 */
import { hierarchicalGroups, Linkage, memberWeights, msmoeGroups } from './grouping';
import type { MergeMethod, MergeParams } from './method';
import { alignParam, linkageParam, refitParams, routerParam, shared, similarityParam } from './steps';
import { Registry } from '../util/registry';
import { anchored } from './anchored';

export type { Similarity } from './method';

export { LINKAGES, ROUTER_MODES } from './steps';
export type { RouterMode } from './steps';

const msmoe: MergeMethod = {
  ...shared,
  name: 'msmoe',
  summary: 'M-SMoE: dominant experts, aligned frequency-weighted merge',
  paper: 'Li et al., ICLR 2024, "Merge, then Compress"',
  // The paper's default similarity is router logits; on the trained fixture, grouping by expert outputs on
  // common inputs measured better (bench/compression-table.js), so that is the default here.
  parameters: [similarityParam('expert-output'), alignParam(true), routerParam('dominant'), ...refitParams(false)],
  groups: (g) => msmoeGroups(g.freq, g.sim, g.E, g.keep, g.routingGroups),
  weights: (freq, group) => memberWeights(freq, group.members),
};

const hcsmoe: MergeMethod = {
  ...shared,
  name: 'hcsmoe',
  summary: 'HC-SMoE: hierarchical clustering of expert outputs, frequency-weighted merge',
  paper: 'Chen et al., 2024, "Retraining-Free Merging of Sparse MoE via Hierarchical Clustering"',
  // Alignment is optional in HC-SMoE; measured on the trained fixture it lowers perplexity a lot, so it is on.
  parameters: [
    similarityParam('expert-output'),
    linkageParam,
    alignParam(true),
    routerParam('weighted'),
    ...refitParams(false),
  ],
  groups: (g, p: MergeParams) => hierarchicalGroups(g.freq, g.sim, g.E, g.keep, p.linkage as Linkage, g.routingGroups),
  weights: (freq, group) => memberWeights(freq, group.members),
};

const average: MergeMethod = {
  ...shared,
  name: 'average',
  summary: 'uniform average of M-SMoE groups (baseline)',
  parameters: [similarityParam('router-logits'), alignParam(false), routerParam('dominant')],
  groups: (g) => msmoeGroups(g.freq, g.sim, g.E, g.keep, g.routingGroups),
  weights: (freq, group) => memberWeights(freq, group.members, true),
};

/** Every registered merge method, the built-ins first, by name. */
const REGISTRY = new Registry<MergeMethod>('merge method', (m) => m.name);

/** Adds a merge method: `moe merge --method <name>` accepts it from then on (one file and this one call). */
export function registerMergeMethod(method: MergeMethod): void {
  REGISTRY.register(method);
}

export function mergeMethod(name: string): MergeMethod | undefined {
  return REGISTRY.get(name);
}

/** The registered methods' names in registration order: the --method choices. */
export function mergeMethodNames(): string[] {
  return REGISTRY.keys();
}

for (const m of [msmoe, hcsmoe, average]) registerMergeMethod(m);
// After the built-ins (anchored.ts reuses their shared steps).
registerMergeMethod(anchored);
