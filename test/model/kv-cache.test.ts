/**
 * Incremental decoding (src/model/forward/decode.ts) against full recomputation: on every architecture's golden
 * model, a 6-token prefill then 8 decode steps (each feeding the greedy token); at every step the cached logits equal
 * the window forward's logits of the whole prefix within 1e-4. gpt_oss's sliding windows (4 and 8) are
 * shorter than the 14 tokens. Also a packed 4-bit output and a GGUF file of a golden.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { exportGguf } from '../../src/commands/gguf';
import { quantize } from '../../src/commands/quantize';
import { openGgufModel } from '../../src/gguf/source';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { Decoder } from '../../src/model/forward/decode';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { byteTokenizer } from './byte-tokenizer';

const CASES = fs.readdirSync(GOLDEN).filter((d) => fs.existsSync(path.join(GOLDEN, d, 'golden.safetensors')));
const PROMPT = 6;
const STEPS = 8;

function promptOf(dir: string): Int32Array {
  const golden = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(golden.bytes('input_ids').slice().buffer), Number);
  golden.close();
  return ids.slice(0, PROMPT);
}

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/**
 * The largest |cached − recomputed| over the prefill's last row and every decode step. The recomputation is one
 * window forward over the final sequence: causal attention makes its row t the full recomputation of the prefix
 * ending at t.
 */
async function maxStepDiff(reader: TensorReader, arch: Architecture, prompt: Int32Array, cacheBytes?: number) {
  const be = new RefBackend();
  const dec = new Decoder(reader, arch, be, { cacheBytes });
  const ids = Array.from(prompt);
  const steps = [await dec.extend(prompt)];
  for (let step = 0; step < STEPS; step++) {
    ids.push(argmax(steps[steps.length - 1]));
    steps.push(await dec.extend(Int32Array.of(ids[ids.length - 1])));
  }
  expect(dec.length).toBe(PROMPT + STEPS);
  const T = ids.length;
  const { sink, logits } = fullLogits(T, arch.vocab);
  await new ForwardPass(reader, arch, be).run(Int32Array.from(ids), 1, T, sink);
  let worst = 0;
  steps.forEach((cached, i) => {
    const want = logits.subarray((PROMPT - 1 + i) * arch.vocab, (PROMPT + i) * arch.vocab);
    for (let j = 0; j < want.length; j++) worst = Math.max(worst, Math.abs(want[j] - cached[j]));
  });
  return worst;
}

describe.each(CASES)('%s', (c) => {
  test('KV-cache logits equal full recomputation at every step', async () => {
    const dir = path.join(GOLDEN, c);
    const ckpt = openCheckpoint(dir);
    const reader = new TensorReader(ckpt);
    try {
      expect(await maxStepDiff(reader, loadArchitecture(ckpt), promptOf(dir))).toBeLessThanOrEqual(1e-4);
    } finally {
      reader.close();
    }
  });
});

test('weights re-read per step beyond the cache budget give the same logits', async () => {
  const dir = path.join(GOLDEN, 'qwen3_next');
  const ckpt = openCheckpoint(dir);
  const reader = new TensorReader(ckpt);
  try {
    expect(await maxStepDiff(reader, loadArchitecture(ckpt), promptOf(dir), 0)).toBeLessThanOrEqual(1e-4);
  } finally {
    reader.close();
  }
});

test('deepseek_v32: a total length beyond index_topk is refused', async () => {
  const ckpt = openCheckpoint(path.join(GOLDEN, 'deepseek_v32'));
  const reader = new TensorReader(ckpt);
  const dec = new Decoder(reader, loadArchitecture(ckpt), new RefBackend());
  try {
    await dec.extend(new Int32Array(30).fill(5));
    await dec.extend(Int32Array.of(5, 6)); // 32 = index_topk: dense attention is exact
    await expect(dec.extend(Int32Array.of(7))).rejects.toThrow('a window of 33 tokens is longer than index_topk 32');
  } finally {
    reader.close();
  }
});

test('packed 4-bit and GGUF inputs decode as they recompute', async () => {
  const out = tmpDir();
  const packed = path.join(out, 'packed');
  await quantize(
    { model: path.join(GOLDEN, 'qwen3_moe'), output: packed, bits: 4, method: 'rtn', format: 'packed' },
    quiet,
  );
  const ckpt = openCheckpoint(packed);
  const reader = new TensorReader(ckpt);
  const prompt = promptOf(path.join(GOLDEN, 'qwen3_moe'));
  try {
    expect(await maxStepDiff(reader, loadArchitecture(ckpt), prompt)).toBeLessThanOrEqual(1e-4);
  } finally {
    reader.close();
  }
  const src = path.join(out, 'deepseek_v3');
  fs.cpSync(path.join(GOLDEN, 'deepseek_v3'), src, { recursive: true });
  fs.writeFileSync(path.join(src, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
  const file = path.join(out, 'm.gguf');
  await exportGguf({ model: src, output: file, type: 'Q8_0' }, quiet);
  const g = openGgufModel(file);
  try {
    expect(await maxStepDiff(g.reader as TensorReader, g.arch, prompt)).toBeLessThanOrEqual(1e-4);
  } finally {
    g.reader.close();
  }
  fs.rmSync(out, { recursive: true, force: true });
});
