/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * The forward pass reuses memory (src/model/forward/model.ts): weights decode into pooled buffers that go back to
 * the pool when used (whole passes) or when the layer ends (the layer cache), and activations and backend outputs go
 * to per-role buffers. Reuse must never change a result: the same hidden states whether a layer's weights are cached
 * across batches, streamed once per pass, or read again for every use with no cache at all, on the onnx backend
 * (whose outputs land in those buffers) and on ref.
 */
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { ForwardPass } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, ROOT } from '../helpers';

const MODELS = [
  path.join(ROOT, 'fixtures', 'tiny-moe'),
  path.join(GOLDEN, 'deepseek_v3'),
  path.join(GOLDEN, 'gpt_oss'),
];

function ids(n: number, vocab: number, seed: number): Int32Array {
  let s = seed;
  return Int32Array.from({ length: n }, () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % vocab);
}

describe.each(['onnx', 'ref'] as const)('forward buffer reuse on %s', (backend) => {
  let be: Backend;
  beforeAll(async () => {
    be = backend === 'onnx' ? await OnnxBackend.create({ threads: 1 }) : new RefBackend();
  });
  afterAll(() => be.dispose());

  test.each(MODELS)('%s: cached, streamed and uncached weights give the same hidden states', async (dir) => {
    const ckpt = openCheckpoint(dir);
    const reader = new TensorReader(ckpt);
    const arch = loadArchitecture(ckpt);
    const T = 12;
    const batches = [ids(2 * T, arch.vocab, 1), ids(T, arch.vocab, 2)];
    // whole passes: each weight used once, recycled at once (two batches through the same ForwardPass)
    const streamed = new ForwardPass(reader, arch, be);
    const want: Float32Array[] = [];
    for (const b of batches) {
      const h = streamed.embed(b);
      await streamed.layers(h, b.length / T, T);
      want.push(h);
    }
    // layer by layer over both batches, as calibration runs: the second batch reads the cached weights
    for (const cacheBytes of [1 << 30, 1024]) {
      const cached = new ForwardPass(reader, arch, be, { cacheBytes });
      const hs = batches.map((b) => cached.embed(b));
      for (let l = 0; l < arch.numLayers; l++) {
        for (let i = 0; i < batches.length; i++) await cached.layer(l, hs[i], batches[i].length / T, T);
        cached.release();
      }
      hs.forEach((h, i) => expect(Buffer.from(h.buffer).equals(Buffer.from(want[i].buffer))).toBe(true));
    }
    reader.close();
  });
});
