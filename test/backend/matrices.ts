/** Seeded random matrices and a norm-wise relative error, shared by the backend tests. */

import { mulberry32 } from '../../src/util/random';

/** A seeded generator (mulberry32), so a failing shape can be rerun exactly. */
export const rng = mulberry32;

/** n floats uniform in [-1, 1). */
export function randomMatrix(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = 2 * r() - 1;
  return a;
}

/** max |got − want| / max |want|: element-wise relative error is meaningless where want is near 0. */
export function relError(got: Float32Array, want: Float32Array): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

/** Shapes every backend is checked on: [tokens, inDim, outDim]. */
export const LINEAR_SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [1, 64, 96],
  [7, 13, 5],
  [3, 129, 257],
  [33, 70, 41],
  [64, 512, 384],
];

/** [batch, m, k, n]. */
export const BMM_SHAPES: [number, number, number, number][] = [
  [1, 1, 1, 1],
  [1, 7, 13, 5],
  [3, 7, 13, 5],
  [4, 33, 64, 65],
  [16, 32, 64, 48],
  [2, 1, 128, 300],
];
