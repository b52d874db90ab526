/**
 * Which experts merge together, per layer, into K groups (each group becomes one expert):
 *  - M-SMoE (Li et al., ICLR 2024): the K most frequent experts are dominant; every other expert joins the
 *    dominant expert it is most similar to.
 *  - HC-SMoE (Chen et al., 2024, "Retraining-Free Merging of Sparse MoE via Hierarchical Clustering"):
 *    agglomerative clustering of the experts' mean outputs into K clusters (single, complete or average
 *    linkage on cosine distance); a cluster's most frequent member is its representative.
 * With DeepSeek's grouped routing, merging stays inside each routing group and every group keeps K/n_group.
 */

export interface MergeGroup {
  /** The representative (its router row is kept with --router dominant). */
  dominant: number;
  /** All members, the dominant first. */
  members: number[];
}

export type Linkage = 'single' | 'complete' | 'average';

function routingGroups(E: number, groups: number): number[][] {
  const per = E / groups;
  return [...Array(groups)].map((_, g) => [...Array(per)].map((_, i) => g * per + i));
}

/** Cosine similarity matrix [E, E] of row vectors [E, dim]. */
export function cosineMatrix(v: Float32Array | Float64Array, E: number, dim: number): Float64Array {
  const norms = new Float64Array(E);
  for (let e = 0; e < E; e++) {
    let s = 0;
    for (let j = 0; j < dim; j++) s += v[e * dim + j] ** 2;
    norms[e] = Math.sqrt(s);
  }
  const out = new Float64Array(E * E);
  for (let a = 0; a < E; a++) {
    for (let b = a; b < E; b++) {
      let s = 0;
      for (let j = 0; j < dim; j++) s += v[a * dim + j] * v[b * dim + j];
      const c = norms[a] > 0 && norms[b] > 0 ? s / (norms[a] * norms[b]) : 0;
      out[a * E + b] = c;
      out[b * E + a] = c;
    }
  }
  return out;
}

export function msmoeGroups(
  freq: ArrayLike<number>,
  sim: Float64Array,
  E: number,
  keep: number,
  groups = 1,
): MergeGroup[] {
  const out: MergeGroup[] = [];
  for (const members of routingGroups(E, groups)) {
    const quota = keep / groups;
    const dominant = members
      .slice()
      .sort((a, b) => freq[b] - freq[a] || a - b)
      .slice(0, quota)
      .sort((a, b) => a - b);
    const merged = new Map(dominant.map((d) => [d, [d]]));
    for (const e of members) {
      if (merged.has(e)) continue;
      const best = dominant.reduce((x, d) => (sim[e * E + d] > sim[e * E + x] ? d : x), dominant[0]);
      merged.get(best)!.push(e);
    }
    for (const d of dominant) out.push({ dominant: d, members: merged.get(d)! });
  }
  return out;
}

export function hierarchicalGroups(
  freq: ArrayLike<number>,
  sim: Float64Array,
  E: number,
  keep: number,
  linkage: Linkage,
  groups = 1,
): MergeGroup[] {
  const out: MergeGroup[] = [];
  for (const members of routingGroups(E, groups)) {
    let clusters = members.map((e) => [e]);
    const quota = keep / groups;
    const dist = (a: number[], b: number[]) => {
      const d: number[] = [];
      for (const x of a) for (const y of b) d.push(1 - sim[x * E + y]);
      if (linkage === 'single') return Math.min(...d);
      if (linkage === 'complete') return Math.max(...d);
      return d.reduce((s, v) => s + v, 0) / d.length;
    };
    while (clusters.length > quota) {
      let best = { i: 0, j: 1, d: Infinity };
      for (let i = 0; i < clusters.length; i++) {
        for (let j = i + 1; j < clusters.length; j++) {
          const d = dist(clusters[i], clusters[j]);
          if (d < best.d) best = { i, j, d };
        }
      }
      const mergedCluster = [...clusters[best.i], ...clusters[best.j]];
      clusters = clusters.filter((_, k) => k !== best.i && k !== best.j);
      clusters.push(mergedCluster);
    }
    for (const c of clusters) {
      const dominant = c.slice().sort((a, b) => freq[b] - freq[a] || a - b)[0];
      out.push({ dominant, members: [dominant, ...c.filter((e) => e !== dominant).sort((a, b) => a - b)] });
    }
  }
  // New experts in the order of their representatives, so the output is stable.
  return out.sort((a, b) => a.dominant - b.dominant);
}

/** Frequency weights of a group's members (uniform when none was ever routed). */
export function memberWeights(freq: ArrayLike<number>, members: number[], uniform = false): number[] {
  const f = members.map((e) => freq[e]);
  const total = f.reduce((s, x) => s + x, 0);
  return uniform || total <= 0 ? members.map(() => 1 / members.length) : f.map((x) => x / total);
}
