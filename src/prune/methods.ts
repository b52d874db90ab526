/**
 * Expert-pruning methods: a registry (registerPruneMethod) with the built-in methods. Each picks the experts one
 * MoE layer keeps, from the calibration stats (and, for NAEE, the reconstruction loss on the calibrated MoE-block
 * samples).
 *  - frequency: how often an expert is among a token's top-k (its share of routed tokens).
 *  - soft-frequency: its mean router probability over all tokens.
 *  - reap: REAP (Lasby et al., 2025, "REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression"):
 *    S_j = mean over tokens routed to j of g_j(x)·‖f_j(x)‖₂.
 *  - naee: NAEE (Lu et al., 2024, "Not All Experts are Equal"): the subset with the least reconstruction loss,
 *    by enumeration when there are few subsets, else greedily.
 *  - dern: DERN (Zhou et al., EMNLP 2025): REAP's selection, then the dropped experts' neurons recombined into the
 *    kept experts (dern.ts; any method does this with --recombine).
 *  - random: a seeded baseline.
 */
import type { CalibrationStats } from '../calib/stats';
import { Registry } from '../util/registry';
import { mulberry32 } from '../util/random';
import type { ReconstructionProblem } from './reconstruct';
import { countKeepSets, greedyKeep, keepSets, KeepConstraints, topByScore } from './select';

export interface PruneContext {
  stats: CalibrationStats;
  seed: number;
  /** Subsets beyond which NAEE searches greedily. */
  naeeLimit: number;
  problem(layer: number): Promise<ReconstructionProblem>;
}

export interface LayerChoice {
  kept: number[];
  /** Per-expert score (higher is kept first), where the method has one. */
  scores?: number[];
  search: 'score' | 'exhaustive' | 'greedy' | 'random';
  /** Subsets whose loss was evaluated (NAEE). */
  evaluated?: number;
}

export interface PruneMethod {
  name: string;
  title: string;
  paper?: string;
  /** The method recombines the dropped experts' neurons into the kept ones (src/prune/dern.ts) after selecting. */
  recombines?: boolean;
  select(layer: number, c: KeepConstraints, ctx: PruneContext): Promise<LayerChoice>;
}

function byScore(
  name: string,
  title: string,
  paper: string | undefined,
  score: (stats: CalibrationStats, layer: number) => ArrayLike<number>,
): PruneMethod {
  return {
    name,
    title,
    paper,
    async select(layer, c, ctx) {
      const scores = Array.from(score(ctx.stats, layer));
      return { kept: topByScore(scores, c), scores, search: 'score' };
    },
  };
}

const DERN_PAPER = 'Zhou et al., EMNLP 2025, "Dropping Experts, Recombining Neurons"';

const BUILT_IN: PruneMethod[] = [
  byScore('frequency', 'routing frequency', undefined, (s, l) => s.vector(l, 'count')),
  byScore('soft-frequency', 'mean router probability', undefined, (s, l) => s.vector(l, 'soft_freq')),
  byScore('reap', 'REAP saliency', 'Lasby et al., 2025, "REAP the Experts"', (s, l) => s.vector(l, 'reap')),
  {
    name: 'naee',
    title: 'NAEE reconstruction-loss search',
    paper: 'Lu et al., ACL 2024, "Not All Experts are Equal"',
    async select(layer, c, ctx) {
      const problem = await ctx.problem(layer);
      const total = countKeepSets(c);
      if (total <= ctx.naeeLimit) {
        let best: { kept: number[]; loss: number } | undefined;
        for (const kept of keepSets(c)) {
          const loss = problem.loss(kept);
          if (!best || loss < best.loss) best = { kept, loss };
        }
        return { kept: best!.kept, search: 'exhaustive', evaluated: total };
      }
      const g = greedyKeep(c, (kept) => problem.loss(kept));
      return { kept: g.kept.sort((a, b) => a - b), search: 'greedy', evaluated: g.evaluated };
    },
  },
  {
    ...byScore('dern', 'REAP selection, then DERN neuron recombination', DERN_PAPER, (s, l) => s.vector(l, 'reap')),
    recombines: true,
  },
  {
    name: 'random',
    title: 'random (seeded baseline)',
    async select(layer, c, ctx) {
      // Loaded on first use: the command line reads this registry at start-up.
      const rand = mulberry32(ctx.seed * 7919 + layer);
      const scores = [...Array(c.experts)].map(() => rand());
      return { kept: topByScore(scores, c), search: 'random' };
    },
  },
];

/** Every registered pruning method, the built-ins first, by name. */
const REGISTRY = new Registry<PruneMethod>('prune method', (m) => m.name);

/** Adds a pruning method: `moe prune --method <name>` accepts it from then on (one file and this one call). */
export function registerPruneMethod(method: PruneMethod): void {
  REGISTRY.register(method);
}

export function pruneMethod(name: string): PruneMethod | undefined {
  return REGISTRY.get(name);
}

/** The registered methods' names in registration order: the --method choices. */
export function pruneMethodNames(): string[] {
  return REGISTRY.keys();
}

for (const m of BUILT_IN) registerPruneMethod(m);
