/**
 * Qwen3-Next and Qwen3.5-MoE as GGUF (issue 19): the keys and tensors llama.cpp's qwen3next and qwen35moe load
 * (convert_hf_to_gguf.py Qwen3NextModel / Qwen3_5MoeTextModel; src/models/qwen3next.cpp, qwen35moe.cpp): the
 * Gated DeltaNet's ssm.* sizes and tensors (in_proj_qkvz split into attn_qkv and attn_gate, A_log as −exp, the
 * zero-centred norms as 1 + w, Qwen3.5's value heads reordered to llama.cpp's tiled broadcast), the layer pattern as
 * full_attention_interval, the rotary dimension count and Qwen3.5's mrope sections; the nested Qwen3.5 checkpoint
 * written as its text model only. The goldens' F32 files read back by moe give transformers' logits, and `moe eval`
 * of a Q8_0 file is close to the source's (within 2% on these random weights). llama.cpp's perplexity on such
 * files, of trained models: bench/llama-gguf-qwen-hybrid.mjs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { inspect } from '../../src/commands/inspect';
import { ggufModel } from '../../src/gguf/arch';
import { GGML_TYPE_ID, GgmlType } from '../../src/gguf/quants';
import { openGgufModel } from '../../src/gguf/source';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { GgufFile, readGguf } from '../../src/io/gguf-reader';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { PRESETS } from '../../src/synth/presets';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const TYPE_BY_ID = new Map(Object.entries(GGML_TYPE_ID).map(([k, v]) => [v, k as GgmlType]));
const CASES = ['qwen3_next', 'qwen3_5_moe_text', 'qwen3_5_moe'] as const;
type Case = (typeof CASES)[number];
const ARCH: Record<Case, string> = { qwen3_next: 'qwen3next', qwen3_5_moe_text: 'qwen35moe', qwen3_5_moe: 'qwen35moe' };

/** A byte-level BPE tokenizer.json of 256 single-byte tokens (the goldens have none; GGUF needs one). */
function withTokenizer(c: Case): string {
  const dir = path.join(tmpDir(), c);
  fs.cpSync(path.join(GOLDEN, c), dir, { recursive: true });
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  let extra = 0;
  const chars = [...Array(256).keys()].map((b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
  const tok = {
    model: { type: 'BPE', vocab: Object.fromEntries(chars.map((ch, i) => [ch, i])), merges: [] },
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, use_regex: true },
    added_tokens: [],
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
  return dir;
}

function golden(c: Case): { ids: Int32Array; logits: Float32Array; B: number; T: number } {
  const g = new TensorReader(openTensorFile(path.join(GOLDEN, c, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(g.bytes('input_ids').slice().buffer), Number);
  const logits = g.f32('logits');
  const [B, T] = g.ref('logits').shape;
  g.close();
  return { ids, logits, B, T };
}

const files: Partial<Record<Case, { dir: string; f32: string; q8: string; warnings: string[] }>> = {};

beforeAll(async () => {
  for (const c of CASES) {
    const dir = withTokenizer(c);
    const warnings: string[] = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    const out = (t: string) => path.join(tmpDir(), `${c}-${t}.gguf`);
    const f32 = (await exportGguf({ model: dir, output: out('f32'), type: 'F32' }, ctx)).output;
    const q8 = (await exportGguf({ model: dir, output: out('q8'), type: 'Q8_0' }, ctx)).output;
    files[c] = { dir, f32, q8, warnings: warnings.slice(0, warnings.length / 2) };
  }
}, 60_000);

describe.each(CASES)('%s', (c) => {
  let g: GgufFile;
  beforeAll(() => {
    g = readGguf(files[c]!.f32);
  });

  test("the keys llama.cpp's loader reads", () => {
    const a = ARCH[c];
    const m = g.metadata;
    const want: Record<string, unknown> = {
      'general.architecture': a,
      [`${a}.block_count`]: 4,
      [`${a}.embedding_length`]: 64,
      [`${a}.attention.head_count`]: 4,
      [`${a}.attention.head_count_kv`]: 2,
      [`${a}.attention.key_length`]: 16,
      [`${a}.attention.value_length`]: 16,
      [`${a}.rope.dimension_count`]: 4, // partial_rotary_factor 0.25 of 16
      [`${a}.rope.freq_base`]: 10000,
      [`${a}.expert_count`]: 8,
      [`${a}.expert_used_count`]: 2,
      [`${a}.expert_feed_forward_length`]: 8,
      [`${a}.expert_shared_feed_forward_length`]: 16,
      [`${a}.ssm.conv_kernel`]: 4,
      [`${a}.ssm.state_size`]: 8,
      [`${a}.ssm.group_count`]: 2,
      [`${a}.ssm.time_step_rank`]: 4,
      [`${a}.ssm.inner_size`]: 32,
      [`${a}.full_attention_interval`]: 4, // linear, linear, linear, full
    };
    for (const [k, v] of Object.entries(want)) expect([k, m.get(k)]).toEqual([k, v]);
    expect(m.get(`${a}.attention.layer_norm_rms_epsilon`)).toBeCloseTo(1e-6, 12);
    if (a === 'qwen35moe') expect(m.get('qwen35moe.rope.dimension_sections')).toEqual([1, 1, 0, 0]);
    else expect(m.get('qwen3next.feed_forward_length')).toBe(48);
    expect(m.has(`${a}.attention.recurrent_layers`)).toBe(false);
    expect(m.get('tokenizer.ggml.pre')).toBe('gpt-2');
    // The nested checkpoint: its text model only, and a warning that says so.
    expect(files[c]!.warnings.join('\n')).toEqual(
      c === 'qwen3_5_moe' ? expect.stringMatching(/vision tower .* not written/) : '',
    );
  });

  test('tensor names, types and shapes (PyTorch order), norms and the DeltaNet scalars in F32', () => {
    const want: Record<string, [GgmlType, number[]]> = {
      'token_embd.weight': ['F32', [256, 64]],
      'output_norm.weight': ['F32', [64]],
      'output.weight': ['F32', [256, 64]],
    };
    for (let l = 0; l < 4; l++) {
      const b = `blk.${l}`;
      Object.assign(want, {
        [`${b}.attn_norm.weight`]: ['F32', [64]],
        [`${b}.post_attention_norm.weight`]: ['F32', [64]],
        [`${b}.ffn_gate_inp.weight`]: ['F32', [8, 64]],
        [`${b}.ffn_gate_exps.weight`]: ['F32', [8, 8, 64]],
        [`${b}.ffn_up_exps.weight`]: ['F32', [8, 8, 64]],
        [`${b}.ffn_down_exps.weight`]: ['F32', [8, 64, 8]],
        [`${b}.ffn_gate_shexp.weight`]: ['F32', [16, 64]],
        [`${b}.ffn_up_shexp.weight`]: ['F32', [16, 64]],
        [`${b}.ffn_down_shexp.weight`]: ['F32', [64, 16]],
        [`${b}.ffn_gate_inp_shexp.weight`]: ['F32', [64]],
      });
      if (l === 3)
        Object.assign(want, {
          [`${b}.attn_q.weight`]: ['F32', [128, 64]], // query and gate per head
          [`${b}.attn_k.weight`]: ['F32', [32, 64]],
          [`${b}.attn_v.weight`]: ['F32', [32, 64]],
          [`${b}.attn_output.weight`]: ['F32', [64, 64]],
          [`${b}.attn_q_norm.weight`]: ['F32', [16]],
          [`${b}.attn_k_norm.weight`]: ['F32', [16]],
        });
      else {
        Object.assign(want, {
          [`${b}.attn_qkv.weight`]: ['F32', [64, 64]], // 2·2·8 + 4·8 channels
          [`${b}.attn_gate.weight`]: ['F32', [32, 64]],
          [`${b}.ssm_conv1d.weight`]: ['F32', [64, 4]],
          [`${b}.ssm_dt.bias`]: ['F32', [4]],
          [`${b}.ssm_a`]: ['F32', [4]],
          [`${b}.ssm_norm.weight`]: ['F32', [8]],
          [`${b}.ssm_out.weight`]: ['F32', [64, 32]],
        });
        if (ARCH[c] === 'qwen3next') want[`${b}.ssm_ba.weight`] = ['F32', [8, 64]];
        else
          Object.assign(want, {
            [`${b}.ssm_beta.weight`]: ['F32', [4, 64]],
            [`${b}.ssm_alpha.weight`]: ['F32', [4, 64]],
          });
      }
    }
    const got = Object.fromEntries(g.tensors.map((t) => [t.name, [TYPE_BY_ID.get(t.type), t.shape]]));
    expect(got).toEqual(want);
    const q8 = readGguf(files[c]!.q8);
    const types = new Map(q8.tensors.map((t) => [t.name, TYPE_BY_ID.get(t.type)]));
    for (const n of ['blk.0.attn_qkv.weight', 'blk.0.attn_gate.weight', 'blk.0.ssm_out.weight', 'blk.3.attn_q.weight'])
      expect([n, types.get(n)]).toEqual([n, 'Q8_0']);
    for (const n of ['blk.0.ssm_conv1d.weight', 'blk.0.ssm_a', 'blk.0.ssm_dt.bias', 'blk.0.ssm_norm.weight'])
      expect([n, types.get(n)]).toEqual([n, 'F32']);
  });

  test("the values as llama.cpp reads them: 1 + w norms, ssm_a = −exp(A_log), the conv's channel order", () => {
    const src = openCheckpoint(files[c]!.dir);
    const r = new TensorReader(src);
    const buf = fs.readFileSync(files[c]!.f32);
    const f32 = (name: string) => {
      const t = g.tensors.find((x) => x.name === name)!;
      const n = t.shape.reduce((a, b) => a * b, 1);
      return new Float32Array(buf.buffer.slice(buf.byteOffset + t.offset, buf.byteOffset + t.offset + 4 * n));
    };
    try {
      const p = 'model.layers.0';
      const norm = r.f32(`${p}.input_layernorm.weight`);
      expect(f32('blk.0.attn_norm.weight')).toEqual(norm.map((w) => w + 1));
      expect(f32('blk.0.ssm_norm.weight')).toEqual(r.f32(`${p}.linear_attn.norm.weight`)); // the gated norm: as is
      const aLog = r.f32(`${p}.linear_attn.A_log`);
      const dt = r.f32(`${p}.linear_attn.dt_bias`);
      // value head n of the file is transformers' head hf(n): the same for qwen3next, tiled for qwen35moe
      const hf = (n: number) => (ARCH[c] === 'qwen3next' ? n : (n % 2) * 2 + Math.floor(n / 2));
      expect(f32('blk.0.ssm_a')).toEqual(Float32Array.from([0, 1, 2, 3], (n) => -Math.exp(aLog[hf(n)])));
      expect(f32('blk.0.ssm_dt.bias')).toEqual(Float32Array.from([0, 1, 2, 3], (n) => dt[hf(n)]));
      // conv1d [64, 1, 4] → [64, 4]: q and k channels (32) unchanged, v channels by value head (8 each)
      const conv = r.f32(`${p}.linear_attn.conv1d.weight`);
      const gconv = f32('blk.0.ssm_conv1d.weight');
      for (let ch = 0; ch < 64; ch++) {
        const from = ch < 32 ? ch : 32 + hf(Math.floor((ch - 32) / 8)) * 8 + ((ch - 32) % 8);
        expect(gconv.subarray(ch * 4, ch * 4 + 4)).toEqual(conv.subarray(from * 4, from * 4 + 4));
      }
      const qkv = f32('blk.0.attn_qkv.weight');
      const gate = f32('blk.0.attn_gate.weight');
      if (ARCH[c] === 'qwen3next') {
        // in_proj_qkvz per key head g: [q 8 | k 8 | v 16 | z 16] (rows of 64)
        const w = r.f32(`${p}.linear_attn.in_proj_qkvz.weight`);
        const row = (m: Float32Array, i: number) => m.subarray(i * 64, (i + 1) * 64);
        for (let g2 = 0; g2 < 2; g2++)
          for (let i = 0; i < 8; i++) {
            expect(row(qkv, g2 * 8 + i)).toEqual(row(w, g2 * 48 + i)); // q
            expect(row(qkv, 16 + g2 * 8 + i)).toEqual(row(w, g2 * 48 + 8 + i)); // k
          }
        for (let g2 = 0; g2 < 2; g2++)
          for (let i = 0; i < 16; i++) {
            expect(row(qkv, 32 + g2 * 16 + i)).toEqual(row(w, g2 * 48 + 16 + i)); // v
            expect(row(gate, g2 * 16 + i)).toEqual(row(w, g2 * 48 + 32 + i)); // z
          }
      } else {
        const z = r.f32(`${p}.linear_attn.in_proj_z.weight`);
        for (let n = 0; n < 4; n++)
          expect(gate.subarray(n * 8 * 64, (n + 1) * 8 * 64)).toEqual(z.subarray(hf(n) * 8 * 64, (hf(n) + 1) * 8 * 64));
        const out = r.f32(`${p}.linear_attn.out_proj.weight`); // [64, 32]: columns by value head
        const gout = f32('blk.0.ssm_out.weight');
        for (let n = 0; n < 4; n++) for (let e = 0; e < 8; e++) expect(gout[n * 8 + e]).toBe(out[hf(n) * 8 + e]);
      }
    } finally {
      r.close();
    }
  });

  test("moe reads the F32 file back: the config, every tensor, and transformers' logits", async () => {
    const src = openCheckpoint(files[c]!.dir);
    const arch = loadArchitecture(src);
    const gg = openGgufModel(files[c]!.f32);
    const r = new TensorReader(src);
    try {
      const cfg = gg.ckpt.config;
      expect(cfg.model_type).toBe(c === 'qwen3_next' ? 'qwen3_next' : 'qwen3_5_moe_text');
      for (const k of ['layer_types', 'linear_num_value_heads', 'linear_key_head_dim', 'head_dim', 'num_experts'])
        expect([k, cfg[k]]).toEqual([k, src.config[k]]);
      expect(cfg.partial_rotary_factor).toBe(0.25);
      if (c !== 'qwen3_next') expect(cfg.rope_parameters).toMatchObject({ mrope_section: [1, 1, 0] });
      const names = arch.schema().map((s) => s.name);
      expect(gg.arch.schema().map((s) => s.name)).toEqual(names);
      // 1 + w and −exp(A_log) undone in float32: within an ulp of 1
      const far = names.filter((n) => maxDiff(gg.reader.f32(n), r.f32(n)) > 2e-7);
      expect(far).toEqual([]);
      if (c !== 'qwen3_5_moe') {
        // inspect FILE.gguf: the source's layout and parameters (the nested source also counts its vision tower)
        const [want, got] = [inspect({ model: files[c]!.dir }), inspect({ model: files[c]!.q8 })];
        for (const k of ['model_type', 'num_layers', 'moe_layers', 'top_k', 'params_total', 'params_experts'] as const)
          expect([k, got[k]]).toEqual([k, want[k]]);
      }
      const { ids, logits, B, T } = golden(c);
      const { sink, logits: got } = fullLogits(B * T, gg.arch.vocab);
      await new ForwardPass(gg.reader, gg.arch, new RefBackend()).run(ids, B, T, sink);
      expect(maxDiff(got, logits)).toBeLessThanOrEqual(1e-3);
    } finally {
      r.close();
      gg.reader.close();
    }
  });
});

test('moe eval of the Q8_0 files: within 2% of the source (random golden weights)', async () => {
  const data = path.join(tmpDir(), 'ids.json');
  fs.writeFileSync(data, JSON.stringify([Array.from({ length: 64 }, (_, i) => (i * 37) % 256)]));
  for (const c of CASES) {
    const ppl = async (model: string) => (await evalCommand({ model, data, seqLen: 64 }, quiet)).perplexity;
    const ratio = (await ppl(files[c]!.q8)) / (await ppl(files[c]!.dir));
    expect([c, Math.abs(ratio - 1) < 2e-2]).toEqual([c, true]);
  }
}, 60_000);

test('what llama.cpp cannot run is refused; layer types with no interval as recurrent_layers; warnings', () => {
  const model = (config: Record<string, unknown>) => {
    const a = architectureFor(config, tmpDir());
    return ggufModel(a, new Map(a.schema().map((t) => [t.name, t.shape])));
  };
  const next = PRESETS.qwen3_next as Record<string, unknown>;
  expect(() => model({ ...next, mlp_only_layers: [1] })).toThrow(
    "GGUF output for qwen3_next with dense layers (mlp_only_layers), which llama.cpp's qwen3next cannot run",
  );
  expect(() => model({ ...next, linear_value_head_dim: 16 })).toThrow(
    /linear_key_head_dim 8 ≠ linear_value_head_dim 16/,
  );
  expect(() => model({ ...next, shared_expert_intermediate_size: 0 })).toThrow(/without a shared expert/);
  const types = ['linear_attention', 'full_attention', 'full_attention'];
  const odd = model({ ...next, num_hidden_layers: 3, layer_types: types });
  const key = odd.metadata.find(([k]) => k === 'qwen3next.attention.recurrent_layers');
  expect(key?.[1]).toEqual({ type: 'array', of: 'bool', value: [true, false, false] });
  expect(odd.metadata.some(([k]) => k === 'qwen3next.full_attention_interval')).toBe(false);
  expect(model({ ...next, norm_topk_prob: false }).warnings.join('\n')).toMatch(
    /llama\.cpp always renormalises the top-k routing weights of qwen3next/,
  );
  // Qwen3.5 without mrope_section: the interleaved split of the rotary pairs (2 pairs: [1, 1, 0])
  const q35 = PRESETS.qwen3_5_moe_text as Record<string, unknown>;
  const sections = (rope: Record<string, unknown>) =>
    model({ ...q35, rope_parameters: rope }).metadata.find(([k]) => k === 'qwen35moe.rope.dimension_sections')?.[1];
  expect(sections({ rope_theta: 10000 })).toMatchObject({ value: [1, 1, 0, 0] });
  expect(sections({ rope_theta: 10000, mrope_section: [2, 0, 0] })).toMatchObject({ value: [2, 0, 0, 0] });
});
