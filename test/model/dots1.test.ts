/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * dots.llm1 against transformers 5.18 (fixtures/golden/dots1; scripts/make_golden.py --only dots1): router top-k
 * on every token of both MoE layers, logits and loss on the ref and onnx backends, the rules that move the logits
 * (the sliding layer, the q/k norms, renormalisation), the config rules, and prune slicing the selection bias with
 * the router rows. transformers' perplexity of the pruned / merged / GPTQ outputs:
 * test/reference/architectures.test.ts; compressed-tensors: test/reference/compressed-tensors.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { prune } from '../../src/commands/prune';
import { CheckpointError } from '../../src/errors';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import type { GqaSpec } from '../../src/model/forward/attention';
import { architectureFor } from '../../src/model/registry';
import { goldenMatchTests, goldenWindows, readGolden, runGolden } from './golden-case';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'dots1');

const golden = () => readGolden(DIR);

const run = (be: Backend, patch?: (a: Architecture) => void) => runGolden(DIR, be, { patch });

describe('the golden dots1 checkpoint', () => {
  goldenMatchTests(DIR, [2, 32, 2], [1, 2], "router top-2 equals transformers' on every token of both MoE layers");

  test('the sliding layer, the q/k norms and the renormalisation each move the logits', async () => {
    const g = golden();
    const noWindow = (a: Architecture) => (a.slidingWindow = () => undefined);
    const noNorm = (a: Architecture) => {
      const own = a.attentionSpec.bind(a);
      a.attentionSpec = (rope, eps) => ({ ...(own(rope, eps) as GqaSpec), qkNorm: 'none' });
    };
    const plainWeights = (a: Architecture) =>
      Object.defineProperty(a, 'routing', { value: { ...a.routing, normTopK: false } });
    const moved = [];
    for (const patch of [noWindow, noNorm, plainWeights])
      moved.push(maxDiff((await run(new RefBackend(), patch)).logits, g.logits));
    for (const m of moved) expect(m).toBeGreaterThan(1e-2);
    // transformers measured the sliding layer's effect on the same weights
    expect(moved[0]).toBeCloseTo(g.info.checks.max_abs_logit_change_without_the_sliding_layer, 2);
  });

  test('config: transformers 5.18 defaults and refusals', () => {
    const base = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
    const { layer_types: _t, ...hub } = base;
    const a = architectureFor(hub, DIR);
    expect([0, 1, 2].map((l) => a.slidingWindow(l))).toEqual([undefined, undefined, 8]); // max_window_layers 2
    expect(architectureFor({ ...hub, sliding_window: null }, DIR).slidingWindow(2)).toBeUndefined();
    expect(a.moeLayers).toEqual([1, 2]);
    expect(a.sharedExperts).toBe(2);
    expect(a.routing).toMatchObject({
      scoring: 'sigmoid',
      nGroup: 2,
      topkGroup: 1,
      scalingFactor: 2.5,
      normTopK: true,
    });
    const { norm_topk_prob: _n, first_k_dense_replace: _f, ...defaults } = hub;
    const d = architectureFor(defaults, DIR);
    expect(d.routing.normTopK).toBe(false); // Dots1Config's default
    expect(d.moeLayers).toEqual([0, 1, 2]);
    expect((a.attentionSpec({}, 1e-5) as GqaSpec).ropeDim).toBe(16); // the whole head
    const { n_shared_experts: _s, ...noShared } = hub;
    for (const [config, msg] of [
      [noShared, 'n_shared_experts'],
      [{ ...hub, layer_types: ['full_attention', 'chunked_attention', 'full_attention'] }, 'layer_types[1]'],
      [
        { ...hub, sliding_window: null, layer_types: ['full_attention', 'full_attention', 'sliding_attention'] },
        'sliding_window is not set',
      ],
    ] as const) {
      const make = () => architectureFor(config, DIR);
      expect(make).toThrow(CheckpointError);
      expect(make).toThrow(msg);
    }
  });

  test('inspect, and prune slicing the selection bias with the router rows', async () => {
    const r = inspect({ model: DIR });
    expect(r.params_total).toBe(golden().info.params_total);
    expect(r.params_experts).toBe(2 * 8 * 3 * 16 * 32);
    expect(formatInspect(r)).toMatch(/routing\s+sigmoid, top-2, renormalised/);
    const work = tmpDir('moe-dots1-');
    const data = path.join(work, 'ids.json');
    const { ids, B, T } = golden();
    fs.writeFileSync(data, JSON.stringify(goldenWindows({ ids, B, T })));
    const stats = path.join(work, 'stats');
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref' }, quiet);
    const out = path.join(work, 'pruned');
    const report = await prune({ model: DIR, stats, method: 'reap', keep: 6, output: out, backend: 'ref' }, quiet);
    const a = new TensorReader(openCheckpoint(out));
    const b = new TensorReader(openCheckpoint(DIR));
    for (const { layer, kept } of report.layers) {
      const p = `model.layers.${layer}.mlp.gate`;
      expect(Array.from(a.f32(`${p}.e_score_correction_bias`))).toEqual(
        kept.map((e) => b.f32(`${p}.e_score_correction_bias`)[e]),
      );
      kept.forEach((e, i) =>
        expect(a.f32(`${p}.weight`).subarray(i * 32, (i + 1) * 32)).toEqual(
          b.f32(`${p}.weight`).subarray(e * 32, (e + 1) * 32),
        ),
      );
    }
    a.close();
    b.close();
    expect(openCheckpoint(out).config.n_routed_experts).toBe(6);
  });
});
