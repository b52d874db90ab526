/** Parameter counts of a checkpoint by role, as `moe inspect` counts them (a fused tensor's per-expert views once). */
import type { Checkpoint } from '../io/checkpoint';
import { numel } from '../io/safetensors';
import type { Architecture } from './arch';

export function paramCounts(ckpt: Checkpoint, arch: Architecture): { total: number; experts: number } {
  let [total, experts] = [0, 0];
  const seen = new Set<string>();
  for (const view of ckpt.tensors.values()) {
    const t = view.view?.source ?? view;
    if (seen.has(t.name)) continue;
    seen.add(t.name);
    const n = numel(t.shape);
    total += n;
    const role = arch.classify(view.name);
    if (role?.kind === 'expert' || role?.kind === 'expert_bias') experts += n;
  }
  return { total, experts };
}
