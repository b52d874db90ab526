/**
 * The forward pass against transformers: each golden fixture holds a checkpoint saved by transformers, fixed
 * token ids and transformers' logits (scripts/make_golden.py). Logits within 1e-3, loss within 1e-4.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { loadArchitecture, modelTypes } from '../../src/model/registry';
import { GOLDEN } from '../helpers';
import { lossOf } from '../golden-math';

const ALL_CASES = fs.readdirSync(GOLDEN).filter((d) => fs.existsSync(path.join(GOLDEN, d, 'golden.safetensors')));
/** Goldens whose architecture this branch does not have yet (gpt_oss, issue 18): skipped, see the end of the file. */
const NEEDS_ARCH = new Set<string>([]);
const CASES = ALL_CASES.filter((c) => !NEEDS_ARCH.has(c));

test('golden fixtures cover every registered architecture', () => {
  // the model_type moe works on: a nested language model's (qwen3_5_moe: its text_config's qwen3_5_moe_text)
  const types = new Set(CASES.map((c) => openCheckpoint(path.join(GOLDEN, c)).config.model_type));
  expect([...types].sort()).toEqual(modelTypes().sort());
});

describe.each(CASES)('%s', (c) => {
  test("logits and loss equal transformers'", async () => {
    const dir = path.join(GOLDEN, c);
    const golden = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
    const ids = Int32Array.from(new BigInt64Array(golden.bytes('input_ids').slice().buffer), Number);
    const want = golden.f32('logits');
    const [B, T, V] = golden.ref('logits').shape;
    golden.close();

    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    const reader = new TensorReader(ckpt);
    const fp = new ForwardPass(reader, arch, new RefBackend());
    const { sink, logits } = fullLogits(B * T, V);
    await fp.run(ids, B, T, sink);
    reader.close();

    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(want[i] - logits[i]));
    expect(maxDiff).toBeLessThanOrEqual(1e-3);
    // The logits are not trivially small: a wrong layer would show.
    expect(Math.max(...want.slice(0, V).map(Math.abs))).toBeGreaterThan(0.5);
    const info = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));
    expect(Math.abs(lossOf(logits, ids, B, T, V) - info.loss)).toBeLessThanOrEqual(1e-4);
  });
});

// The lead enables this after merging the gpt_oss architecture: remove NEEDS_ARCH (the case then runs above) and
// this skip. The router top-k check is the issue's acceptance: equal to transformers' router_logits top-k on every
// token (fixtures/golden/gpt_oss-mxfp4/golden.json router_topk, per layer [tokens][k]).
test('gpt_oss-mxfp4: router top-k equal to transformers on every token', async () => {
  const dir = path.join(GOLDEN, 'gpt_oss-mxfp4');
  const golden = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(golden.bytes('input_ids').slice().buffer), Number);
  const [B, T, V] = golden.ref('logits').shape;
  golden.close();
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));
  const ckpt = openCheckpoint(dir);
  const reader = new TensorReader(ckpt);
  const fp = new ForwardPass(reader, loadArchitecture(ckpt), new RefBackend());
  const got: Record<string, number[][]> = {};
  const { sink } = fullLogits(B * T, V);
  await fp.run(ids, B, T, sink, {
    router: (layer, routing, _x, tokens) => {
      const k = routing.experts.length / tokens;
      got[String(layer)] = [...Array(tokens).keys()].map((t) => Array.from(routing.experts.subarray(t * k, t * k + k)));
    },
  });
  reader.close();
  expect(got).toEqual(info.router_topk);
});
