/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * MiniMax-M2 against transformers 5.18 (fixtures/golden/minimax_m2, bf16, and minimax_m2-fp8, the same weights
 * block-scaled FP8 as MiniMaxAI publishes them; scripts/make_golden.py --only minimax_m2,minimax_m2-fp8): router
 * top-k on every token of every layer (chosen on sigmoid + e_score_correction_bias), logits and loss on the ref and
 * onnx backends, each MiniMax rule changes the logits, the config rules (rotary_dim, refusals), the commands'
 * outputs, and GGUF export as llama.cpp's minimax-m2 read back by moe.
 * transformers' perplexity of the pruned / merged / GPTQ outputs: test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { CheckpointError } from '../../src/errors';
import { openGgufModel } from '../../src/gguf/source';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { readGguf } from '../../src/io/gguf-reader';
import type { Architecture } from '../../src/model/arch';
import type { GqaSpec } from '../../src/model/forward/attention';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { forwardSpec } from '../../src/model/forward/spec';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { lossOf, maxDiff } from '../golden-math';
import { withByteTokenizer } from './byte-tokenizer';
import { goldenWindows } from './golden-case';

const CASES = ['minimax_m2', 'minimax_m2-fp8'];

function golden(c: string) {
  const r = new TensorReader(openTensorFile(path.join(GOLDEN, c, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  const [B, T, V] = r.ref('logits').shape;
  const [L, N, k] = r.ref('router_topk').shape;
  const topk = Int32Array.from(new BigInt64Array(r.bytes('router_topk').slice().buffer), Number);
  const logits = r.f32('logits');
  r.close();
  const info = JSON.parse(fs.readFileSync(path.join(GOLDEN, c, 'golden.json'), 'utf8'));
  return { ids, logits, B, T, V, L, N, k, topk, loss: info.loss as number, info };
}

async function run(dir: string, be: Backend, patch?: (a: Architecture) => void) {
  const g = golden(path.basename(dir));
  const ckpt = openCheckpoint(dir);
  const arch = loadArchitecture(ckpt);
  patch?.(arch);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(g.B * g.T, g.V);
  const experts: Int32Array[] = [];
  await new ForwardPass(reader, arch, be).run(g.ids, g.B, g.T, sink, {
    router: (l, r) => (experts[l] = r.experts.slice()),
  });
  reader.close();
  return { logits, experts, g };
}

describe.each(CASES)('the golden %s checkpoint', (c) => {
  const dir = path.join(GOLDEN, c);

  test("router top-k equals transformers' on every token of every layer; logits within 1e-3, loss within 2e-4", async () => {
    const { logits, experts, g } = await run(dir, new RefBackend());
    expect([g.L, g.N, g.k]).toEqual([2, 32, 2]);
    for (let l = 0; l < g.L; l++)
      expect(Array.from(experts[l])).toEqual(Array.from(g.topk.subarray(l * g.N * g.k, (l + 1) * g.N * g.k)));
    expect(maxDiff(logits, g.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, g.ids, g.B, g.T, g.V) - g.loss)).toBeLessThanOrEqual(2e-4);
  });
});

describe('MiniMax-M2 rules', () => {
  const dir = path.join(GOLDEN, 'minimax_m2');
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  test('onnx backend: logits within 1e-3, loss within 2e-4', async () => {
    const { logits, g } = await run(dir, onnx);
    expect(maxDiff(logits, g.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, g.ids, g.B, g.T, g.V) - g.loss)).toBeLessThanOrEqual(2e-4);
  });

  test('without the selection bias, with full rotary or with per-head q/k norms, the logits move > 0.05', async () => {
    const noBias = (a: Architecture) => {
      const r = a.routing;
      Object.defineProperty(a, 'routing', { value: { ...r, correctionBias: false } });
    };
    const withSpec = (change: Partial<GqaSpec>) => (a: Architecture) => {
      const spec = a.attentionSpec.bind(a);
      a.attentionSpec = (rope, eps) => ({ ...(spec(rope, eps) as GqaSpec), ...change });
    };
    const g = golden('minimax_m2');
    for (const patch of [noBias, withSpec({ ropeDim: 16 }), withSpec({ qkNorm: 'head' })]) {
      const { logits, experts } = await run(dir, new RefBackend(), patch);
      expect(maxDiff(logits, g.logits)).toBeGreaterThan(0.05);
      if (patch === noBias) {
        // transformers recorded how many tokens the bias changes: the same tokens change here
        const changed = [0, 1]
          .map((l) => {
            let n = 0;
            for (let t = 0; t < g.N; t++) {
              const a = Array.from(experts[l].subarray(t * 2, t * 2 + 2)).sort();
              const b = Array.from(g.topk.subarray((l * g.N + t) * 2, (l * g.N + t) * 2 + 2)).sort();
              if (a[0] !== b[0] || a[1] !== b[1]) n++;
            }
            return n;
          })
          .reduce((x, y) => x + y);
        expect(changed).toBe(g.info.checks.tokens_where_the_selection_bias_changed_the_choice);
      }
    }
  });

  test('config: rotary dims as transformers 5.18 reads them; variants transformers does not build are refused', () => {
    const base = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const ropeDim = (c: Record<string, unknown>) => forwardSpec(architectureFor(c, dir)).ropeDim;
    expect(ropeDim(base)).toBe(8);
    // the released checkpoints: rotary_dim and rope_theta only (MiniMax-M2: 64 of 128)
    const { partial_rotary_factor: _p, rope_parameters: _r, ...hub } = base;
    expect(ropeDim({ ...hub, rotary_dim: 12, rope_theta: 5e6 })).toBe(12);
    expect(ropeDim({ ...hub })).toBe(8);
    // rope_parameters.partial_rotary_factor first, then partial_rotary_factor, then rotary_dim
    expect(ropeDim({ ...hub, partial_rotary_factor: 0.25 })).toBe(4);
    expect(ropeDim({ ...base, rope_parameters: { rope_theta: 1e4, partial_rotary_factor: 1 } })).toBe(16);
    const { rotary_dim: _d, ...none } = hub;
    expect(ropeDim(none)).toBe(16);
    for (const [set, msg] of [
      [{ scoring_func: 'softmax' }, 'scoring_func "softmax" is not MiniMax-M2\'s sigmoid routing'],
      [{ qk_norm_type: 'per_head' }, 'without its per_layer q/k norm'],
      [{ use_qk_norm: false }, 'without its per_layer q/k norm'],
      [{ shared_intermediate_size: 16 }, 'has no shared expert'],
      [{ rotary_dim: 5 }, 'the rotary dimension 5 is not an even number'],
    ] as const) {
      const make = () => architectureFor({ ...hub, ...set }, dir);
      expect(make).toThrow(CheckpointError);
      expect(make).toThrow(msg);
    }
  });

  test('moe inspect: parameters and routing', () => {
    const r = inspect({ model: dir });
    expect(r.params_total).toBe(golden('minimax_m2').info.params_total);
    expect(r.params_experts).toBe(2 * 8 * 3 * 16 * 32);
    expect(r.extra_tensors).toBe(0);
    expect(formatInspect(r)).toMatch(/routing\s+sigmoid, top-2, renormalised, selection bias/);
    const a = architectureFor(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), dir);
    expect(a.classify('model.layers.1.block_sparse_moe.e_score_correction_bias')).toEqual({
      kind: 'router_bias',
      layer: 1,
    });
    expect(a.classify('model.layers.0.self_attn.q_norm.weight')).toEqual({ kind: 'norm', layer: 0, name: 'q_norm' });
    expect(a.expertKey(0, 3, 'up')).toBe('model.layers.0.block_sparse_moe.experts.3.w3.weight');
  });
});

describe('commands on the goldens', () => {
  const work = tmpDir('moe-minimax-');
  const data = path.join(work, 'ids.json');
  const stats: Record<string, string> = {};
  beforeAll(async () => {
    const { ids, B, T } = golden('minimax_m2');
    const rows = goldenWindows({ ids, B, T });
    fs.writeFileSync(data, JSON.stringify([...rows, rows[0].slice().reverse(), rows[1].slice().reverse()]));
    for (const c of CASES) {
      stats[c] = path.join(work, `${c}-stats`);
      await calibrate({ model: path.join(GOLDEN, c), output: stats[c], data, seqLen: T, backend: 'ref' }, quiet);
    }
  });
  const evalOf = async (model: string) => (await evalCommand({ model, data, seqLen: 16 }, quiet)).perplexity;

  test('prune slices the selection bias with the router rows; FP8 experts stay FP8', async () => {
    for (const c of CASES) {
      const src = path.join(GOLDEN, c);
      const out = path.join(work, `${c}-pruned`);
      await prune({ model: src, stats: stats[c], method: 'frequency', keep: 5, output: out, backend: 'ref' }, quiet);
      const ckpt = openCheckpoint(out);
      const arch = loadArchitecture(ckpt);
      expect(arch.numExperts).toBe(5);
      const a = new TensorReader(ckpt);
      const b = new TensorReader(openCheckpoint(src));
      for (const l of [0, 1]) {
        // each kept expert's router row and selection bias moved together
        const bias = a.f32(`model.layers.${l}.block_sparse_moe.e_score_correction_bias`);
        const srcBias = b.f32(`model.layers.${l}.block_sparse_moe.e_score_correction_bias`);
        const rows = a.f32(`model.layers.${l}.block_sparse_moe.gate.weight`);
        const srcRows = b.f32(`model.layers.${l}.block_sparse_moe.gate.weight`);
        for (let e = 0; e < 5; e++) {
          const j = srcBias.indexOf(bias[e]);
          expect(j).toBeGreaterThanOrEqual(0);
          expect(Array.from(rows.subarray(e * 32, e * 32 + 32))).toEqual(
            Array.from(srcRows.subarray(j * 32, j * 32 + 32)),
          );
        }
      }
      if (c.endsWith('fp8')) {
        expect(ckpt.config.quantization_config).toMatchObject({ quant_method: 'fp8', weight_block_size: [24, 24] });
        expect(ckpt.tensors.get('model.layers.1.block_sparse_moe.experts.4.w2.weight')!.fp8?.weight.dtype).toBe(
          'F8_E4M3',
        );
      }
      a.close();
      b.close();
    }
  });

  test('merge, and quantize in both safetensors formats: the outputs re-open and evaluate', async () => {
    const src = path.join(GOLDEN, 'minimax_m2');
    const merged = path.join(work, 'merged');
    await merge(
      { model: src, stats: stats.minimax_m2, method: 'msmoe', keep: 4, output: merged, backend: 'ref' },
      quiet,
    );
    expect(loadArchitecture(openCheckpoint(merged)).numExperts).toBe(4);
    const packed = path.join(work, 'packed');
    const deq = path.join(work, 'dequantized');
    await quantize({ model: src, output: packed, bits: 4, method: 'rtn', format: 'packed' }, quiet);
    await quantize({ model: src, output: deq, bits: 4, method: 'rtn', format: 'dequantized' }, quiet);
    const [p0, pm, pp, pd] = [await evalOf(src), await evalOf(merged), await evalOf(packed), await evalOf(deq)];
    expect(openCheckpoint(packed).config.quantization_config).toMatchObject({ quant_method: 'moe-packed' });
    expect(Math.abs(pp / pd - 1)).toBeLessThan(1e-3);
    expect(Math.abs(pp / p0 - 1)).toBeGreaterThan(0); // the weights changed
    for (const p of [pm, pp, pd]) expect(Number.isFinite(p)).toBe(true);
  });
});

describe('GGUF (llama.cpp minimax-m2)', () => {
  let file: string;
  let warnings: string[];
  const src = withByteTokenizer(path.join(GOLDEN, 'minimax_m2'));
  beforeAll(async () => {
    warnings = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    file = (await exportGguf({ model: src, output: path.join(tmpDir(), 'mm.gguf'), type: 'F32' }, ctx)).output;
  });

  test("the keys and tensors llama.cpp's minimax-m2 loads", () => {
    const g = readGguf(file);
    const m = g.metadata;
    const want: Record<string, unknown> = {
      'general.architecture': 'minimax-m2',
      'minimax-m2.block_count': 2,
      'minimax-m2.embedding_length': 32,
      'minimax-m2.feed_forward_length': 16,
      'minimax-m2.expert_feed_forward_length': 16,
      'minimax-m2.expert_count': 8,
      'minimax-m2.expert_used_count': 2,
      'minimax-m2.expert_gating_func': 2,
      'minimax-m2.attention.head_count': 4,
      'minimax-m2.attention.head_count_kv': 2,
      'minimax-m2.attention.key_length': 16,
      'minimax-m2.attention.value_length': 16,
      'minimax-m2.rope.dimension_count': 8,
      'minimax-m2.rope.freq_base': 10000,
      // the goldens' stand-in tokenizer has GPT-2's regex; MiniMax-M2's own (a Split, then bytes) is "minimax-m2"
      'tokenizer.ggml.pre': 'gpt-2',
    };
    for (const [k, v] of Object.entries(want)) expect([k, m.get(k)]).toEqual([k, v]);
    expect(warnings).toEqual([]);
    const shapes = Object.fromEntries(g.tensors.map((t) => [t.name, t.shape]));
    expect(
      Object.keys(shapes)
        .filter((n) => n.startsWith('blk.1.'))
        .sort(),
    ).toEqual(
      [
        'attn_k.weight',
        'attn_k_norm.weight',
        'attn_norm.weight',
        'attn_output.weight',
        'attn_q.weight',
        'attn_q_norm.weight',
        'attn_v.weight',
        'exp_probs_b.bias',
        'ffn_down_exps.weight',
        'ffn_gate_exps.weight',
        'ffn_gate_inp.weight',
        'ffn_norm.weight',
        'ffn_up_exps.weight',
      ].map((n) => `blk.1.${n}`),
    );
    expect(shapes['blk.0.attn_q_norm.weight']).toEqual([64]);
    expect(shapes['blk.0.attn_k_norm.weight']).toEqual([32]);
    expect(shapes['blk.0.attn_q.weight']).toEqual([64, 32]);
    expect(shapes['blk.0.exp_probs_b.bias']).toEqual([8]);
    expect(shapes['blk.0.ffn_gate_exps.weight']).toEqual([8, 16, 32]);
    expect(shapes['blk.0.ffn_down_exps.weight']).toEqual([8, 32, 16]);
  });

  test("read back: every tensor the source's (q/k not permuted: NEOX rotary), transformers' logits, moe eval equal", async () => {
    const g = openGgufModel(file);
    expect(g.arch.modelType).toBe('minimax_m2');
    expect(forwardSpec(g.arch).ropeDim).toBe(8);
    const a = new TensorReader(openCheckpoint(src));
    for (const name of [
      'model.layers.0.self_attn.q_proj.weight',
      'model.layers.1.self_attn.k_norm.weight',
      'model.layers.1.block_sparse_moe.e_score_correction_bias',
      'model.layers.0.block_sparse_moe.experts.5.w3.weight',
    ])
      expect(Array.from(g.reader.f32(name))).toEqual(Array.from(a.f32(name)));
    a.close();
    const gd = golden('minimax_m2');
    const { sink, logits } = fullLogits(gd.B * gd.T, gd.V);
    await new ForwardPass(g.reader, g.arch, new RefBackend()).run(gd.ids, gd.B, gd.T, sink);
    g.reader.close();
    expect(maxDiff(logits, gd.logits)).toBeLessThanOrEqual(1e-3);
    const data = path.join(tmpDir(), 'ids.json');
    const rows = [Array.from(gd.ids.subarray(0, 16)), Array.from(gd.ids.subarray(16, 32))];
    fs.writeFileSync(data, JSON.stringify(rows));
    const [e1, e2] = [
      await evalCommand({ model: src, data, seqLen: 16 }, quiet),
      await evalCommand({ model: file, data, seqLen: 16 }, quiet),
    ];
    expect(Math.abs(e2.perplexity / e1.perplexity - 1)).toBeLessThan(1e-5);
  });

  test('the FP8 golden exports F32 with its dequantized weights', async () => {
    const out = path.join(tmpDir(), 'fp8.gguf');
    await exportGguf(
      { model: withByteTokenizer(path.join(GOLDEN, 'minimax_m2-fp8')), output: out, type: 'F32' },
      quiet,
    );
    const g = openGgufModel(out);
    const gd = golden('minimax_m2-fp8');
    const { sink, logits } = fullLogits(gd.B * gd.T, gd.V);
    await new ForwardPass(g.reader, g.arch, new RefBackend()).run(gd.ids, gd.B, gd.T, sink);
    g.reader.close();
    expect(maxDiff(logits, gd.logits)).toBeLessThanOrEqual(1e-3);
  });
});
