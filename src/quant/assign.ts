/**
 * Bits per allocation group from a cost table, under a budget of average bits per parameter met over the whole
 * model or in every scope (layer): the step between measuring and writing, for moe quantize and its GGUF export.
 * Pure (its result depends on its arguments only); the LP itself is src/quant/allocate.ts.
 */
import { allocate, AllocResult } from './allocate';

export interface BitGroup {
  key: string;
  params: number;
  /** Groups of one scope share a budget when the budget is per scope. */
  scope: number;
  /** Bits per parameter fixed for this group (taken out of the budget), or: */
  fixed?: number;
  /** The measured cost at each choice (index into the choices); undefined where the choice is not allowed. */
  cost?: (number | undefined)[];
}

export interface SolverSummary {
  status: string;
  method: string;
  seconds: number;
  objective: number;
  bound: number;
  gap: number;
  problems: number;
}

export type Assignment =
  | {
      ok: true;
      /** Group key → index into the choices (-1 for a fixed group). */ choice: Map<string, number>;
      solver: SolverSummary | null;
    }
  | {
      ok: false;
      /** The groups of the scope no choice fits, and the least average bits they allow. */ scope: BitGroup[];
      least: number;
    };

/** Each free group's choice, the fixed groups' bits counted against `average`·params of their scope. */
export async function assignBits(
  choices: number[],
  groups: BitGroup[],
  average: number,
  perScope: boolean,
): Promise<Assignment> {
  const scopes = perScope
    ? [...new Set(groups.map((g) => g.scope))].map((s) => groups.filter((g) => g.scope === s))
    : [groups];
  const choice = new Map<string, number>();
  const results: AllocResult[] = [];
  for (const scoped of scopes) {
    let budget = average * scoped.reduce((s, g) => s + g.params, 0);
    for (const g of scoped) {
      if (g.fixed === undefined) continue;
      choice.set(g.key, -1);
      budget -= g.fixed * g.params;
    }
    const free = scoped.filter((g) => g.fixed === undefined);
    if (free.length === 0) continue;
    const problem = free.map((g) => ({
      params: g.params,
      cost: choices.map((_, i) => g.cost![i] ?? 0),
      allowed: choices.map((_, i) => g.cost![i] !== undefined),
    }));
    const r = await allocate({ choices, groups: problem, budgetBits: budget });
    if (r.status === 'infeasible') return { ok: false, scope: scoped, least: leastAverage(choices, scoped) };
    free.forEach((g, i) => choice.set(g.key, r.choice[i]));
    results.push(r);
  }
  return { ok: true, choice, solver: summarize(results) };
}

function leastAverage(choices: number[], groups: BitGroup[]): number {
  const least = (g: BitGroup) => g.fixed ?? Math.min(...choices.filter((_, i) => g.cost![i] !== undefined));
  return groups.reduce((s, g) => s + least(g) * g.params, 0) / groups.reduce((s, g) => s + g.params, 0);
}

/** One summary of the problems solved (one per scope). */
function summarize(results: AllocResult[]): SolverSummary | null {
  if (!results.length) return null;
  const objective = results.reduce((s, r) => s + r.objective, 0);
  const bound = results.reduce((s, r) => s + r.bound, 0);
  return {
    status: results.every((r) => r.status === 'optimal') ? 'optimal' : 'feasible',
    method: [...new Set(results.map((r) => r.method))].join('+'),
    seconds: results.reduce((s, r) => s + r.seconds, 0),
    objective,
    bound,
    gap: objective > 0 ? Math.max(0, (objective - bound) / objective) : 0,
    problems: results.length,
  };
}
