/** Accumulating XᵀX (Gram matrices: Hessians for GPTQ, router-logit similarity) with the backend's matmul. */
import type { Backend } from '../backend/backend';

/** [rows, cols] → [cols, rows]. */
export function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c];
  return out;
}

/** acc [cols, cols] (float64) += xᵀ·x for x [rows, cols]. */
export function addGram(be: Backend, acc: Float64Array, x: Float32Array, rows: number, cols: number): Promise<void> {
  return addCross(be, acc, x, x, rows, cols);
}

/** acc [cols, cols] (float64) += aᵀ·b for a, b [rows, cols] (b may be a: transposed once). */
export async function addCross(
  be: Backend,
  acc: Float64Array,
  a: Float32Array,
  b: Float32Array,
  rows: number,
  cols: number,
): Promise<void> {
  if (rows === 0) return;
  const at = transpose(a, rows, cols); // [cols, rows]
  const bt = b === a ? at : transpose(b, rows, cols);
  const g = await be.linear(at, bt, cols, rows, cols); // aᵀ·(bᵀ)ᵀ = aᵀb
  for (let i = 0; i < g.length; i++) acc[i] += g[i];
}

/** acc [cols] += Σ_rows x², the diagonal of xᵀx (llama.cpp's imatrix). */
export function addSumSquares(acc: Float64Array, x: Float32Array, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let c = 0; c < cols; c++) acc[c] += x[o + c] * x[o + c];
  }
}
