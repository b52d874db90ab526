/**
 * Affinity-guided Hessians (MoEQuant's AGQ: Hu et al., ICML 2025, "MoEQuant: Enhancing Quantization for
 * Mixture-of-Experts Large Language Models via Expert-Balanced Sampling and Affinity Guidance"): a routed expert's
 * GPTQ Hessian counts each calibration token by how strongly the router ties it to the expert,
 *
 *   H_e = Σ_t c_{t,e} · x_t x_tᵀ,
 *
 * instead of plain XᵀX over the tokens routed to it. c_{t,e} is the weight the forward multiplies the expert's
 * output by for token t (top-k renormalised where the model renormalises, × routed_scaling_factor where it scales),
 * and, for a token not routed to e (calibrate --all-experts), its router probability for e (the softmax, or the
 * sigmoid score of sigmoid routers). The Gram is taken of the rows scaled by √c, so c = 1 everywhere is plain XᵀX
 * bit for bit. Linear in c, as the paper weights it (the output error of a routed token scales with c², which
 * would weigh the strongest tokens even more). Only Hessians are weighted: the imatrix (Σx², llama.cpp's) and the
 * row counts stay unweighted.
 */

/** HessianWeighting: 'none' is plain XᵀX; 'gate' weighs each routed expert's rows by their affinity. */
export const HESSIAN_WEIGHTINGS = ['none', 'gate'] as const;
export type HessianWeighting = (typeof HESSIAN_WEIGHTINGS)[number];

/** x [rows, cols] with row r multiplied by √weights[r] (float32), in place; weights must be ≥ 0. */
export function scaleRowsBySqrt(x: Float32Array, rows: number, cols: number, weights: Float32Array): Float32Array {
  if (weights.length !== rows) throw new RangeError(`${weights.length} row weights for ${rows} rows`);
  for (let r = 0; r < rows; r++) {
    const w = weights[r];
    if (w === 1) continue;
    if (!(w >= 0)) throw new RangeError(`row weight ${w} is not a non-negative number`);
    const s = Math.fround(Math.sqrt(w));
    const o = r * cols;
    for (let c = 0; c < cols; c++) x[o + c] *= s;
  }
  return x;
}
