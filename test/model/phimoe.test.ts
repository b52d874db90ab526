/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * Phi-3.5-MoE against transformers 5.18 (fixtures/golden/phimoe; scripts/make_golden.py --only phimoe): sparsemixer's
 * two experts on every token, logits and loss on the ref and onnx backends (LayerNorms with biases, q/k/v/o and
 * lm_head biases, longrope), each rule moving the logits, sparsemixer's weights by hand, and the refusals (top-k other
 * than 2, windows past original_max_position_embeddings, --recalibrate-router). transformers' perplexity of the
 * pruned / merged / GPTQ outputs: test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { prune } from '../../src/commands/prune';
import { CheckpointError, UsageError } from '../../src/errors';
import type { Architecture } from '../../src/model/arch';
import { route } from '../../src/model/forward/moe';
import { architectureFor } from '../../src/model/registry';
import { goldenMatchTests, readGolden, runGolden } from './golden-case';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'phimoe');
const CONFIG = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));

const golden = () => readGolden(DIR);

const run = (be: Backend, patch?: (a: Architecture) => void, config?: Record<string, unknown>) =>
  runGolden(DIR, be, { patch, config });

describe('the golden phimoe checkpoint', () => {
  goldenMatchTests(
    DIR,
    [2, 32, 2],
    [0, 1],
    "sparsemixer's two experts equal transformers' on every token of every layer",
  );

  test('the lm_head bias, sparsemixer (against softmax top-2) and the longrope scale each move the logits', async () => {
    const g = golden();
    const noHeadBias = (a: Architecture) => Object.defineProperty(a, 'headBias', { value: undefined });
    const softmax = (a: Architecture) =>
      Object.defineProperty(a, 'routing', { value: { ...a.routing, scoring: 'softmax', normTopK: true } });
    const plainRope = { ...CONFIG, rope_parameters: { rope_type: 'default', rope_theta: 10000 } };
    for (const [patch, config] of [
      [noHeadBias, CONFIG],
      [softmax, CONFIG],
      [undefined, plainRope],
    ] as const)
      expect(maxDiff((await run(new RefBackend(), patch, config)).logits, g.logits)).toBeGreaterThan(1e-2);
  });

  test('sparsemixer weights by hand: each slot a softmax over the experts within 2·eps of it', () => {
    const rule = architectureFor(CONFIG, DIR).routing; // eps 0.3: within 0.6 (relative) of the slot's logit
    const s = Float32Array.from([2, 1.5, 0.2, -1, 1.9, 0.5, -0.3, 0.9]);
    const r = route(s, 1, 8, rule);
    expect(Array.from(r.experts)).toEqual([0, 4]);
    // slot 1 (2.0): experts j with (2 − s_j) / max(|s_j|, 2) ≤ 0.6: 2, 1.5, 1.9, 0.9
    const z1 = [2, 1.5, 1.9, 0.9].reduce((t, v) => t + Math.exp(v - 2), 0);
    // slot 2 (1.9, expert 0 left out): (1.9 − s_j) / max(|s_j|, 1.9) ≤ 0.6: 1.5, 1.9, 0.9
    const z2 = [1.5, 1.9, 0.9].reduce((t, v) => t + Math.exp(v - 1.9), 0);
    expect(r.weights[0]).toBeCloseTo(1 / z1, 6);
    expect(r.weights[1]).toBeCloseTo(1 / z2, 6);
  });

  test('refused: top-k other than 2, windows past original_max_position_embeddings, --recalibrate-router', async () => {
    const make = () => architectureFor({ ...CONFIG, num_experts_per_tok: 1 }, DIR);
    expect(make).toThrow(CheckpointError);
    expect(make).toThrow('sparsemixer routes to 2 experts');
    const work = tmpDir('moe-phimoe-');
    const data = path.join(work, 'ids.json');
    const { ids } = golden();
    const long = Array.from({ length: 80 }, (_, i) => ids[i % ids.length]);
    fs.writeFileSync(data, JSON.stringify([long]));
    await expect(evalCommand({ model: DIR, data, seqLen: 80 }, quiet)).rejects.toThrow(
      'rescales every position past 64 tokens',
    );
    const stats = path.join(work, 'stats');
    const short = path.join(work, 'short.json');
    fs.writeFileSync(short, JSON.stringify([long.slice(0, 40), long.slice(40)]));
    await calibrate({ model: DIR, output: stats, data: short, seqLen: 40, backend: 'ref' }, quiet);
    const out = path.join(work, 'recal');
    const r = prune({ model: DIR, stats, method: 'reap', keep: 6, recalibrateRouter: 'ls', output: out }, quiet);
    await expect(r).rejects.toThrow(UsageError);
    await expect(r).rejects.toThrow('--recalibrate-router is not defined for sparsemixer routing');
    expect(fs.existsSync(out)).toBe(false);
  });
});
