import { InternalError } from '../../src/errors';
import { RefBackend } from '../../src/backend/ref';
import { randomMatrix } from './matrices';

/** An independent naive product c = a · b for row-major a [m, k], b [k, n], in float64. */
function naive(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): number[] {
  const c: number[] = [];
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      c.push(s);
    }
  return c;
}

function transpose(a: ArrayLike<number>, rows: number, cols: number): number[] {
  const t: number[] = [];
  for (let j = 0; j < cols; j++) for (let i = 0; i < rows; i++) t.push(a[i * cols + j]);
  return t;
}

describe('RefBackend', () => {
  const ref = new RefBackend();

  test('linear on a hand-computed case, with and without bias', async () => {
    const x = new Float32Array([1, 2, 3, 4, 5, 6]); // [2, 3]
    const w = new Float32Array([1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 2]); // [4, 3]
    expect(Array.from(await ref.linear(x, w, 2, 3, 4))).toEqual([1, 2, 6, 6, 4, 5, 15, 12]);
    const b = new Float32Array([10, 20, 30, 40]);
    expect(Array.from(await ref.linear(x, w, 2, 3, 4, b))).toEqual([11, 22, 36, 46, 14, 25, 45, 52]);
  });

  test('bmm on a hand-computed case, transB false and true', async () => {
    const a = new Float32Array([1, 2, 3, 4, /* batch 2 */ 0, 1, 1, 0]); // [2, 2, 2]
    const b = new Float32Array([1, 0, 1, 0, 1, 1, /* batch 2 */ 2, 3, 4, 5, 6, 7]); // [2, 2, 3]
    expect(Array.from(await ref.bmm(a, b, 2, 2, 2, 3, false))).toEqual([1, 2, 3, 3, 4, 7, 5, 6, 7, 2, 3, 4]);
    const bt = new Float32Array([...transpose(b.subarray(0, 6), 2, 3), ...transpose(b.subarray(6), 2, 3)]); // [2, 3, 2]
    expect(Array.from(await ref.bmm(a, bt, 2, 2, 2, 3, true))).toEqual([1, 2, 3, 3, 4, 7, 5, 6, 7, 2, 3, 4]);
  });

  test('linear equals a naive product with wᵀ on random odd shapes', async () => {
    const [t, i, o] = [7, 13, 5];
    const x = randomMatrix(t * i, 1);
    const w = randomMatrix(o * i, 2);
    const got = await ref.linear(x, w, t, i, o);
    const want = naive(x, transpose(w, o, i), t, i, o);
    got.forEach((v, j) => expect(v).toBeCloseTo(want[j], 5));
  });

  test('accumulates in float64: the sum survives a cancellation that float32 would lose', async () => {
    // 1e8 + 1 − 1e8: float32 accumulation gives 0, float64 gives 1.
    const x = new Float32Array([1e8, 1, -1e8]);
    const w = new Float32Array([1, 1, 1]);
    expect(Array.from(await ref.linear(x, w, 1, 3, 1))).toEqual([1]);
  });

  test('zero tokens give an empty result; inDim 0 gives the bias', async () => {
    const w = randomMatrix(4 * 3, 3);
    expect((await ref.linear(new Float32Array(0), w, 0, 3, 4)).length).toBe(0);
    const b = new Float32Array([1, 2]);
    expect(Array.from(await ref.linear(new Float32Array(0), new Float32Array(0), 2, 0, 2, b))).toEqual([1, 2, 1, 2]);
    expect((await ref.bmm(new Float32Array(0), new Float32Array(0), 0, 3, 4, 5, true)).length).toBe(0);
  });

  test('rejects arrays that do not match the dimensions', async () => {
    await expect(ref.linear(new Float32Array(5), new Float32Array(6), 2, 3, 2)).rejects.toThrow(InternalError);
    await expect(ref.linear(new Float32Array(6), new Float32Array(6), 2, 3, 2, new Float32Array(3))).rejects.toThrow(
      /bias/,
    );
    await expect(ref.bmm(new Float32Array(8), new Float32Array(11), 2, 2, 2, 3, false)).rejects.toThrow(
      /b should hold/,
    );
    await expect(ref.linear(new Float32Array(0), new Float32Array(0), -1, 0, 0)).rejects.toThrow(/non-negative/);
  });
});
