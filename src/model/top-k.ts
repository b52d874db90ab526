/**
 * `moe eval --top-k K`: the model run with K routed experts per token in place of its configured
 * num_experts_per_tok, to measure what fewer (or more) active experts cost ("Harder Tasks Need More Experts:
 * Dynamic Routing in MoE Models", Huang et al., ACL 2024, and NAEE's dynamic skipping, Lu et al., ACL 2024, study
 * fewer experts per token; a fixed K is the simplest such rule). Every architecture's routing rule reads its k from
 * `topK`, so the view below changes only how many experts are selected: the scoring, the renormalisation
 * (norm_topk_prob), the scaling factor and the group limiting stay the model's own. Under DeepSeek-style
 * group-limited routing only topk_group × (E / n_group) experts are candidates, which bounds K.
 */
import { UsageError } from '../errors';
import type { Architecture } from './arch';

/** The largest K the routing can select: every expert, or the experts of the kept groups. */
export function maxTopK(arch: Architecture): number {
  const r = arch.routing;
  return r.nGroup > 1 ? r.topkGroup * (arch.numExperts / r.nGroup) : arch.numExperts;
}

/** A view of `arch` that selects k experts per token (the same object when k is the model's own or undefined). */
export function withTopK<A extends Architecture>(arch: A, k: number | undefined, flag = '--top-k'): A {
  if (k === undefined || k === arch.topK) return arch;
  const max = maxTopK(arch);
  if (!Number.isInteger(k) || k < 1 || k > max) {
    const r = arch.routing;
    const why =
      r.nGroup > 1
        ? `its group-limited routing selects from ${r.topkGroup} of ${r.nGroup} groups of ${arch.numExperts / r.nGroup} experts`
        : `it has ${arch.numExperts} routed experts`;
    throw new UsageError(`${flag} ${k} is not possible for this ${arch.modelType} model: ${why}`, {
      hint: `pass ${flag} between 1 and ${max} (the model's own is ${arch.topK})`,
    });
  }
  return Object.create(arch, { topK: { value: k, enumerable: true } }) as A;
}
