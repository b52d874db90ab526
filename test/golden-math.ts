/**
 * The arithmetic the golden tests share: the golden loss (as fixtures/golden/README.md defines it) and the largest
 * absolute difference of two arrays.
 */

/** Mean NLL of ids[t+1] under logits[t], over every window's first T−1 positions (float64). */
export function lossOf(logits: Float32Array, ids: Int32Array, B: number, T: number, V: number): number {
  let nll = 0;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T - 1; t++) {
      const r = (b * T + t) * V;
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[r + v]);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(logits[r + v] - m);
      nll += m + Math.log(s) - logits[r + ids[b * T + t + 1]];
    }
  }
  return nll / (B * (T - 1));
}

/** max |a[i] − b[i]|; arrays of different lengths are an error, not a smaller comparison. */
export function maxDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`maxDiff: lengths ${a.length} and ${b.length} differ`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
