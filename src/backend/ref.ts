/**
 * The reference backend: plain TypeScript loops, float32 in, float64 accumulation, float32 out. Tests check
 * every other backend against it; the onnx backend also uses its kernels for products too small to be worth
 * a native call. Also home of the shape checks every backend runs before touching data.
 */
import { InternalError } from '../errors';
import type { Backend } from './backend';

function checkDims(what: string, dims: Record<string, number>): void {
  for (const [name, v] of Object.entries(dims)) {
    if (!Number.isSafeInteger(v) || v < 0) throw new InternalError(`${what}: ${name} must be a non-negative integer, got ${v}`);
  }
}

function checkLength(what: string, name: string, a: Float32Array, expected: number, shape: string): void {
  if (a.length !== expected) throw new InternalError(`${what}: ${name} should hold ${shape} = ${expected} floats, got ${a.length}`);
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of a `linear` call. */
export function checkLinear(x: Float32Array, w: Float32Array, tokens: number, inDim: number, outDim: number, bias?: Float32Array): void {
  checkDims('linear', { tokens, inDim, outDim });
  checkLength('linear', 'x', x, tokens * inDim, `[${tokens}, ${inDim}]`);
  checkLength('linear', 'w', w, outDim * inDim, `[${outDim}, ${inDim}]`);
  if (bias) checkLength('linear', 'bias', bias, outDim, `[${outDim}]`);
}

/** Throws an InternalError (a caller bug) unless the arrays match the dimensions of a `bmm` call. */
export function checkBmm(a: Float32Array, b: Float32Array, batch: number, m: number, k: number, n: number, transB: boolean): void {
  checkDims('bmm', { batch, m, k, n });
  checkLength('bmm', 'a', a, batch * m * k, `[${batch}, ${m}, ${k}]`);
  checkLength('bmm', 'b', b, batch * k * n, transB ? `[${batch}, ${n}, ${k}]` : `[${batch}, ${k}, ${n}]`);
}

/**
 * y [tokens, outDim] = x [tokens, inDim] · wᵀ (+ bias). Each output is the dot product of a row of x and a row
 * of w, both contiguous, so the inner loop walks memory in order.
 */
export function linearRef(x: Float32Array, w: Float32Array, tokens: number, inDim: number, outDim: number, bias?: Float32Array): Float32Array {
  const y = new Float32Array(tokens * outDim);
  for (let t = 0; t < tokens; t++) {
    const xRow = t * inDim;
    for (let o = 0; o < outDim; o++) {
      const wRow = o * inDim;
      let acc = bias ? bias[o] : 0; // a JS number: float64
      for (let i = 0; i < inDim; i++) acc += x[xRow + i] * w[wRow + i];
      y[t * outDim + o] = acc;
    }
  }
  return y;
}

/**
 * c [batch, m, n] = a [batch, m, k] · b, b [batch, k, n] or with transB [batch, n, k]. Without transB the
 * loop is the i-p-j order (a row of c accumulates scaled rows of b) so that b is read row by row too.
 */
export function bmmRef(a: Float32Array, b: Float32Array, batch: number, m: number, k: number, n: number, transB: boolean): Float32Array {
  const c = new Float32Array(batch * m * n);
  const acc = new Float64Array(n); // one row of c, in float64
  for (let s = 0; s < batch; s++) {
    const aBase = s * m * k;
    const bBase = s * k * n;
    for (let i = 0; i < m; i++) {
      const aRow = aBase + i * k;
      const cRow = (s * m + i) * n;
      if (transB) {
        for (let j = 0; j < n; j++) {
          const bRow = bBase + j * k;
          let sum = 0;
          for (let p = 0; p < k; p++) sum += a[aRow + p] * b[bRow + p];
          c[cRow + j] = sum;
        }
      } else {
        acc.fill(0);
        for (let p = 0; p < k; p++) {
          const av = a[aRow + p];
          const bRow = bBase + p * n;
          for (let j = 0; j < n; j++) acc[j] += av * b[bRow + j];
        }
        for (let j = 0; j < n; j++) c[cRow + j] = acc[j];
      }
    }
  }
  return c;
}

export class RefBackend implements Backend {
  readonly name = 'ref';

  async linear(x: Float32Array, w: Float32Array, tokens: number, inDim: number, outDim: number, bias?: Float32Array): Promise<Float32Array> {
    checkLinear(x, w, tokens, inDim, outDim, bias);
    return linearRef(x, w, tokens, inDim, outDim, bias);
  }

  async bmm(a: Float32Array, b: Float32Array, batch: number, m: number, k: number, n: number, transB: boolean): Promise<Float32Array> {
    checkBmm(a, b, batch, m, k, n, transB);
    return bmmRef(a, b, batch, m, k, n, transB);
  }

  async dispose(): Promise<void> {}
}
