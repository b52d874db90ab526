/**
 * Incremental decoding (src/model/forward/decode.ts) against full recomputation: on every architecture's golden
 * model, a 6-token prefill then 8 decode steps (each feeding the greedy token); at every step the cached logits equal
 * the window forward's last-row logits of the whole prefix within 1e-4. gpt_oss's sliding windows (4 and 8) are
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

/** The largest |cached − recomputed| over the prefill's last row and every decode step. */
async function maxStepDiff(reader: TensorReader, arch: Architecture, prompt: Int32Array, cacheBytes?: number) {
  const be = new RefBackend();
  const full = new ForwardPass(reader, arch, be);
  const dec = new Decoder(reader, arch, be, { cacheBytes });
  const ids = Array.from(prompt);
  let cached = await dec.extend(prompt);
  let worst = 0;
  for (let step = 0; step <= STEPS; step++) {
    const T = ids.length;
    const { sink, logits } = fullLogits(T, arch.vocab);
    await full.run(Int32Array.from(ids), 1, T, sink);
    const want = logits.subarray((T - 1) * arch.vocab);
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(want[i] - cached[i]));
    if (step === STEPS) break;
    const next = argmax(cached);
    ids.push(next);
    cached = await dec.extend(Int32Array.of(next));
  }
  expect(dec.length).toBe(PROMPT + STEPS);
  return worst;
}

/** A byte-level BPE tokenizer.json with no merges (GGUF export needs a tokenizer; the goldens have none). */
function byteTokenizer(): Record<string, unknown> {
  const bs: number[] = [];
  for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) bs.push(b);
  const cs = [...bs];
  for (let b = 0, n = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const vocab = Object.fromEntries(bs.map((b, i) => [String.fromCharCode(cs[i]), b]));
  return {
    model: { type: 'BPE', vocab, merges: [] },
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, use_regex: true },
    added_tokens: [],
  };
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
