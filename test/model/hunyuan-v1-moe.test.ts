/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * Hunyuan-A13B against transformers 5.18 (fixtures/golden/hunyuan_v1_moe; scripts/make_golden.py --only
 * hunyuan_v1_moe): router top-k on every token, logits and loss on the ref and onnx backends (the q/k norms after
 * the rotary, with their weights, are only right in that order), the NTK-alpha rotary and the q/k norms move the
 * logits, the config keys (num_experts, moe_topk), and prune rewriting them. transformers' perplexity of the
 * pruned / merged / GPTQ outputs: test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { prune } from '../../src/commands/prune';
import { CheckpointError } from '../../src/errors';
import type { Architecture } from '../../src/model/arch';
import type { GqaSpec } from '../../src/model/forward/attention';
import { architectureFor } from '../../src/model/registry';
import { goldenMatchTests, goldenWindows, readGolden, runGolden } from './golden-case';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'hunyuan_v1_moe');

const golden = () => readGolden(DIR);

const run = (be: Backend, patch?: (a: Architecture) => void, config?: Record<string, unknown>) =>
  runGolden(DIR, be, { patch, config });

describe('the golden hunyuan_v1_moe checkpoint', () => {
  goldenMatchTests(DIR, [2, 32, 2], [0, 1], "router top-2 equals transformers' on every token of every layer");

  test('the alpha rotary moves the logits as much as transformers measured; so do the q/k norms', async () => {
    const g = golden();
    const config = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
    const plain = { ...config, rope_parameters: { rope_type: 'default', rope_theta: 10000 } };
    const moved = maxDiff((await run(new RefBackend(), undefined, plain)).logits, g.logits);
    expect(moved).toBeCloseTo(g.info.checks.max_abs_logit_change_without_the_alpha_rotary, 2);
    const noNorms = (a: Architecture) => {
      const own = a.attentionSpec.bind(a);
      a.attentionSpec = (rope, eps) => ({ ...(own(rope, eps) as GqaSpec), qkNorm: 'none' });
    };
    expect(maxDiff((await run(new RefBackend(), noNorms)).logits, g.logits)).toBeGreaterThan(1e-2);
  });

  test('config: num_experts and moe_topk; prune rewrites num_experts', async () => {
    const base = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
    const a = architectureFor(base, DIR);
    expect([a.numExperts, a.topK, a.expertWidth, a.moeLayers]).toEqual([8, 2, 16, [0, 1]]);
    const list = () => architectureFor({ ...base, moe_topk: [2, 2] }, DIR);
    expect(list).toThrow(CheckpointError);
    const work = tmpDir('moe-hunyuan-');
    const data = path.join(work, 'ids.json');
    const { ids, B, T } = golden();
    fs.writeFileSync(data, JSON.stringify(goldenWindows({ ids, B, T })));
    const stats = path.join(work, 'stats');
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref' }, quiet);
    const out = path.join(work, 'pruned');
    await prune({ model: DIR, stats, method: 'reap', keep: 6, output: out, backend: 'ref' }, quiet);
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect([config.num_experts, config.moe_topk, config.num_local_experts]).toEqual([6, 2, undefined]);
  });
});
