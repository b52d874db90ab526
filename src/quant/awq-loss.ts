/**
 * AWQ's search loss (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
 * Acceleration"; the method is src/quant/awq.ts): for a weight W [rows, cols], calibrated inputs with Hessian
 * H = XᵀX and a candidate per-column scale s,
 *   err(s) = ‖(Q(W·diag(s))·diag(s)⁻¹ − W)·X‖² = Σ_rows ΔW·H·ΔWᵀ   (Σ ΔW²·diag(H) with only the imatrix)
 * with Q round-to-nearest on the grid of src/quant/rtn.ts. The round trip is fused (no codes kept) and the candidates'
 * ΔW share one product with H.
 */
import type { Backend } from '../backend/backend';
import { groupParams, outputError } from './rtn';

/** ‖(Q(W·diag(s))·diag(s)⁻¹ − W)·X‖² for W [rows, cols] with s per column. */
export async function scaledError(
  w: Float32Array,
  rows: number,
  cols: number,
  s: Float32Array,
  spec: { bits: number; groupSize: number; symmetric: boolean },
  h: { diag: Float64Array } | { full: Float32Array },
  be?: Backend,
): Promise<number> {
  return outputError(w, roundTripScaled(w, rows, cols, s, spec), rows, cols, h, be);
}

// Math's functions as module constants: per-element code must not look up globals (slow in vm contexts, e.g. jest).
const { round, fround, min } = Math;
const INF = Infinity;

/**
 * dequantize(quantizeRtn(W·diag(s)))·diag(s)⁻¹ in one pass, without the codes: the same grid (groupParams), the
 * same rounding (rint of the float32 quotient) and the same float32 steps as src/quant/rtn.ts, 3× faster.
 */
export function roundTripScaled(
  w: Float32Array,
  rows: number,
  cols: number,
  s: Float32Array,
  spec: { bits: number; groupSize: number; symmetric: boolean },
): Float32Array {
  const maxq = (1 << spec.bits) - 1;
  const gs = spec.groupSize;
  const out = new Float32Array(rows * cols);
  const ws = new Float32Array(min(gs, cols));
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let a = 0; a < cols; a += gs) {
      const b = min(cols, a + gs);
      let lo = INF;
      let hi = -INF;
      for (let c = a; c < b; c++) {
        const v = fround(w[row + c] * s[c]);
        ws[c - a] = v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const { scale, zero } = groupParams(lo, hi, maxq, spec.symmetric);
      for (let c = a; c < b; c++) {
        const x = fround(ws[c - a] / scale);
        let q = round(x);
        if (q - x === 0.5 && q % 2 !== 0) q -= 1; // half to even, as rint
        q += zero;
        q = q < 0 ? 0 : q > maxq ? maxq : q;
        out[row + c] = fround((q - zero) * scale) / s[c];
      }
    }
  }
  return out;
}

/** Bytes of the stacked differences one backend product takes (the candidates go in chunks below it). */
const STACK_BYTES = 32 << 20;

/**
 * scaledError at each candidate scale. With a full Hessian and a backend, the candidates' ΔW are stacked into one
 * [k·rows, cols] operand per product: one call instead of k (the call, not the arithmetic, dominates small weights).
 */
export async function candidateErrors(
  w: Float32Array,
  rows: number,
  cols: number,
  scales: Float32Array[],
  spec: { bits: number; groupSize: number; symmetric: boolean },
  h: { diag: Float64Array } | { full: Float32Array },
  be?: Backend,
): Promise<number[]> {
  if (!('full' in h) || !be) return Promise.all(scales.map((s) => scaledError(w, rows, cols, s, spec, h, be)));
  const n = rows * cols;
  const per = Math.max(1, Math.floor(STACK_BYTES / (4 * n)));
  const out: number[] = [];
  for (let a0 = 0; a0 < scales.length; a0 += per) {
    const k = Math.min(per, scales.length - a0);
    const delta = new Float32Array(k * n); // [k·rows, cols]
    for (let a = 0; a < k; a++) {
      const dq = roundTripScaled(w, rows, cols, scales[a0 + a], spec);
      for (let i = 0; i < n; i++) delta[a * n + i] = w[i] - dq[i];
    }
    const dh = await be.linear(delta, h.full, k * rows, cols, cols);
    for (let a = 0; a < k; a++) {
      let e = 0;
      for (let i = a * n; i < (a + 1) * n; i++) e += delta[i] * dh[i];
      out.push(e);
    }
  }
  return out;
}
