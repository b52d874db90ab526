/**
 * The merge of a group into one expert as M-SMoE and HC-SMoE do it: the weighted average of the members, each
 * member's neurons first aligned to the dominant expert's (align.ts) when `align` is on.
 */
import type { Proj } from '../model/arch';
import { ExpertWeights, loadExpert } from '../model/experts';
import { alignExperts, permuteExpert } from './align';
import type { AlignmentRecord, GroupInput, MergedGroup, MergeResult } from './method';

export async function averageExperts(g: MergedGroup, input: GroupInput, align: boolean): Promise<MergeResult> {
  const { reader, arch, layer, be } = input;
  const h = arch.hidden;
  const width = arch.expertWidth;
  const dominant = loadExpert(reader, arch, layer, g.dominant);
  const sum: ExpertWeights = {
    gate: new Float32Array(dominant.gate.length),
    up: new Float32Array(dominant.up.length),
    down: new Float32Array(dominant.down.length),
  };
  // Biases merge like the weights: the same member weights, after the same alignment.
  if (dominant.bias) {
    const b = dominant.bias;
    sum.bias = {
      gate: new Float32Array(b.gate.length),
      up: new Float32Array(b.up.length),
      down: new Float32Array(b.down.length),
    };
  }
  const alignment: AlignmentRecord[] = [];
  for (let m = 0; m < g.members.length; m++) {
    let w = m === 0 ? dominant : loadExpert(reader, arch, layer, g.members[m]);
    if (m > 0 && align) {
      const a = await alignExperts(be, dominant, w, width, h, input.seed);
      const record = { member: g.members[m], method: a.method, score_before: a.scoreBefore, score_after: a.scoreAfter };
      alignment.push(record);
      w = permuteExpert(w, a.perm, width, h);
    }
    for (const p of ['gate', 'up', 'down'] as Proj[]) {
      for (let j = 0; j < sum[p].length; j++) sum[p][j] += g.weights[m] * w[p][j];
      const [sb, wb] = [sum.bias?.[p], w.bias?.[p]];
      if (sb && wb) for (let j = 0; j < sb.length; j++) sb[j] += g.weights[m] * wb[j];
    }
  }
  return { expert: sum, alignment };
}
