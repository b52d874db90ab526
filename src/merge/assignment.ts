/**
 * Linear assignment for neuron alignment: find the permutation π maximising Σ_j S[j, π(j)].
 *  - exact: the Hungarian method with potentials (shortest augmenting paths), O(n³), for small widths;
 *  - sparse greedy: for large widths, each row keeps its best `candidates` columns; edges are taken in order of
 *    decreasing similarity when both ends are free, and the few rows left over are matched exactly among
 *    themselves (or greedily when still too many).
 */

/** Exact maximum-weight perfect matching of a dense n×n similarity matrix (row-major). Returns π: row → column. */
export function hungarianMax(sim: Float64Array | Float32Array, n: number): Int32Array {
  // Minimise cost = −sim; 1-based arrays as in the classic formulation.
  const INF = Number.POSITIVE_INFINITY;
  const u = new Float64Array(n + 1);
  const v = new Float64Array(n + 1);
  const p = new Int32Array(n + 1); // p[j]: row matched to column j
  const way = new Int32Array(n + 1);
  const minv = new Float64Array(n + 1);
  const used = new Uint8Array(n + 1);
  for (let i = 1; i <= n; i++) {
    p[0] = i;
    let j0 = 0;
    minv.fill(INF);
    used.fill(0);
    do {
      used[j0] = 1;
      const i0 = p[j0];
      const row = (i0 - 1) * n;
      let delta = INF;
      let j1 = 0;
      for (let j = 1; j <= n; j++) {
        if (used[j]) continue;
        const cur = -sim[row + j - 1] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (let j = 0; j <= n; j++) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 !== 0);
  }
  const match = new Int32Array(n);
  for (let j = 1; j <= n; j++) match[p[j] - 1] = j - 1;
  return match;
}

export interface SparseRows {
  /** For each row, candidate columns and their similarities (any order). */
  cols: Int32Array[];
  sims: Float32Array[];
}

/**
 * Approximate matching from each row's best candidates: greedy on edges by decreasing similarity, then the
 * leftover rows and columns matched by `leftover` (dense similarity on request).
 */
export function sparseGreedyMatch(
  n: number,
  cand: SparseRows,
  leftover: (rows: number[], cols: number[]) => Int32Array,
): Int32Array {
  const edges: { r: number; c: number; s: number }[] = [];
  for (let r = 0; r < n; r++)
    for (let i = 0; i < cand.cols[r].length; i++) edges.push({ r, c: cand.cols[r][i], s: cand.sims[r][i] });
  edges.sort((a, b) => b.s - a.s || a.r - b.r || a.c - b.c);
  const match = new Int32Array(n).fill(-1);
  const taken = new Uint8Array(n);
  for (const e of edges) {
    if (match[e.r] >= 0 || taken[e.c]) continue;
    match[e.r] = e.c;
    taken[e.c] = 1;
  }
  const rows = [...Array(n).keys()].filter((r) => match[r] < 0);
  if (rows.length > 0) {
    const cols = [...Array(n).keys()].filter((c) => !taken[c]);
    const sub = leftover(rows, cols);
    rows.forEach((r, i) => (match[r] = cols[sub[i]]));
  }
  return match;
}

/** Greedy matching of a dense m×m block (leftovers too many for the exact method). */
export function greedyDense(sim: Float64Array | Float32Array, m: number): Int32Array {
  const order = [...Array(m * m).keys()].sort((a, b) => sim[b] - sim[a] || a - b);
  const match = new Int32Array(m).fill(-1);
  const taken = new Uint8Array(m);
  for (const k of order) {
    const r = Math.floor(k / m);
    const c = k % m;
    if (match[r] >= 0 || taken[c]) continue;
    match[r] = c;
    taken[c] = 1;
  }
  return match;
}
