/**
 * GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
 * Transformers"): columns are quantized one at a time and each one's rounding error is spread over the columns
 * not yet quantized, weighted by the inverse Hessian, so the layer's output on the calibration inputs moves as
 * little as possible. Uses H = XᵀX from calibration (any positive scale), dampening a fraction of its mean
 * diagonal, and the upper Cholesky factor of H⁻¹ (src/quant/linalg.ts). Columns go in blocks of 128 with lazy
 * batch updates, and inside each block in sub-blocks of 16 whose error reaches the rest of the block in one
 * product, so every O(n³) part is a matrix product on the backend. Optional act-order (columns by decreasing
 * Hessian diagonal) uses static groups: every group's scale and zero point come from the original weights, so
 * the stored layout stays in column order with no g_idx.
 * The grid is the one in rtn.ts.
 */
import type { Backend } from '../backend/backend';
import { matmulT, NotPositiveDefinite, upperCholeskyOfInverse } from './linalg';
import { emptyQuantized, groupCount, groupParams, QuantizedMatrix, QuantSpec, quantizeRtn, quantizeValue } from './rtn';

export interface GptqOptions {
  /** Fraction of the mean Hessian diagonal added to the diagonal (default 0.01). */
  damp?: number;
  /** Columns per lazy batch update (default 128). */
  blockSize?: number;
  /** Quantize columns in order of decreasing Hessian diagonal (default false). */
  actOrder?: boolean;
}

/**
 * Math and Infinity as module constants: per-element code then never looks up a global (slow inside vm contexts such
 * as jest's).
 */
const math = Math;
const INF = Infinity;

/** Columns quantized one by one before the rest of their block is updated by a matrix product. */
const SUB = 16;
/** How many times the dampening is multiplied by 10 before giving up on a Hessian that will not factor. */
const DAMP_RETRIES = 4;

// Exception to the 100-line rule (numeric kernel): the blocked column sweep shares its buffers and indices, and
// splitting it would pass a dozen arrays between pieces of one loop.
// eslint-disable-next-line max-lines-per-function
export async function gptq(
  w: Float32Array,
  rows: number,
  cols: number,
  hIn: Float32Array | Float64Array,
  spec: QuantSpec,
  opts: GptqOptions = {},
  be?: Backend,
): Promise<QuantizedMatrix> {
  if (w.length !== rows * cols || hIn.length !== cols * cols)
    throw new RangeError(
      `gptq: W has ${w.length} values for [${rows}, ${cols}], H ${hIn.length} for [${cols}, ${cols}]`,
    );
  const B = opts.blockSize ?? 128;
  const gs = spec.groupSize;
  const maxq = (1 << spec.bits) - 1;
  const W = Float32Array.from(w);
  const H = Float32Array.from(hIn);
  // Columns no calibration input ever reached: their weights do not matter; make H invertible there.
  let meanDiag = 0;
  for (let i = 0; i < cols; i++) {
    if (H[i * cols + i] === 0) {
      H[i * cols + i] = 1;
      for (let r = 0; r < rows; r++) W[r * cols + i] = 0;
    }
    meanDiag += H[i * cols + i] / cols;
  }
  const q = emptyQuantized(rows, cols, spec);
  const ng = groupCount(cols, gs);
  // Act-order: static groups from the original weights, then the permutation.
  let perm: Int32Array | undefined;
  if (opts.actOrder) {
    const fixed = quantizeRtn(W, rows, cols, spec);
    q.scales.set(fixed.scales);
    q.zeros.set(fixed.zeros);
    perm = Int32Array.from([...Array(cols).keys()].sort((a, b) => H[b * cols + b] - H[a * cols + a] || a - b));
  }
  const Wp = perm ? permuteCols(W, rows, cols, perm) : W;
  const Hp = perm ? permuteSym(H, cols, perm) : H;

  let U: Float32Array | undefined;
  let damp = opts.damp ?? 0.01;
  for (let attempt = 0; attempt <= DAMP_RETRIES && !U; attempt++, damp *= 10) {
    const Hd = Float32Array.from(Hp);
    for (let i = 0; i < cols; i++) Hd[i * cols + i] += damp * meanDiag;
    try {
      const u = await upperCholeskyOfInverse(Hd, cols, be);
      let ok = true;
      for (let i = 0; i < cols && ok; i++) ok = u[i * cols + i] > 0 && Number.isFinite(u[i * cols + i]);
      if (ok) U = u;
    } catch (e) {
      if (!(e instanceof NotPositiveDefinite)) throw e;
    }
  }
  if (!U)
    return {
      ...quantizeRtn(w, rows, cols, spec),
      fallback: 'the Hessian is not positive definite even with 10⁴× the dampening',
    };

  // Per (row, group) grid, filled as groups are reached (or up front with act-order).
  const scales = q.scales;
  const zeros = q.zeros;
  const ready = new Uint8Array(ng).fill(perm ? 1 : 0);
  for (let i1 = 0; i1 < cols; i1 += B) {
    const i2 = math.min(cols, i1 + B);
    const nb = i2 - i1;
    // The block as rows × nb (contiguous per row), its error, and U's diagonal block.
    const W1 = new Float32Array(rows * nb);
    for (let r = 0; r < rows; r++) W1.set(Wp.subarray(r * cols + i1, r * cols + i2), r * nb);
    const E1 = new Float32Array(rows * nb);
    for (let s1 = 0; s1 < nb; s1 += SUB) {
      const s2 = math.min(nb, s1 + SUB);
      for (let i = s1; i < s2; i++) {
        const col = i1 + i;
        const orig = perm ? perm[col] : col;
        const g = math.floor(orig / gs);
        if (!ready[g]) {
          // Standard GPTQ: the group's grid from its current (error-updated) weights, when its first column comes up.
          const end = math.min(cols, (g + 1) * gs);
          for (let r = 0; r < rows; r++) {
            let lo = INF;
            let hi = -INF;
            for (let c = col; c < end; c++) {
              const v = c < i2 ? W1[r * nb + (c - i1)] : Wp[r * cols + c];
              if (v < lo) lo = v;
              if (v > hi) hi = v;
            }
            const p = groupParams(lo, hi, maxq, spec.symmetric);
            scales[r * ng + g] = p.scale;
            zeros[r * ng + g] = p.zero;
          }
          ready[g] = 1;
        }
        const d = U[col * cols + col];
        const urow = col * cols;
        for (let r = 0; r < rows; r++) {
          const at = r * nb;
          const v = W1[at + i];
          const s = scales[r * ng + g];
          const z = zeros[r * ng + g];
          const code = quantizeValue(v, s, z, maxq);
          q.codes[r * cols + orig] = code;
          const err = (v - (code - z) * s) / d;
          E1[at + i] = err;
          for (let j = i + 1; j < s2; j++) W1[at + j] -= err * U[urow + i1 + j];
        }
      }
      // The rest of the block: W1[:, s2:] −= E1[:, s1:s2] · U[i1+s1 : i1+s2, i1+s2 : i2], one product.
      if (s2 < nb) await subtractProduct(W1, nb, s2, E1, nb, s1, s2 - s1, U, cols, i1 + s1, i1 + s2, nb - s2, rows, be);
    }
    // Lazy batch update of the columns after the block: W[:, i2:] −= E1 · U[i1:i2, i2:].
    if (i2 < cols) await subtractProduct(Wp, cols, i2, E1, nb, 0, nb, U, cols, i1, i2, cols - i2, rows, be);
  }
  return q;
}

/**
 * target[:, tc : tc+n] −= E[:, ec : ec+k] · U[u0 : u0+k, uc : uc+n] for row-major target [rows, tStride],
 * E [rows, eStride] and U [·, uStride]: GPTQ's error propagation as one matrix product.
 */
async function subtractProduct(
  target: Float32Array,
  tStride: number,
  tc: number,
  E: Float32Array,
  eStride: number,
  ec: number,
  k: number,
  U: Float32Array,
  uStride: number,
  u0: number,
  uc: number,
  n: number,
  rows: number,
  be?: Backend,
): Promise<void> {
  const e = new Float32Array(rows * k);
  for (let r = 0; r < rows; r++) e.set(E.subarray(r * eStride + ec, r * eStride + ec + k), r * k);
  const ut = new Float32Array(n * k); // U[u0:u0+k, uc:uc+n]ᵀ as [n, k]
  for (let i = 0; i < k; i++) {
    const row = (u0 + i) * uStride + uc;
    for (let c = 0; c < n; c++) ut[c * k + i] = U[row + c];
  }
  const upd = await matmulT(e, ut, rows, k, n, be);
  for (let r = 0; r < rows; r++) {
    const o = r * tStride + tc;
    const u = r * n;
    for (let c = 0; c < n; c++) target[o + c] -= upd[u + c];
  }
}

function permuteCols(w: Float32Array, rows: number, cols: number, perm: Int32Array): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) out[r * cols + j] = w[r * cols + perm[j]];
  return out;
}

function permuteSym(h: Float32Array, n: number, perm: Int32Array): Float32Array {
  const out = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = h[perm[i] * n + perm[j]];
  return out;
}
