/** How many experts per MoE layer prune and merge keep: K from --keep or --ratio, checked before anything is read. */
import { UsageError } from '../errors';
import type { Architecture } from '../model/arch';

/** Keeping every expert is allowed (it gives a copy of the model), but rarely what was meant. */
export function keepAllWarning(K: number, flag: string, verb: 'pruned' | 'merged'): string {
  return `${flag} keeps all ${K} experts of every MoE layer: nothing is ${verb}, the output holds the same experts as the model; lower --keep or --ratio`;
}

/** K from --keep or --ratio, checked against top-k and DeepSeek's routing groups before anything is read. */
export function resolveKeep(arch: Architecture, keep: number | undefined, ratio: number | undefined): number {
  const E = arch.numExperts;
  if ((keep === undefined) === (ratio === undefined)) throw new UsageError('give exactly one of --keep K or --ratio R');
  if (ratio !== undefined && !(ratio > 0 && ratio <= 1)) throw new UsageError(`--ratio ${ratio} must be in (0, 1]`);
  const K = keep ?? Math.round(E * ratio!);
  if (!Number.isInteger(K) || K < 1 || K > E)
    throw new UsageError(`keeping ${K} experts is impossible: the model has ${E} per MoE layer`);
  if (K < arch.topK)
    throw new UsageError(
      `keeping ${K} experts is fewer than the ${arch.topK} each token routes to (num_experts_per_tok)`,
      { hint: `keep at least ${arch.topK}` },
    );
  const r = arch.routing;
  if (r.nGroup > 1) {
    const ok = (k: number) =>
      k % r.nGroup === 0 &&
      (r.groupScore !== 'top2sum' || k / r.nGroup >= 2) &&
      r.topkGroup * (k / r.nGroup) >= arch.topK;
    if (!ok(K)) {
      let up = K;
      while (up <= E && !ok(up)) up++;
      throw new UsageError(
        `keeping ${K} experts breaks the ${r.nGroup} routing groups (n_group): each group must keep the same number${r.groupScore === 'top2sum' ? ', at least 2,' : ''} and topk_group × per-group count must reach top-k`,
        {
          hint: up <= E ? `try --keep ${up}` : 'keep more experts',
        },
      );
    }
  }
  return K;
}
