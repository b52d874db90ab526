/**
 * The bit allocator (MC-MoE's integer program): optimal against brute force on small problems, the LP bound below
 * every integer solution, masks, infeasibility and determinism; and the large-problem path within its reported gap.
 */
import { allocate, AllocGroup } from '../../src/quant/allocate';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

const CHOICES = [2, 3, 4, 8];

/** MC-MoE-like costs: error ∝ 4^−b, a log-normal scale per group, Zipf-like expert frequencies; a few param sizes. */
function problem(G: number, seed: number, sizes = [3, 4, 6]): AllocGroup[] {
  const r = rng(seed);
  return Array.from({ length: G }, (_, g) => {
    const scale = Math.exp((r() - 0.5) * 3) / Math.pow(1 + (g % 64), 1.1);
    return {
      params: sizes[Math.floor(r() * sizes.length)] * 1000,
      cost: CHOICES.map((b) => scale * Math.pow(4, -b) * (1 + 0.5 * r())),
    };
  });
}

function brute(groups: AllocGroup[], budget: number): number {
  let best = Infinity;
  const pick = new Array(groups.length).fill(0);
  const rec = (g: number, bits: number, cost: number) => {
    if (bits > budget + 1e-9) return;
    if (g === groups.length) {
      best = Math.min(best, cost);
      return;
    }
    for (let c = 0; c < CHOICES.length; c++) {
      if (groups[g].allowed && !groups[g].allowed![c]) continue;
      pick[g] = c;
      rec(g + 1, bits + CHOICES[c] * groups[g].params, cost + groups[g].cost[c]);
    }
  };
  rec(0, 0, 0);
  return best;
}

describe('bit allocation', () => {
  test('small problems: the optimum of brute-force enumeration, within budget, with a valid bound', async () => {
    for (let seed = 1; seed <= 40; seed++) {
      const r = rng(seed * 97);
      const groups = problem(4 + (seed % 6), seed);
      if (seed % 3 === 0) groups.forEach((g, i) => (g.allowed = CHOICES.map((b) => (i % 2 ? b >= 3 : true))));
      const params = groups.reduce((s, g) => s + g.params, 0);
      const budget = (2.2 + 2 * r()) * params;
      const res = await allocate({ choices: CHOICES, groups, budgetBits: budget });
      const opt = brute(groups, budget);
      if (opt === Infinity) {
        expect(res.status).toBe('infeasible');
        continue;
      }
      expect(res.status).toBe('optimal');
      expect(res.bits).toBeLessThanOrEqual(budget + 1e-6);
      expect(Math.abs(res.objective - opt)).toBeLessThanOrEqual(1e-12 * Math.max(1, opt));
      expect(res.lp_bound).toBeLessThanOrEqual(opt * (1 + 1e-12));
      groups.forEach((g, i) => {
        if (g.allowed) expect(g.allowed[res.choice[i]]).toBe(true);
      });
    }
  });

  test('glpk decides when the budget units are too fine for the exact table, and the result still matches brute force', async () => {
    for (let seed = 1; seed <= 6; seed++) {
      // Co-prime, large parameter counts: the gcd of the bit counts is 1, so the DP table would be huge.
      const groups = problem(8, seed + 100).map((g, i) => ({ ...g, params: 100_000_007 + 7919 * i + seed }));
      const params = groups.reduce((s, g) => s + g.params, 0);
      const budget = 3.1 * params;
      const res = await allocate({ choices: CHOICES, groups, budgetBits: budget });
      expect(res.bits).toBeLessThanOrEqual(budget);
      expect(Math.abs(res.objective - brute(groups, budget))).toBeLessThanOrEqual(1e-12 * res.objective);
      expect(['lagrangian', 'lagrangian+glpk']).toContain(res.method);
      expect(res.status).toBe('optimal');
    }
  });

  test('infeasible and trivial budgets', async () => {
    const groups = problem(5, 3);
    const params = groups.reduce((s, g) => s + g.params, 0);
    const none = await allocate({ choices: CHOICES, groups, budgetBits: 1.9 * params });
    expect(none.status).toBe('infeasible');
    expect(none.message).toMatch(/exceed the budget/);
    const all = await allocate({ choices: CHOICES, groups, budgetBits: 8 * params });
    expect(all.status).toBe('optimal');
    expect(Array.from(all.choice)).toEqual(groups.map(() => 3));
    const masked = await allocate({
      choices: CHOICES,
      groups: groups.map((g) => ({ ...g, allowed: [false, false, false, false] })),
      budgetBits: 8 * params,
    });
    expect(masked.status).toBe('infeasible');
  });

  test('a per-layer problem of 768 groups is proven optimal, deterministically', async () => {
    const groups = problem(768, 5, [7168 * 2048]);
    const params = groups.reduce((s, g) => s + g.params, 0);
    const a = await allocate({ choices: CHOICES, groups, budgetBits: 2.7 * params });
    const b = await allocate({ choices: CHOICES, groups, budgetBits: 2.7 * params });
    expect(a.status).toBe('optimal');
    expect(a.gap).toBe(0);
    expect(a.objective).toBeGreaterThanOrEqual(a.lp_bound);
    expect(Buffer.from(a.choice.buffer).equals(Buffer.from(b.choice.buffer))).toBe(true);
    expect(a.bits).toBeLessThanOrEqual(2.7 * params);
  });

  test('a 6,000-group problem with mixed sizes: within 0.1% of the LP bound', async () => {
    const groups = problem(6000, 9, [7168 * 2048, 7168 * 1536, 512 * 7168, 1_000_003]);
    const params = groups.reduce((s, g) => s + g.params, 0);
    const res = await allocate({ choices: CHOICES, groups, budgetBits: 2.5 * params }, { timeLimitSeconds: 2 });
    expect(res.bits).toBeLessThanOrEqual(2.5 * params);
    expect(res.objective).toBeGreaterThanOrEqual(res.lp_bound * (1 - 1e-12));
    expect((res.objective - res.lp_bound) / res.objective).toBeLessThan(1e-3);
    expect(res.gap).toBeLessThan(1e-3);
  }, 30_000);
});
