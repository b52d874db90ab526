/**
 * GLM-4.5 (glm4_moe) as GGUF: the keys and tensors llama.cpp's "glm4moe" loads (convert_hf_to_gguf.py
 * Glm4MoeModel, src/models/glm4-moe.cpp: rope.dimension_count the rotary part, NEOX rotary so q/k rows are not
 * permuted, post_attention_norm, exp_probs_b, shared experts, the leading dense layer, the generic expert_group_*
 * keys), and the file read back by moe: the config, every tensor equal to the source's and the golden logits, and
 * `moe eval FILE.gguf` equal to `moe eval` of the checkpoint. llama.cpp's perplexity of such files:
 * bench/llama-gguf-glm.mjs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { GGML_TYPE_ID, GgmlType } from '../../src/gguf/quants';
import { openGgufModel } from '../../src/gguf/source';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { GgufFile, readGguf } from '../../src/io/gguf-reader';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';
import { withByteTokenizer } from '../model/byte-tokenizer';

const TYPE_BY_ID = new Map(Object.entries(GGML_TYPE_ID).map(([k, v]) => [v, k as GgmlType]));

function golden(c: string) {
  const r = new TensorReader(openTensorFile(path.join(GOLDEN, c, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  const [B, T] = r.ref('logits').shape;
  const logits = r.f32('logits');
  r.close();
  return { ids, B, T, logits };
}

describe('glm4_moe to GGUF F32', () => {
  const model = withByteTokenizer(path.join(GOLDEN, 'glm4_moe'));
  let file: string;
  let g: GgufFile;
  let warnings: string[];
  beforeAll(async () => {
    warnings = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    file = (await exportGguf({ model, output: path.join(tmpDir(), 'glm.gguf'), type: 'F32' }, ctx)).output;
    g = readGguf(file);
  });

  test("the keys llama.cpp's glm4moe reads", () => {
    const m = g.metadata;
    const want: Record<string, unknown> = {
      'general.architecture': 'glm4moe',
      'glm4moe.block_count': 3,
      'glm4moe.embedding_length': 64,
      'glm4moe.feed_forward_length': 32,
      'glm4moe.expert_feed_forward_length': 8,
      'glm4moe.expert_count': 8,
      'glm4moe.expert_used_count': 2,
      'glm4moe.expert_shared_count': 1,
      'glm4moe.leading_dense_block_count': 1,
      'glm4moe.expert_gating_func': 2,
      'glm4moe.expert_weights_norm': true,
      'glm4moe.expert_group_count': 2,
      'glm4moe.expert_group_used_count': 1,
      'glm4moe.attention.head_count': 4,
      'glm4moe.attention.head_count_kv': 2,
      'glm4moe.attention.key_length': 24,
      'glm4moe.attention.value_length': 24,
      'glm4moe.rope.dimension_count': 12,
      'glm4moe.rope.freq_base': 10000,
    };
    for (const [k, v] of Object.entries(want)) expect([k, m.get(k)]).toEqual([k, v]);
    expect(m.get('glm4moe.expert_weights_scale')).toBeCloseTo(2.5, 6);
    expect(m.get('glm4moe.attention.layer_norm_rms_epsilon')).toBeCloseTo(1e-5, 9);
    // no MTP layer is written, so llama.cpp must not take the last block for one
    expect(m.has('glm4moe.nextn_predict_layers')).toBe(false);
    expect(warnings).toEqual([]);
  });

  test('tensor names, types and shapes (PyTorch order)', () => {
    const want: Record<string, [GgmlType, number[]]> = {
      'token_embd.weight': ['F32', [256, 64]],
      'output_norm.weight': ['F32', [64]],
      'output.weight': ['F32', [256, 64]],
    };
    for (const l of [0, 1, 2]) {
      const b = `blk.${l}`;
      Object.assign(want, {
        [`${b}.attn_norm.weight`]: ['F32', [64]],
        [`${b}.attn_q.weight`]: ['F32', [96, 64]],
        [`${b}.attn_q.bias`]: ['F32', [96]],
        [`${b}.attn_k.weight`]: ['F32', [48, 64]],
        [`${b}.attn_k.bias`]: ['F32', [48]],
        [`${b}.attn_v.weight`]: ['F32', [48, 64]],
        [`${b}.attn_v.bias`]: ['F32', [48]],
        [`${b}.attn_output.weight`]: ['F32', [64, 96]],
        [`${b}.attn_q_norm.weight`]: ['F32', [24]],
        [`${b}.attn_k_norm.weight`]: ['F32', [24]],
        [`${b}.post_attention_norm.weight`]: ['F32', [64]],
      });
      if (l === 0)
        Object.assign(want, {
          [`${b}.ffn_gate.weight`]: ['F32', [32, 64]],
          [`${b}.ffn_up.weight`]: ['F32', [32, 64]],
          [`${b}.ffn_down.weight`]: ['F32', [64, 32]],
        });
      else
        Object.assign(want, {
          [`${b}.ffn_gate_inp.weight`]: ['F32', [8, 64]],
          [`${b}.exp_probs_b.bias`]: ['F32', [8]],
          [`${b}.ffn_gate_exps.weight`]: ['F32', [8, 8, 64]],
          [`${b}.ffn_up_exps.weight`]: ['F32', [8, 8, 64]],
          [`${b}.ffn_down_exps.weight`]: ['F32', [8, 64, 8]],
          [`${b}.ffn_gate_shexp.weight`]: ['F32', [8, 64]],
          [`${b}.ffn_up_shexp.weight`]: ['F32', [8, 64]],
          [`${b}.ffn_down_shexp.weight`]: ['F32', [64, 8]],
        });
    }
    const got = Object.fromEntries(g.tensors.map((t) => [t.name, [TYPE_BY_ID.get(t.type), t.shape]]));
    expect(got).toEqual(want);
  });

  test('moe reads the file back: the config, every tensor equal to the source (q/k not permuted), the logits', async () => {
    const src = openCheckpoint(model);
    const arch = loadArchitecture(src);
    const gg = openGgufModel(file);
    const readSrc = new TensorReader(src);
    try {
      const c = gg.ckpt.config;
      expect(c.model_type).toBe('glm4_moe');
      const keys = ['head_dim', 'partial_rotary_factor', 'n_routed_experts', 'n_shared_experts', 'n_group'];
      for (const k of [...keys, 'topk_group', 'first_k_dense_replace', 'use_qk_norm', 'attention_bias'])
        expect([k, c[k]]).toEqual([k, src.config[k]]);
      expect(c.routed_scaling_factor).toBeCloseTo(2.5, 6);
      expect(gg.arch.routing).toEqual(arch.routing);
      const names = arch.schema().map((s) => s.name);
      expect(gg.arch.schema().map((s) => s.name)).toEqual(names);
      const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
      expect(names.filter((n) => !bytes(gg.reader.f32(n)).equals(bytes(readSrc.f32(n))))).toEqual([]);
      const gold = golden('glm4_moe');
      const { sink, logits } = fullLogits(gold.B * gold.T, arch.vocab);
      await new ForwardPass(gg.reader, gg.arch, new RefBackend()).run(gold.ids, gold.B, gold.T, sink);
      expect(maxDiff(logits, gold.logits)).toBeLessThanOrEqual(1e-3);
    } finally {
      readSrc.close();
      gg.reader.close();
    }
  });

  test('moe eval FILE.gguf equals moe eval of the checkpoint (F32), and of the FP8 golden written as F32', async () => {
    const gold = golden('glm4_moe');
    const data = path.join(tmpDir(), 'ids.json');
    const rows = [0, 1].map((b) => Array.from(gold.ids.subarray(b * gold.T, (b + 1) * gold.T)));
    fs.writeFileSync(data, JSON.stringify(rows));
    const opts = { data, seqLen: gold.T, backend: 'ref' as const };
    const a = await evalCommand({ model, ...opts }, quiet);
    const b = await evalCommand({ model: file, ...opts }, quiet);
    expect(Math.abs(b.perplexity / a.perplexity - 1)).toBeLessThan(1e-6);
    const fp8 = withByteTokenizer(path.join(GOLDEN, 'glm4_moe-fp8'));
    const out = await exportGguf({ model: fp8, output: path.join(tmpDir(), 'fp8.gguf'), type: 'F32' }, quiet);
    const c = await evalCommand({ model: fp8, ...opts }, quiet);
    const d = await evalCommand({ model: out.output, ...opts }, quiet);
    expect(Math.abs(d.perplexity / c.perplexity - 1)).toBeLessThan(1e-6);
  });
});
