/**
 * The dense linear algebra GPTQ needs: a Cholesky factorisation that also returns the factor's inverse, blocked
 * recursively so that the O(n³) work is matrix products on the backend (onnxruntime) and only small diagonal
 * blocks are factored in JavaScript (in float64). Matrices are row-major; products run in float32, as GPTQ's
 * reference implementation does.
 */
import type { Backend } from '../backend/backend';

/** Below this size a block is factored directly. */
const LEAF = 96;

export class NotPositiveDefinite extends Error {}

/** x·wᵀ for x [m, k] and w [n, k]: on the backend when given, else in plain loops (tests, tiny sizes). */
export async function matmulT(
  x: Float32Array,
  w: Float32Array,
  m: number,
  k: number,
  n: number,
  be?: Backend,
): Promise<Float32Array> {
  if (be && m * k * n > 32768) return be.linear(x, w, m, k, n);
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
      out[i * n + j] = s;
    }
  }
  return out;
}

export function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

function block(a: Float32Array, n: number, r0: number, c0: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(a.subarray((r0 + r) * n + c0, (r0 + r) * n + c0 + cols), r * cols);
  return out;
}

function put(into: Float32Array, n: number, r0: number, c0: number, b: Float32Array, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) into.set(b.subarray(r * cols, (r + 1) * cols), (r0 + r) * n + c0);
}

/** Lower Cholesky factor L (A = L·Lᵀ) and its inverse, in float64 arithmetic, for a small block. */
function leaf(a: Float32Array, n: number): { L: Float32Array; Li: Float32Array } {
  const L = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j];
    for (let k = 0; k < j; k++) d -= L[j * n + k] * L[j * n + k];
    if (!(d > 0)) throw new NotPositiveDefinite(`pivot ${j} is ${d}`);
    const ljj = Math.sqrt(d);
    L[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      L[i * n + j] = s / ljj;
    }
  }
  // Li = L⁻¹ by forward substitution, column by column.
  const Li = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    Li[j * n + j] = 1 / L[j * n + j];
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s -= L[i * n + k] * Li[k * n + j];
      Li[i * n + j] = s / L[i * n + i];
    }
  }
  return { L: Float32Array.from(L), Li: Float32Array.from(Li) };
}

/**
 * A = L·Lᵀ for symmetric positive definite A [n, n]: returns L and L⁻¹ (both lower). Throws NotPositiveDefinite.
 * [A11 A21ᵀ; A21 A22]: L11 = chol(A11), L21 = A21·L11⁻ᵀ, L22 = chol(A22 − L21·L21ᵀ), L⁻¹21 = −L22⁻¹·L21·L11⁻¹.
 */
export async function choleskyWithInverse(
  a: Float32Array,
  n: number,
  be?: Backend,
): Promise<{ L: Float32Array; Li: Float32Array }> {
  if (n <= LEAF) return leaf(a, n);
  const h = Math.floor(n / 2);
  const m = n - h;
  const top = await choleskyWithInverse(block(a, n, 0, 0, h, h), h, be);
  const L21 = await matmulT(block(a, n, h, 0, m, h), top.Li, m, h, h, be); // A21·(L11⁻¹)ᵀ
  const S = block(a, n, h, h, m, m);
  const P = await matmulT(L21, L21, m, h, m, be);
  for (let i = 0; i < S.length; i++) S[i] -= P[i];
  const bottom = await choleskyWithInverse(S, m, be);
  const M = await matmulT(L21, transpose(top.Li, h, h), m, h, h, be); // L21·L11⁻¹
  const Li21 = await matmulT(bottom.Li, transpose(M, m, h), m, m, h, be); // L22⁻¹·M
  for (let i = 0; i < Li21.length; i++) Li21[i] = -Li21[i];
  const L = new Float32Array(n * n);
  const Li = new Float32Array(n * n);
  put(L, n, 0, 0, top.L, h, h);
  put(L, n, h, 0, L21, m, h);
  put(L, n, h, h, bottom.L, m, m);
  put(Li, n, 0, 0, top.Li, h, h);
  put(Li, n, h, 0, Li21, m, h);
  put(Li, n, h, h, bottom.Li, m, m);
  return { L, Li };
}

/**
 * The upper-triangular U with Uᵀ·U = H⁻¹ (GPTQ's "Cholesky of the inverse Hessian"), without forming H⁻¹: with P
 * the order reversal, P·H·P = L·Lᵀ gives H = V·Vᵀ for the upper V = P·L·P, so H⁻¹ = V⁻ᵀ·V⁻¹ and U = V⁻¹ = P·L⁻¹·P.
 */
export async function upperCholeskyOfInverse(h: Float32Array, n: number, be?: Backend): Promise<Float32Array> {
  const rev = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) rev[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
  const { Li } = await choleskyWithInverse(rev, n, be);
  const U = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) U[i * n + j] = Li[(n - 1 - i) * n + (n - 1 - j)];
  return U;
}
