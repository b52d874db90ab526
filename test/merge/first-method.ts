/**
 * A merge method defined outside src (the one-file rule): "first" groups the experts as M-SMoE does (by router
 * logits or weights) and keeps each group's most frequent expert unchanged, with its router row.
 */
import { msmoeGroups } from '../../src/merge/grouping';
import type { MergeMethod, Similarity } from '../../src/merge/method';
import { expertSimilarity } from '../../src/merge/similarity';
import { loadExpert } from '../../src/model/experts';

export const first: MergeMethod = {
  name: 'first',
  summary: 'keeps the most frequent expert of each M-SMoE group unchanged',
  parameters: [
    {
      name: 'similarity',
      type: 'choice',
      choices: ['router-logits', 'weights'],
      default: 'router-logits',
      description: 'what the groups are built from',
    },
  ],
  similarity: (input, p) => expertSimilarity(p.similarity as Similarity, input),
  readsExperts: (p) => p.similarity === 'weights',
  groups: (g) => msmoeGroups(g.freq, g.sim, g.E, g.keep, g.routingGroups),
  weights: (_freq, group) => group.members.map((_, m) => (m === 0 ? 1 : 0)),
  merge: async (group, input) => ({ expert: loadExpert(input.reader, input.arch, input.layer, group.dominant) }),
  routerWeights: () => undefined,
};
