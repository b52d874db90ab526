/**
 * The importance-weighted error of one weight at one ggml type, Σ imatrix[c]·(w − dequantize(quantize(w)))², shared
 * by the measuring thread and the worker threads of src/gguf/error-pool.ts (the same arithmetic, so the same value,
 * on any thread).
 */
import { dequantizeRows, GgmlType, quantizeRows } from './quants';

export function typeError(w: Float32Array, rows: number, cols: number, type: GgmlType, imp?: Float64Array): number {
  const d = dequantizeRows(quantizeRows(w, rows, cols, type, imp), rows, cols, type);
  let s = 0;
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) s += (imp ? imp[c] : 1) * (w[r * cols + c] - d[r * cols + c]) ** 2;
  return s;
}
