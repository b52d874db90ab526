/**
 * Choosing which experts to keep in one layer, under the constraints every method shares: protected (super)
 * experts are always kept, and with DeepSeek's group-limited routing each group keeps the same number of
 * experts (groups are contiguous ranges of experts, so an uneven cut would change what a group is).
 */
import { UsageError } from '../errors';

export interface KeepConstraints {
  experts: number;
  keep: number;
  /** Number of contiguous routing groups (1 when routing is not grouped). */
  groups: number;
  protect: ReadonlySet<number>;
}

export function groupOf(e: number, c: KeepConstraints): number {
  return Math.floor(e / (c.experts / c.groups));
}

export function checkConstraints(c: KeepConstraints, layer: number): void {
  const perGroup = c.keep / c.groups;
  for (let g = 0; g < c.groups; g++) {
    const p = [...c.protect].filter((e) => groupOf(e, c) === g).length;
    if (p > perGroup) {
      throw new UsageError(
        `layer ${layer}: ${p} protected super experts in routing group ${g}, but only ${perGroup} experts per group are kept`,
        {
          hint: 'keep more experts, or drop --protect-super-experts',
        },
      );
    }
  }
}

/** The `keep` best experts by score (higher is better; ties to the lower id), protected first, per group. */
export function topByScore(scores: ArrayLike<number>, c: KeepConstraints): number[] {
  const perGroup = c.keep / c.groups;
  const kept: number[] = [];
  for (let g = 0; g < c.groups; g++) {
    const members = [...Array(c.experts).keys()].filter((e) => groupOf(e, c) === g);
    const ranked = members.sort(
      (a, b) => Number(c.protect.has(b)) - Number(c.protect.has(a)) || scores[b] - scores[a] || a - b,
    );
    kept.push(...ranked.slice(0, perGroup));
  }
  return kept.sort((a, b) => a - b);
}

function binomial(n: number, k: number): number {
  if (k < 0 || k > n) return 0;
  let r = 1;
  for (let i = 1; i <= k; i++) r = (r * (n - k + i)) / i;
  return Math.round(r);
}

/** How many keep-sets satisfy the constraints. */
export function countKeepSets(c: KeepConstraints): number {
  const perGroup = c.keep / c.groups;
  let total = 1;
  for (let g = 0; g < c.groups; g++) {
    const members = [...Array(c.experts).keys()].filter((e) => groupOf(e, c) === g);
    const p = members.filter((e) => c.protect.has(e)).length;
    total *= binomial(members.length - p, perGroup - p);
  }
  return total;
}

function* combinations(items: number[], k: number, start = 0, prefix: number[] = []): Generator<number[]> {
  if (prefix.length === k) {
    yield prefix.slice();
    return;
  }
  for (let i = start; i <= items.length - (k - prefix.length); i++) {
    prefix.push(items[i]);
    yield* combinations(items, k, i + 1, prefix);
    prefix.pop();
  }
}

/** Every keep-set satisfying the constraints (sorted ids). */
export function* keepSets(c: KeepConstraints): Generator<number[]> {
  const perGroup = c.keep / c.groups;
  const perGroupSets: number[][][] = [];
  for (let g = 0; g < c.groups; g++) {
    const members = [...Array(c.experts).keys()].filter((e) => groupOf(e, c) === g);
    const fixed = members.filter((e) => c.protect.has(e));
    const free = members.filter((e) => !c.protect.has(e));
    perGroupSets.push([...combinations(free, perGroup - fixed.length)].map((s) => [...fixed, ...s]));
  }
  function* product(g: number, acc: number[]): Generator<number[]> {
    if (g === c.groups) {
      yield acc.slice().sort((a, b) => a - b);
      return;
    }
    for (const s of perGroupSets[g]) yield* product(g + 1, [...acc, ...s]);
  }
  yield* product(0, []);
}

/** Drops one expert at a time, the one whose removal costs least, until `keep` remain. */
export function greedyKeep(
  c: KeepConstraints,
  loss: (keep: number[]) => number,
): { kept: number[]; loss: number; evaluated: number } {
  let kept = [...Array(c.experts).keys()];
  const perGroup = c.keep / c.groups;
  let best = loss(kept);
  let evaluated = 1;
  while (kept.length > c.keep) {
    let choice: { kept: number[]; loss: number } | undefined;
    for (const drop of kept) {
      if (c.protect.has(drop)) continue;
      const g = groupOf(drop, c);
      if (kept.filter((e) => groupOf(e, c) === g).length <= perGroup) continue;
      const candidate = kept.filter((e) => e !== drop);
      const l = loss(candidate);
      evaluated++;
      if (!choice || l < choice.loss) choice = { kept: candidate, loss: l };
    }
    kept = choice!.kept;
    best = choice!.loss;
  }
  return { kept, loss: best, evaluated };
}
