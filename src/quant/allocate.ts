/**
 * Mixed-precision bit allocation (MC-MoE, Huang et al. 2024, "Mixture Compressor for Mixture-of-Experts LLMs
 * Gains More"): binary x[g,b] per group g and bit-width b, minimise Σ x[g,b]·cost[g,b] subject to Σ_b x[g,b] = 1
 * per group and Σ x[g,b]·b·params_g ≤ budget. This is a multiple-choice knapsack with one coupling row, so:
 *
 *  1. The LP relaxation is solved exactly by the greedy over each group's lower convex hull of (bits, cost):
 *     buy upgrades in order of cost saved per bit until the budget runs out. The upgrade that does not fit is
 *     the LP's one fractional group; its rate λ* is the budget row's dual, and the LP optimum is a proven lower
 *     bound on every integer solution. The greedy without the fractional step is a feasible integer solution.
 *  2. Reduced-cost fixing: at λ*, a choice whose Lagrangian cost exceeds its group's best by more than the gap
 *     (incumbent − bound) cannot be in any better solution. Choices so ruled out are dropped; groups left with
 *     one choice are fixed.
 *  3. glpk.js solves the integer program over what is left, to proven optimality when that is small enough,
 *     else within a time limit; the reported gap is (objective − LP bound) / objective either way.
 */

/** The part of glpk.js's synchronous Node interface used here (its types need moduleResolution node16). */
interface GLPK {
  GLP_MIN: number;
  GLP_FX: number;
  GLP_UP: number;
  GLP_MSG_OFF: number;
  GLP_OPT: number;
  GLP_FEAS: number;
  GLP_NOFEAS: number;
  solve(
    lp: LP,
    options: { msglev: number; presol: boolean; tmlim: number },
  ): { result: { status: number; z: number; vars: Record<string, number> } };
}
interface LP {
  name: string;
  objective: { direction: number; name: string; vars: { name: string; coef: number }[] };
  subjectTo: { name: string; vars: { name: string; coef: number }[]; bnds: { type: number; ub: number; lb: number } }[];
  binaries: string[];
}
const GLPK_MODULE = 'glpk.js/node';

export interface AllocGroup {
  params: number;
  /** Cost per choice, in the order of AllocProblem.choices. */
  cost: ArrayLike<number>;
  /** Which choices the group may take (default: all). */
  allowed?: ArrayLike<boolean>;
}

export interface AllocProblem {
  /** Bit-widths. */
  choices: number[];
  groups: AllocGroup[];
  /** Σ b·params allowed. */
  budgetBits: number;
}

export interface AllocOptions {
  /**
   * glpk is given at most this many groups at once (default 400: groups at the margin are near-ties, much harder for
   * glpk than random ones of the same size).
   */
  exactLimit?: number;
  /** Relative gap at which the search stops (default 1e-9: proven optimal up to rounding). */
  gapTolerance?: number;
  /** glpk's time limit, seconds (default 5). */
  timeLimitSeconds?: number;
}

export interface AllocResult {
  /** Index into choices, per group. */
  choice: Int32Array;
  /** Σ b·params of the solution. */
  bits: number;
  objective: number;
  /** Proven lower bound: the objective itself when proven optimal, else the LP relaxation's optimum. */
  bound: number;
  /** The LP relaxation's optimum. */
  lp_bound: number;
  /** (objective − bound) / objective; 0 when proven optimal. */
  gap: number;
  status: 'optimal' | 'feasible' | 'infeasible';
  method: 'trivial' | 'lagrangian' | 'lagrangian+dp' | 'lagrangian+glpk';
  seconds: number;
  /** Groups the exact stage decided (the rest were fixed by the bound). */
  searched_groups: number;
  message?: string;
}

let glpkInstance: Promise<GLPK> | undefined;

/** glpk.js, loaded once (an ES module with a WebAssembly core). */
function loadGlpk(): Promise<GLPK> {
  glpkInstance ??= (import(GLPK_MODULE) as Promise<{ default: () => Promise<GLPK> }>).then((m) => m.default());
  return glpkInstance;
}

interface Prepared {
  /** Allowed choice indices per group, by increasing bits. */
  options: number[][];
  /** Bits of choice c for group g: choices[c]·params. */
  bitsOf(g: number, c: number): number;
  cost(g: number, c: number): number;
}

const EPS = 1e-12;

export async function allocate(p: AllocProblem, opts: AllocOptions = {}): Promise<AllocResult> {
  const started = Date.now();
  const G = p.groups.length;
  const C = p.choices.length;
  const order = [...Array(C).keys()].sort((a, b) => p.choices[a] - p.choices[b] || a - b);
  const options = p.groups.map((g) => order.filter((c) => (g.allowed ? g.allowed[c] : true)));
  const prep: Prepared = {
    options,
    bitsOf: (g, c) => p.choices[c] * p.groups[g].params,
    cost: (g, c) => p.groups[g].cost[c],
  };
  const done = (r: Omit<AllocResult, 'seconds' | 'bits' | 'objective' | 'gap' | 'lp_bound'>): AllocResult => {
    let bits = 0;
    let objective = 0;
    for (let g = 0; g < G; g++) {
      if (r.choice[g] < 0) continue;
      bits += prep.bitsOf(g, r.choice[g]);
      objective += prep.cost(g, r.choice[g]);
    }
    const gap = r.status === 'optimal' ? 0 : objective > 0 ? Math.max(0, (objective - r.bound) / objective) : 0;
    return {
      ...r,
      lp_bound: r.bound,
      bound: r.status === 'optimal' ? objective : r.bound,
      bits,
      objective,
      gap,
      seconds: (Date.now() - started) / 1000,
    };
  };
  const empty = options.findIndex((o) => o.length === 0);
  if (empty >= 0)
    return done({
      choice: new Int32Array(G).fill(-1),
      bound: Infinity,
      status: 'infeasible',
      method: 'trivial',
      searched_groups: 0,
      message: `group ${empty} allows no bit-width`,
    });
  let least = 0;
  for (let g = 0; g < G; g++) least += prep.bitsOf(g, options[g][0]);
  const budget = p.budgetBits;
  if (least > budget * (1 + 1e-12) + EPS) {
    return done({
      choice: new Int32Array(G).fill(-1),
      bound: Infinity,
      status: 'infeasible',
      method: 'trivial',
      searched_groups: 0,
      message: `the fewest bits allowed (${least}) exceed the budget (${budget})`,
    });
  }

  // 1. Greedy over lower convex hulls: the LP optimum and a feasible integer solution.
  const { choice, bound, lambda, broke, used, steps } = greedyHulls(prep, G, least, budget);
  if (!broke)
    return done({
      choice,
      bound,
      status: 'optimal',
      method: steps.length ? 'lagrangian' : 'trivial',
      searched_groups: 0,
    });
  // Fill what budget is left, cheapest first, with any single move that still fits (keeps feasibility).
  greedyFill(choice, prep, budget, used);
  const incumbent = choice.reduce((s, c, g) => s + prep.cost(g, c), 0);
  const tol = opts.gapTolerance ?? 1e-9;
  if (incumbent - bound <= tol * Math.max(Math.abs(incumbent), EPS))
    return done({ choice, bound, status: 'optimal', method: 'lagrangian', searched_groups: 0 });

  const exact = await exactStage(prep, choice, { bound, lambda, incumbent, budget }, opts);
  return done({
    choice,
    bound,
    status: exact.optimal ? 'optimal' : 'feasible',
    method: exact.method,
    searched_groups: exact.searched,
  });
}

/** Stage 1: the greedy over each group's lower convex hull; the LP bound, λ* and a feasible integer solution. */
function greedyHulls(prep: Prepared, G: number, least: number, budget: number) {
  const { options } = prep;
  const hulls = options.map((o, g) => hull(o, g, prep));
  const pos = new Int32Array(G); // position on the hull
  let used = least;
  let objective = 0;
  for (let g = 0; g < G; g++) objective += prep.cost(g, hulls[g][0]);
  const steps: { g: number; k: number; rate: number; dBits: number; dCost: number }[] = [];
  for (let g = 0; g < G; g++) {
    const h = hulls[g];
    for (let k = 1; k < h.length; k++) {
      const dBits = prep.bitsOf(g, h[k]) - prep.bitsOf(g, h[k - 1]);
      const dCost = prep.cost(g, h[k]) - prep.cost(g, h[k - 1]);
      steps.push({ g, k, rate: -dCost / dBits, dBits, dCost });
    }
  }
  // Hull steps of a group have decreasing rates, so this order never takes a group's step before its predecessor.
  steps.sort((a, b) => b.rate - a.rate || a.g - b.g || a.k - b.k);
  let bound = objective;
  let lambda = 0;
  let broke = false;
  for (const s of steps) {
    if (s.rate <= 0) break;
    if (used + s.dBits <= budget + EPS) {
      used += s.dBits;
      objective += s.dCost;
      pos[s.g] = s.k;
      bound = objective;
    } else {
      const frac = (budget - used) / s.dBits;
      bound = objective + frac * s.dCost;
      lambda = s.rate;
      broke = true;
      break;
    }
  }
  const choice = Int32Array.from(pos, (k, g) => hulls[g][k]);
  return { choice, bound, lambda, broke, used, steps };
}

/**
 * Stages 2 and 3: reduced-cost fixing at λ*, then the exact search (DP, else glpk) over the groups left free;
 * improves `choice` in place.
 */
async function exactStage(
  prep: Prepared,
  choice: Int32Array,
  at: { bound: number; lambda: number; incumbent: number; budget: number },
  opts: AllocOptions,
): Promise<{ optimal: boolean; method: AllocResult['method']; searched: number }> {
  const { options } = prep;
  const G = choice.length;
  const { bound, lambda, incumbent, budget } = at;
  // 2. Reduced-cost fixing at λ*: only choices within the gap of their group's best can be in a better solution.
  const gap = incumbent - bound;
  const alive: number[][] = [];
  const free: number[] = [];
  for (let g = 0; g < G; g++) {
    let best = Infinity;
    for (const c of options[g]) best = Math.min(best, prep.cost(g, c) + lambda * prep.bitsOf(g, c));
    alive.push(options[g].filter((c) => prep.cost(g, c) + lambda * prep.bitsOf(g, c) - best <= gap * (1 + 1e-9) + EPS));
    if (alive[g].length > 1) free.push(g);
  }
  // 3. glpk over the free groups; beyond exactLimit, over those nearest the margin only (then no proof).
  const fix = (subset: number[]) => {
    const inSubset = new Set(subset);
    const candidate = Int32Array.from(choice);
    let fixedBits = 0;
    for (let g = 0; g < G; g++) {
      if (inSubset.has(g)) continue;
      if (alive[g].length === 1) candidate[g] = alive[g][0];
      fixedBits += prep.bitsOf(g, candidate[g]);
    }
    return { candidate, rest: budget - fixedBits };
  };
  let subset = free;
  let proven = true;
  let method: AllocResult['method'] = 'lagrangian+dp';
  let { candidate, rest } = fix(subset);
  let sub: { choice?: number[]; status: string } | undefined = solveByDp(subset, alive, prep, rest);
  if (!sub) {
    method = 'lagrangian+glpk';
    const limit = opts.exactLimit ?? 400;
    if (free.length > limit) {
      // Too many for glpk: only the groups nearest the margin (smallest change in Lagrangian cost), then no proof.
      proven = false;
      const slack = (g: number) => {
        const cur = prep.cost(g, choice[g]) + lambda * prep.bitsOf(g, choice[g]);
        let nearest = Infinity;
        for (const c of alive[g])
          if (c !== choice[g])
            nearest = Math.min(nearest, Math.abs(prep.cost(g, c) + lambda * prep.bitsOf(g, c) - cur));
        return nearest;
      };
      subset = free
        .map((g) => ({ g, s: slack(g) }))
        .sort((a, b) => a.s - b.s || a.g - b.g)
        .slice(0, limit)
        .map((x) => x.g)
        .sort((a, b) => a - b);
      ({ candidate, rest } = fix(subset));
    }
    sub = solveSubset(await loadGlpk(), subset, alive, prep, rest, opts.timeLimitSeconds ?? 5);
  }
  let optimal = false;
  const found = sub.choice;
  if (found) {
    subset.forEach((g, i) => (candidate[g] = found[i]));
    const candCost = candidate.reduce((s, c, g) => s + prep.cost(g, c), 0);
    if (candCost < incumbent) choice.set(candidate);
    optimal = proven && sub.status === 'optimal';
  } else if (proven && sub.status === 'infeasible') {
    optimal = true; // no solution within the gap uses only surviving choices: the incumbent is optimal
  }
  return { optimal, method, searched: subset.length };
}

/** Allowed choices of group g on the lower convex hull of (bits, cost), by increasing bits, dominated ones dropped. */
function hull(options: number[], g: number, p: Prepared): number[] {
  // Drop choices that cost at least as much as one with fewer bits.
  const pts: number[] = [];
  for (const c of options) {
    if (pts.length && p.cost(g, c) >= p.cost(g, pts[pts.length - 1]) - EPS * Math.abs(p.cost(g, c))) {
      if (p.bitsOf(g, c) === p.bitsOf(g, pts[pts.length - 1]) && p.cost(g, c) < p.cost(g, pts[pts.length - 1]))
        pts[pts.length - 1] = c;
      continue;
    }
    if (pts.length && p.bitsOf(g, c) === p.bitsOf(g, pts[pts.length - 1])) {
      pts[pts.length - 1] = c;
      continue;
    }
    pts.push(c);
  }
  // Lower convex hull: slopes (negative) must increase.
  const h: number[] = [];
  for (const c of pts) {
    while (h.length >= 2) {
      const a = h[h.length - 2];
      const b = h[h.length - 1];
      const s1 = (p.cost(g, b) - p.cost(g, a)) / (p.bitsOf(g, b) - p.bitsOf(g, a));
      const s2 = (p.cost(g, c) - p.cost(g, b)) / (p.bitsOf(g, c) - p.bitsOf(g, b));
      if (s2 <= s1) h.pop();
      else break;
    }
    h.push(c);
  }
  return h;
}

/** Uses leftover budget: repeatedly applies the single move with the best cost saved per extra bit that fits. */
function greedyFill(choice: Int32Array, p: Prepared, budget: number, used: number): void {
  for (;;) {
    let best: { g: number; c: number; rate: number; dBits: number } | undefined;
    for (let g = 0; g < choice.length; g++) {
      const cur = choice[g];
      for (const c of p.options[g]) {
        const dBits = p.bitsOf(g, c) - p.bitsOf(g, cur);
        const dCost = p.cost(g, c) - p.cost(g, cur);
        if (dCost >= 0 || used + dBits > budget + EPS) continue;
        const rate = dBits > 0 ? -dCost / dBits : Infinity;
        if (!best || rate > best.rate) best = { g, c, rate, dBits };
      }
    }
    if (!best) return;
    choice[best.g] = best.c;
    used += best.dBits;
  }
}

/** Most DP cells (groups × budget units) solved exactly; beyond this glpk takes over. */
const DP_CELLS = 8_000_000;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * Exact minimum over some groups by dynamic programming on the budget, in units of the gcd of every choice's
 * extra bits over its group's fewest; undefined when that table would be too large or the sizes are not integers.
 */
function solveByDp(
  groups: number[],
  options: number[][],
  p: Prepared,
  budget: number,
): { choice?: number[]; status: 'optimal' | 'infeasible' } | undefined {
  let base = 0;
  let unit = 0;
  for (const g of groups) {
    const lo = p.bitsOf(g, options[g][0]);
    base += lo;
    for (const c of options[g]) {
      const extra = p.bitsOf(g, c) - lo;
      if (!Number.isSafeInteger(extra)) return undefined;
      unit = gcd(unit, extra);
    }
  }
  if (budget < base - EPS) return { status: 'infeasible' };
  if (unit === 0) return { choice: groups.map((g) => options[g][0]), status: 'optimal' };
  const cap = Math.floor((budget - base + EPS) / unit);
  if (!Number.isFinite(cap) || (cap + 1) * groups.length > DP_CELLS) return undefined;
  const W = cap + 1;
  let best = new Float64Array(W).fill(Infinity);
  best[0] = 0;
  const pick = new Uint8Array(groups.length * W);
  groups.forEach((g, i) => {
    const next = new Float64Array(W).fill(Infinity);
    const lo = p.bitsOf(g, options[g][0]);
    const opts = options[g].map((c, k) => ({ k, w: Math.round((p.bitsOf(g, c) - lo) / unit), cost: p.cost(g, c) }));
    for (let u = 0; u < W; u++) {
      const b = best[u];
      if (b === Infinity) continue;
      for (const o of opts) {
        const v = u + o.w;
        if (v >= W) continue;
        const x = b + o.cost;
        if (x < next[v]) {
          next[v] = x;
          pick[i * W + v] = o.k;
        }
      }
    }
    best = next;
  });
  let at = 0;
  for (let u = 1; u < W; u++) if (best[u] < best[at]) at = u;
  const choice: number[] = new Array(groups.length);
  for (let i = groups.length - 1; i >= 0; i--) {
    const g = groups[i];
    const k = pick[i * W + at];
    choice[i] = options[g][k];
    at -= Math.round((p.bitsOf(g, options[g][k]) - p.bitsOf(g, options[g][0])) / unit);
  }
  return { choice, status: 'optimal' };
}

/** The integer program over some groups (the rest fixed) with glpk; undefined when glpk finds nothing. */
function solveSubset(
  glpk: GLPK,
  groups: number[],
  options: number[][],
  p: Prepared,
  budget: number,
  tmlim: number,
): { choice?: number[]; status: 'optimal' | 'feasible' | 'infeasible' | 'unknown' } {
  if (budget < -EPS) return { status: 'infeasible' };
  if (groups.length === 0) return { choice: [], status: 'optimal' };
  // Scale costs and bits to O(1) for glpk's tolerances.
  let costScale = 0;
  let bitScale = 0;
  for (const g of groups) {
    for (const c of options[g]) {
      costScale = Math.max(costScale, Math.abs(p.cost(g, c)));
      bitScale = Math.max(bitScale, p.bitsOf(g, c));
    }
  }
  costScale ||= 1;
  bitScale ||= 1;
  const name = (i: number, c: number) => `x${i}_${c}`;
  const objective: { name: string; coef: number }[] = [];
  const budgetRow: { name: string; coef: number }[] = [];
  const rows: LP['subjectTo'] = [];
  const binaries: string[] = [];
  groups.forEach((g, i) => {
    const vars = options[g].map((c) => ({ name: name(i, c), coef: 1 }));
    rows.push({ name: `g${i}`, vars, bnds: { type: glpk.GLP_FX, lb: 1, ub: 1 } });
    for (const c of options[g]) {
      objective.push({ name: name(i, c), coef: p.cost(g, c) / costScale });
      budgetRow.push({ name: name(i, c), coef: p.bitsOf(g, c) / bitScale });
      binaries.push(name(i, c));
    }
  });
  rows.push({ name: 'budget', vars: budgetRow, bnds: { type: glpk.GLP_UP, lb: 0, ub: budget / bitScale + 1e-9 } });
  const lp: LP = {
    name: 'bits',
    objective: { direction: glpk.GLP_MIN, name: 'cost', vars: objective },
    subjectTo: rows,
    binaries,
  };
  const r = glpk.solve(lp, { msglev: glpk.GLP_MSG_OFF, presol: true, tmlim });
  const s = r.result.status;
  if (s === glpk.GLP_NOFEAS) return { status: 'infeasible' };
  if (s !== glpk.GLP_OPT && s !== glpk.GLP_FEAS) return { status: 'unknown' };
  const choice = groups.map((g, i) => {
    let pick = options[g][0];
    let best = -1;
    for (const c of options[g]) {
      const v = r.result.vars[name(i, c)];
      if (v > best) {
        best = v;
        pick = c;
      }
    }
    return pick;
  });
  // Check the budget exactly (glpk works with scaled, rounded coefficients).
  let bits = 0;
  groups.forEach((g, i) => (bits += p.bitsOf(g, choice[i])));
  if (bits > budget * (1 + 1e-12) + EPS) return { status: 'unknown' };
  return { choice, status: s === glpk.GLP_OPT ? 'optimal' : 'feasible' };
}
