/**
 * The chunked gated delta rule (src/model/forward/deltanet-chunked.ts, the backend's batched matmuls) against the
 * per-token float64 recurrence (deltanet.ts without a backend) on random inputs: windows not a multiple of the chunk,
 * one shorter than a chunk, small β and weak decays (so the state carried from
 * chunk to chunk matters: measured, dropping it moves the output by > 1e-2), two value heads per key head.
 */
import { RefBackend } from '../../src/backend/ref';
import { gatedDeltaNet, DeltaNetSpec } from '../../src/model/forward/deltanet';
import { CHUNK } from '../../src/model/forward/deltanet-chunked';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5;
}

const spec: DeltaNetSpec = {
  kind: 'gated_deltanet',
  keyHeads: 2,
  valueHeads: 4,
  keyDim: 8,
  valueDim: 6,
  convKernel: 4,
  eps: 1e-6,
  split: true,
};

async function both(windows: number, T: number, aLogShift: number) {
  const rnd = lcg(T * 31 + windows);
  const make = (n: number, scale = 1) => Float32Array.from({ length: n }, () => rnd() * scale);
  const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = spec;
  const N = windows * T;
  const C = 2 * Hk * dk + Hv * dv;
  const proj: Record<string, Float32Array> = {
    in_proj_qkv: make(N * C, 4),
    in_proj_z: make(N * Hv * dv, 2),
    in_proj_b: make(N * Hv, 2).map((v) => v - 3), // β ≈ σ(−3): small writes, so the state outlives a chunk
    in_proj_a: make(N * Hv, 6),
  };
  const weights: Record<string, Float32Array> = {
    'conv1d.weight': make(C * 4, 2),
    A_log: make(Hv, 2).map((v) => v + aLogShift),
    dt_bias: make(Hv),
    'norm.weight': make(dv),
  };
  // hidden = Hv·dv and out_proj the identity: the whole core output after the gated norm is compared.
  const hidden = Hv * dv;
  const lin = async (name: string, x: Float32Array) => (name === 'out_proj' ? x.slice() : proj[name]);
  const w = (n: string) => weights[n];
  const x = new Float32Array(N * hidden);
  const plain = await gatedDeltaNet(lin, x, hidden, windows, T, spec, w);
  const chunked = await gatedDeltaNet(lin, x, hidden, windows, T, spec, w, new RefBackend());
  return { plain, chunked };
}

test.each([
  [2, CHUNK + 13, -6],
  [1, 3 * CHUNK, -8],
  [3, 5, 0],
  [1, 2 * CHUNK - 1, -4],
])('windows %i of %i tokens, A_log + %f: chunked equals the recurrence to float32 rounding', async (W, T, shift) => {
  const { plain, chunked } = await both(W, T, shift);
  expect(chunked.length).toBe(plain.length);
  let max = 0;
  let scale = 0;
  for (let i = 0; i < plain.length; i++) {
    max = Math.max(max, Math.abs(plain[i] - chunked[i]));
    scale = Math.max(scale, Math.abs(plain[i]));
  }
  expect(scale).toBeGreaterThan(0.1);
  expect(max).toBeLessThan(2e-5 * scale);
});
