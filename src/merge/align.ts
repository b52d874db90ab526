/**
 * Neuron alignment by weight matching (M-SMoE, Li et al., ICLR 2024, "Merge, then Compress"; weight matching
 * as in Git Re-Basin): an expert's intermediate neurons can be permuted without changing its function
 * (gate/up rows and down columns together), so before averaging two experts, permute the member's neurons to
 * best match the dominant expert's: maximise Σ_j ⟨F_d[j], F_m[π(j)]⟩ with F[j] = [gate_j; up_j; down_:,j].
 * Exact Hungarian matching up to EXACT_MAX_WIDTH neurons; beyond, a seeded random projection of the features
 * (PROJECTION_DIM) and a sparse greedy matching on each neuron's TOP_CANDIDATES best partners.
 */
import type { Backend } from '../backend/backend';
import { mulberry32 } from '../util/random';
import type { ExpertWeights } from '../model/experts';
import { greedyDense, hungarianMax, sparseGreedyMatch } from './assignment';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

/** Widths matched exactly: the Hungarian method is O(n³), about a second at 1024 in plain TypeScript. */
export const EXACT_MAX_WIDTH = 1024;
/** Projected feature size for wide experts: keeps the similarity products to ~1 s each at Mixtral width. */
export const PROJECTION_DIM = 512;
/** Candidates kept per neuron in the sparse matching. */
export const TOP_CANDIDATES = 32;
/** Leftover rows matched exactly when at most this many; otherwise greedily. */
const LEFTOVER_EXACT_MAX = 2048;
/** Rows of the similarity matrix computed at once for wide experts (bounds memory). */
const SIM_BLOCK_ROWS = 1024;

export type { ExpertWeights } from '../model/experts';

export interface Alignment {
  /** π: dominant neuron j takes member neuron perm[j]. */
  perm: Int32Array;
  method: 'exact' | 'approximate';
  /** Mean cosine of matched neuron features before (identity) and after alignment. */
  scoreBefore: number;
  scoreAfter: number;
}

/** Neuron features [width, 3·hidden] (or projected [width, dim]) of one expert. */
async function features(
  be: Backend,
  w: ExpertWeights,
  width: number,
  hidden: number,
  projection?: Float32Array[],
): Promise<Float32Array> {
  const downT = new Float32Array(width * hidden); // [width, hidden]
  for (let r = 0; r < hidden; r++) for (let c = 0; c < width; c++) downT[c * hidden + r] = w.down[r * width + c];
  if (!projection) {
    const f = new Float32Array(width * 3 * hidden);
    for (let j = 0; j < width; j++) {
      f.set(w.gate.subarray(j * hidden, (j + 1) * hidden), j * 3 * hidden);
      f.set(w.up.subarray(j * hidden, (j + 1) * hidden), j * 3 * hidden + hidden);
      f.set(downT.subarray(j * hidden, (j + 1) * hidden), j * 3 * hidden + 2 * hidden);
    }
    return f;
  }
  // F·R = gate·R_g + up·R_u + downᵀ·R_d, each R_x given transposed as [dim, hidden] (nn.Linear layout).
  const dim = projection[0].length / hidden;
  const out = new Float32Array(width * dim);
  for (const [part, r] of [
    [w.gate, projection[0]],
    [w.up, projection[1]],
    [downT, projection[2]],
  ] as const) {
    const y = await be.linear(part, r, width, hidden, dim);
    for (let i = 0; i < out.length; i++) out[i] += y[i];
  }
  return out;
}

/** Rows scaled to unit length (zero rows stay zero). */
export function normalizeRows(f: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(f.length);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += f[r * cols + c] ** 2;
    const inv = ss > 0 ? 1 / math.sqrt(ss) : 0;
    for (let c = 0; c < cols; c++) out[r * cols + c] = f[r * cols + c] * inv;
  }
  return out;
}

function meanMatched(
  fd: Float32Array,
  fm: Float32Array,
  perm: Int32Array | undefined,
  width: number,
  cols: number,
): number {
  let s = 0;
  for (let j = 0; j < width; j++) {
    const k = perm ? perm[j] : j;
    let dot = 0;
    for (let c = 0; c < cols; c++) dot += fd[j * cols + c] * fm[k * cols + c];
    s += dot;
  }
  return s / width;
}

function gaussianProjection(hidden: number, dim: number, seed: number): Float32Array[] {
  const rand = mulberry32(seed);
  const gauss = () => math.sqrt(-2 * math.log(rand() + 1e-12)) * math.cos(2 * math.PI * rand());
  return [0, 1, 2].map(() => Float32Array.from({ length: dim * hidden }, () => gauss() / math.sqrt(dim)));
}

/** Finds the permutation of `member`'s neurons that best matches `dominant`'s. */
export async function alignExperts(
  be: Backend,
  dominant: ExpertWeights,
  member: ExpertWeights,
  width: number,
  hidden: number,
  seed = 0,
  exactMax = EXACT_MAX_WIDTH,
): Promise<Alignment> {
  const exact = width <= exactMax;
  const projection = exact ? undefined : gaussianProjection(hidden, PROJECTION_DIM, seed);
  const cols = exact ? 3 * hidden : PROJECTION_DIM;
  const fd = normalizeRows(await features(be, dominant, width, hidden, projection), width, cols);
  const fm = normalizeRows(await features(be, member, width, hidden, projection), width, cols);
  let perm: Int32Array;
  if (exact) {
    perm = hungarianMax(await be.linear(fd, fm, width, cols, width), width);
  } else {
    const cand = { cols: [] as Int32Array[], sims: [] as Float32Array[] };
    for (let r0 = 0; r0 < width; r0 += SIM_BLOCK_ROWS) {
      const rows = math.min(SIM_BLOCK_ROWS, width - r0);
      const block = await be.linear(fd.subarray(r0 * cols, (r0 + rows) * cols), fm, rows, cols, width);
      for (let r = 0; r < rows; r++) {
        const row = block.subarray(r * width, (r + 1) * width);
        const top = topIndices(row, TOP_CANDIDATES);
        cand.cols.push(top);
        cand.sims.push(Float32Array.from(top, (c) => row[c]));
      }
    }
    perm = sparseGreedyMatch(width, cand, (rows, colsLeft) => {
      const m = rows.length;
      const sub = new Float32Array(m * m);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < m; j++) {
          let dot = 0;
          for (let c = 0; c < cols; c++) dot += fd[rows[i] * cols + c] * fm[colsLeft[j] * cols + c];
          sub[i * m + j] = dot;
        }
      }
      return m <= LEFTOVER_EXACT_MAX ? hungarianMax(sub, m) : greedyDense(sub, m);
    });
  }
  return {
    perm,
    method: exact ? 'exact' : 'approximate',
    scoreBefore: meanMatched(fd, fm, undefined, width, cols),
    scoreAfter: meanMatched(fd, fm, perm, width, cols),
  };
}

function topIndices(row: Float32Array, k: number): Int32Array {
  const idx: number[] = [];
  for (let i = 0; i < row.length; i++) {
    if (idx.length < k) {
      idx.push(i);
      if (idx.length === k) idx.sort((a, b) => row[b] - row[a]);
      continue;
    }
    if (row[i] <= row[idx[k - 1]]) continue;
    let j = k - 1;
    while (j > 0 && row[idx[j - 1]] < row[i]) j--;
    idx.splice(j, 0, i);
    idx.pop();
  }
  return Int32Array.from(idx);
}

/** The member's weights with neurons permuted: gate/up rows and down columns j ← perm[j]. */
export function permuteExpert(w: ExpertWeights, perm: Int32Array, width: number, hidden: number): ExpertWeights {
  const gate = new Float32Array(w.gate.length);
  const up = new Float32Array(w.up.length);
  const down = new Float32Array(w.down.length);
  for (let j = 0; j < width; j++) {
    gate.set(w.gate.subarray(perm[j] * hidden, (perm[j] + 1) * hidden), j * hidden);
    up.set(w.up.subarray(perm[j] * hidden, (perm[j] + 1) * hidden), j * hidden);
  }
  for (let r = 0; r < hidden; r++) for (let j = 0; j < width; j++) down[r * width + j] = w.down[r * width + perm[j]];
  if (!w.bias) return { gate, up, down };
  // The gate and up biases belong to the permuted neurons; the down bias is per output and stays.
  const b = w.bias;
  const bias = {
    gate: Float32Array.from(perm, (p) => b.gate[p]),
    up: Float32Array.from(perm, (p) => b.up[p]),
    down: b.down,
  };
  return { gate, up, down, bias };
}
