/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * ERNIE 4.5 MoE against transformers 5.18 (fixtures/golden/ernie4_5_moe; scripts/make_golden.py --only
 * ernie4_5_moe): router top-k on every token (chosen on softmax + moe_statics' correction bias), logits and loss on
 * the ref and onnx backends, the rules that move the logits, the config rules (moe_k, moe_num_experts, the MoE layer
 * rule, tied embeddings by default), and prune / prune --top-k rewriting ERNIE's own keys and slicing the [1, E]
 * bias. transformers' perplexity of the pruned / merged / GPTQ outputs: test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { prune } from '../../src/commands/prune';
import { CheckpointError } from '../../src/errors';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import type { GqaSpec } from '../../src/model/forward/attention';
import { architectureFor } from '../../src/model/registry';
import { goldenMatchTests, goldenWindows, readGolden, runGolden } from './golden-case';
import { GOLDEN, quiet, rawHeader, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'ernie4_5_moe');

const golden = () => readGolden(DIR);

const run = (be: Backend, patch?: (a: Architecture) => void) => runGolden(DIR, be, { patch });

/** Tokens whose chosen set of experts differs from the golden's. */
function changedTokens(experts: Map<number, Int32Array>, topk: Int32Array, N: number): number {
  let n = 0;
  [1, 2].forEach((l, i) => {
    for (let t = 0; t < N; t++) {
      const a = Array.from(experts.get(l)!.subarray(t * 2, t * 2 + 2)).sort();
      const b = Array.from(topk.subarray((i * N + t) * 2, (i * N + t) * 2 + 2)).sort();
      if (a[0] !== b[0] || a[1] !== b[1]) n++;
    }
  });
  return n;
}

describe('the golden ernie4_5_moe checkpoint', () => {
  goldenMatchTests(DIR, [2, 32, 2], [1, 2], "router top-2 equals transformers' on every token of both MoE layers");

  test('the selection bias changes the tokens transformers says it changes; rotate-half instead of pairs moves the logits', async () => {
    const g = golden();
    const noBias = (a: Architecture) =>
      Object.defineProperty(a, 'routing', { value: { ...a.routing, correctionBias: false } });
    const { experts } = await run(new RefBackend(), noBias);
    const changed = changedTokens(experts, g.topk, g.N);
    expect(changed).toBeGreaterThan(0);
    expect(changed).toBe(g.info.checks.tokens_where_the_selection_bias_changed_the_choice);
    const halves = (a: Architecture) => {
      const own = a.attentionSpec.bind(a);
      a.attentionSpec = (rope, eps) => ({ ...(own(rope, eps) as GqaSpec), interleaved: false });
    };
    expect(maxDiff((await run(new RefBackend(), halves)).logits, g.logits)).toBeGreaterThan(1e-2);
  });

  test("config: ERNIE's keys, the MoE layer rule, tied embeddings by default; use_bias refused", () => {
    const base = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
    const a = architectureFor(base, DIR);
    expect([a.numExperts, a.topK, a.expertWidth, a.sharedExperts, a.tieEmbeddings]).toEqual([8, 2, 16, 2, true]);
    expect(a.moeLayers).toEqual([1, 2]);
    const { tie_word_embeddings: _t, ...untied } = base;
    expect(architectureFor(untied, DIR).tieEmbeddings).toBe(true);
    const layers = (set: Record<string, number>) =>
      architectureFor({ ...base, num_hidden_layers: 8, ...set }, DIR).moeLayers;
    expect(layers({ moe_layer_interval: 2, moe_layer_end_index: -1 })).toEqual([1, 3, 5, 7]);
    expect(layers({ moe_layer_start_index: 3, moe_layer_end_index: 5 })).toEqual([3, 4, 5]);
    for (const [set, msg] of [
      [{ use_bias: true }, 'use_bias'],
      [{ hidden_act: 'gelu' }, 'hidden_act "gelu" is not silu'],
    ] as const) {
      const make = () => architectureFor({ ...base, ...set }, DIR);
      expect(make).toThrow(CheckpointError);
      expect(make).toThrow(msg);
    }
  });

  test('prune slices the [1, E] selection bias with the router rows; --top-k rewrites moe_k', async () => {
    const work = tmpDir('moe-ernie-');
    const data = path.join(work, 'ids.json');
    const { ids, B, T } = golden();
    const rows = goldenWindows({ ids, B, T });
    fs.writeFileSync(data, JSON.stringify(rows));
    const stats = path.join(work, 'stats');
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref' }, quiet);
    const out = path.join(work, 'pruned');
    const report = await prune(
      { model: DIR, stats, method: 'reap', keep: 6, topK: 1, output: out, backend: 'ref' },
      quiet,
    );
    const header = rawHeader(path.join(out, 'model.safetensors')).json;
    expect(header['model.layers.1.mlp.moe_statics.e_score_correction_bias'].shape).toEqual([1, 6]);
    const a = new TensorReader(openCheckpoint(out));
    const b = new TensorReader(openCheckpoint(DIR));
    for (const { layer, kept } of report.layers) {
      const key = `model.layers.${layer}.mlp.moe_statics.e_score_correction_bias`;
      expect(Array.from(a.f32(key))).toEqual(kept.map((e) => b.f32(key)[e]));
    }
    a.close();
    b.close();
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect([config.moe_num_experts, config.moe_k, config.num_experts_per_tok, config.num_local_experts]).toEqual([
      6,
      1,
      undefined,
      undefined,
    ]);
  });
});
