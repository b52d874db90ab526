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
import type { Architecture, DynamicRouting, RoutingRule } from './arch';

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

/**
 * A view of `arch` whose routing drops experts token by token after its own top-k (RoutingRule.dynamic: --top-p and
 * --skip-ratio); the same object when neither is given. `count` receives the tokens routed and the experts kept.
 */
export function withDynamicRouting<A extends Architecture>(
  arch: A,
  d: { topP?: number; skipRatio?: number },
  count?: DynamicRouting['count'],
): A {
  if (d.topP === undefined && d.skipRatio === undefined) return arch;
  if (d.topP !== undefined && !(d.topP > 0 && d.topP <= 1))
    throw new UsageError(`--top-p ${d.topP} must be in (0, 1]`, { hint: 'e.g. --top-p 0.7' });
  if (d.skipRatio !== undefined && !(d.skipRatio >= 0 && d.skipRatio <= 1))
    throw new UsageError(`--skip-ratio ${d.skipRatio} must be in [0, 1]`, { hint: 'e.g. --skip-ratio 0.3' });
  const dynamic: DynamicRouting = { topP: d.topP, skipRatio: d.skipRatio, count };
  return Object.create(arch, {
    routing: {
      get(this: A): RoutingRule {
        return { ...(Reflect.get(arch, 'routing', this) as RoutingRule), dynamic };
      },
    },
  }) as A;
}
