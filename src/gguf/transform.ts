/**
 * GgufTransform (src/model/gguf-map.ts) applied and undone: an HF tensor seen as rows × its last axis (a vector:
 * one value per row) becomes a GGUF tensor of selected or reordered rows and columns with its values mapped
 * (1 + w for zero-centred norms, −exp for A_log); several GGUF tensors may each hold some rows of one HF tensor
 * (Qwen3-Next's in_proj_qkvz split into attn_qkv and attn_gate).
 */
import type { GgufTransform } from '../model/gguf-map';

/** The columns of an HF tensor of this shape as a transform sees it. */
export const transformCols = (shape: number[]): number => (shape.length >= 2 ? shape[shape.length - 1] : 1);

const identity = (n: number): number[] => [...Array(n).keys()];

/** The GGUF values of HF tensor `w` (of `shape`): rows × cols, [rows.length, cols.length]. */
export function toGguf(w: Float32Array, shape: number[], t: GgufTransform): Float32Array {
  const cols = transformCols(shape);
  const rows = t.rows ?? identity(w.length / cols);
  const nc = t.cols?.length ?? cols;
  const out = new Float32Array(rows.length * nc);
  for (let i = 0; i < rows.length; i++) {
    const src = rows[i] * cols;
    if (t.cols) for (let j = 0; j < nc; j++) out[i * nc + j] = w[src + t.cols[j]];
    else out.set(w.subarray(src, src + cols), i * nc);
  }
  if (t.add) for (let k = 0; k < out.length; k++) out[k] += t.add;
  if (t.negExp) for (let k = 0; k < out.length; k++) out[k] = -Math.exp(out[k]);
  if (t.center) center(out, rows.length, nc, t.center);
  return out;
}

/** GgufTransform.center: each column's mean over the rows ('rows') or each row's mean ('cols') removed, in float64. */
function center(w: Float32Array, rows: number, cols: number, along: 'rows' | 'cols'): void {
  if (along === 'cols') {
    for (let i = 0; i < rows; i++) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += w[i * cols + j];
      const m = s / cols;
      for (let j = 0; j < cols; j++) w[i * cols + j] -= m;
    }
    return;
  }
  const mean = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) mean[j] += w[i * cols + j];
  for (let j = 0; j < cols; j++) mean[j] /= rows;
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) w[i * cols + j] -= mean[j];
}

/**
 * The inverse of toGguf: the GGUF values `g` put back into their places in `out`, the HF tensor (of `shape`).
 * A centred tensor stays centred (an equivalent model, GgufTransform.center).
 */
export function fromGguf(g: Float32Array, out: Float32Array, shape: number[], t: GgufTransform): void {
  const cols = transformCols(shape);
  const rows = t.rows ?? identity(out.length / cols);
  const nc = t.cols?.length ?? cols;
  const value = (v: number) => {
    const x = t.negExp ? Math.log(-v) : v;
    return t.add ? x - t.add : x;
  };
  for (let i = 0; i < rows.length; i++) {
    const dst = rows[i] * cols;
    for (let j = 0; j < nc; j++) out[dst + (t.cols ? t.cols[j] : j)] = value(g[i * nc + j]);
  }
}
