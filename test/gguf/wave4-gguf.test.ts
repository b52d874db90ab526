/**
 * Issue 26's families as GGUF. llama.cpp's own perplexity of such files against moe eval: bench/llama-gguf-wave4.mjs.
 *
 * dots.llm1 (dots1) as GGUF: the keys and tensors llama.cpp's "dots1" loads (convert_hf_to_gguf.py Dots1Model,
 * src/models/dots1.cpp: NEOX rotary over the whole head so q/k rows are not permuted, q/k norms, the leading dense
 * layers, sigmoid routing with exp_probs_b and the expert_group_* keys, shared experts), the file read back by moe
 * (`moe eval FILE.gguf` equal to `moe eval` of the checkpoint), and what llama.cpp cannot load refused. llama.cpp's
 * own perplexity of such a file: within 1.4e-5 of moe eval (the note of issue 26).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { CheckpointError } from '../../src/errors';
import { readGguf } from '../../src/io/gguf-reader';
import { PRESETS } from '../../src/synth/presets';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { GOLDEN, makeSynth, quiet, tmpDir, writeRaw } from '../helpers';
import { byteTokenizer, withByteTokenizer } from '../model/byte-tokenizer';

describe('dots1 to GGUF F32', () => {
  const work = tmpDir('moe-dots1-gguf-');
  const data = path.join(work, 'ids.json');
  let model: string;
  beforeAll(async () => {
    // dots.llm1's shapes: as many key/value heads as query heads, no sliding layer; a byte tokenizer (256 ids)
    const set = { vocab_size: 256, num_key_value_heads: 4, sliding_window: null, max_window_layers: 3 };
    model = await makeSynth('dots1', path.join(work, 'model'), { set });
    fs.writeFileSync(path.join(model, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    let s = 3;
    const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s % 256);
    fs.writeFileSync(data, JSON.stringify([...Array(4)].map(() => [...Array(32)].map(rnd))));
  });

  test("the keys and tensors llama.cpp's dots1 reads; moe eval of the file equals moe eval of the checkpoint", async () => {
    const file = (await exportGguf({ model, output: path.join(work, 'd.gguf'), type: 'F32' }, quiet)).output;
    const g = readGguf(file);
    const m = g.metadata;
    expect({
      arch: m.get('general.architecture'),
      dense: m.get('dots1.leading_dense_block_count'),
      shared: m.get('dots1.expert_shared_count'),
      gating: m.get('dots1.expert_gating_func'),
      norm: m.get('dots1.expert_weights_norm'),
      scale: m.get('dots1.expert_weights_scale'),
      groups: [m.get('dots1.expert_group_count'), m.get('dots1.expert_group_used_count')],
      rot: m.get('dots1.rope.dimension_count'),
    }).toEqual({ arch: 'dots1', dense: 1, shared: 2, gating: 2, norm: true, scale: 2.5, groups: [2, 1], rot: 32 });
    const names = new Set(g.tensors.map((t) => t.name));
    for (const n of [
      'blk.1.exp_probs_b.bias',
      'blk.1.ffn_gate_shexp.weight',
      'blk.0.ffn_gate.weight',
      'blk.1.attn_q_norm.weight',
    ])
      expect(names.has(n)).toBe(true);
    const ppl = async (x: string) => (await evalCommand({ model: x, data, seqLen: 32 }, quiet)).perplexity;
    expect(Math.abs((await ppl(file)) / (await ppl(model)) - 1)).toBeLessThan(1e-6);
  });

  test('a GQA dots1 is refused (llama.cpp sizes k/v by the query heads), nothing written', async () => {
    const gqa = await makeSynth('dots1', path.join(work, 'gqa'), { set: { vocab_size: 256, sliding_window: null } });
    fs.writeFileSync(path.join(gqa, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    const out = path.join(work, 'gqa.gguf');
    const run = exportGguf({ model: gqa, output: out, type: 'F32' }, quiet);
    await expect(run).rejects.toThrow(CheckpointError);
    await expect(run).rejects.toThrow('as many key/value heads as query heads; this model has 2 of 4');
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe("hunyuan_v1_moe to GGUF F32 (Hunyuan-A13B as llama.cpp's hunyuan-moe)", () => {
  test('the alpha-raised rotary base, the q/k norms after it, the experts sized by feed_forward_length; read back equal', async () => {
    const model = withByteTokenizer(path.join(GOLDEN, 'hunyuan_v1_moe'));
    const file = (await exportGguf({ model, output: path.join(tmpDir(), 'h.gguf'), type: 'F32' }, quiet)).output;
    const g = readGguf(file);
    const m = g.metadata;
    expect(m.get('general.architecture')).toBe('hunyuan-moe');
    // rope_theta 10000, alpha 1000, head_dim 16: 10000 · 1000^(16/14), stored as float32
    expect(m.get('hunyuan-moe.rope.freq_base')).toBeCloseTo(Math.fround(10000 * 1000 ** (16 / 14)), 0);
    expect([m.get('hunyuan-moe.feed_forward_length'), m.get('hunyuan-moe.expert_shared_feed_forward_length')]).toEqual([
      16, 16,
    ]);
    const names = new Set(g.tensors.map((t) => t.name));
    for (const n of ['blk.0.attn_q_norm.weight', 'blk.1.attn_k_norm.weight', 'blk.1.ffn_up_shexp.weight'])
      expect(names.has(n)).toBe(true);
    const data = path.join(tmpDir(), 'ids.json');
    fs.writeFileSync(data, fs.readFileSync(path.join(GOLDEN, '..', 'reference', 'golden-data', 'eval.json')));
    const ppl = async (x: string) => (await evalCommand({ model: x, data, seqLen: 32 }, quiet)).perplexity;
    // the base goes through float32 in the file: the rotary differs by float32 rounding only
    expect(Math.abs((await ppl(file)) / (await ppl(model)) - 1)).toBeLessThan(1e-5);
  });
});

describe("ernie4_5_moe to GGUF F32 (ERNIE 4.5 as llama.cpp's ernie4_5-moe)", () => {
  test('the MoE layer keys, the [1, E] selection bias as exp_probs_b {E}; read back equal', async () => {
    const model = withByteTokenizer(path.join(GOLDEN, 'ernie4_5_moe'));
    const file = (await exportGguf({ model, output: path.join(tmpDir(), 'e.gguf'), type: 'F32' }, quiet)).output;
    const g = readGguf(file);
    const m = g.metadata;
    expect([
      m.get('general.architecture'),
      m.get('ernie4_5-moe.leading_dense_block_count'),
      m.get('ernie4_5-moe.interleave_moe_layer_step'),
      m.get('ernie4_5-moe.expert_shared_feed_forward_length'),
    ]).toEqual(['ernie4_5-moe', 1, 1, 32]);
    const byName = new Map(g.tensors.map((t) => [t.name, t]));
    expect(byName.get('blk.1.exp_probs_b.bias')!.shape).toEqual([8]);
    const data = path.join(tmpDir(), 'ids.json');
    fs.writeFileSync(data, fs.readFileSync(path.join(GOLDEN, '..', 'reference', 'golden-data', 'eval.json')));
    const ppl = async (x: string) => (await evalCommand({ model: x, data, seqLen: 32 }, quiet)).perplexity;
    expect(Math.abs((await ppl(file)) / (await ppl(model)) - 1)).toBeLessThan(1e-6);
  });

  test('MoE layers that stop before the last layer are refused', async () => {
    const set = { vocab_size: 256, moe_layer_end_index: 1 }; // layers 0 and 2 dense, 1 MoE
    const model = await makeSynth('ernie4_5_moe', path.join(tmpDir(), 'm'), { set });
    fs.writeFileSync(path.join(model, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    const out = path.join(tmpDir(), 'e.gguf');
    await expect(exportGguf({ model, output: out, type: 'F32' }, quiet)).rejects.toThrow("this model's are 1");
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe("granitemoe to GGUF F32 (Granite 3.x MoE as llama.cpp's granitemoe)", () => {
  test('the four scalars as llama.cpp keys, input_linear split into gate and up experts; read back equal', async () => {
    const model = withByteTokenizer(path.join(GOLDEN, 'granitemoe'));
    const file = (await exportGguf({ model, output: path.join(tmpDir(), 'g.gguf'), type: 'F32' }, quiet)).output;
    const g = readGguf(file);
    const m = g.metadata;
    const key = (k: string) => m.get(`granitemoe.${k}`) as number;
    expect(['embedding_scale', 'residual_scale', 'attention.scale', 'logit_scale'].map(key)).toEqual(
      [12, 0.22, 0.015625, 8].map(Math.fround),
    );
    const byName = new Map(g.tensors.map((t) => [t.name, t]));
    expect(byName.get('blk.0.ffn_gate_exps.weight')!.shape).toEqual([8, 16, 32]);
    expect(byName.get('blk.0.ffn_down_exps.weight')!.shape).toEqual([8, 32, 16]);
    const data = path.join(tmpDir(), 'ids.json');
    fs.writeFileSync(data, fs.readFileSync(path.join(GOLDEN, '..', 'reference', 'golden-data', 'eval.json')));
    const ppl = async (x: string) => (await evalCommand({ model: x, data, seqLen: 32 }, quiet)).perplexity;
    // the scalars go through float32 in the file (0.22 is not a float32 value)
    expect(Math.abs((await ppl(file)) / (await ppl(model)) - 1)).toBeLessThan(1e-5);
  });
});

/** transformers' _compute_llama3_parameters as divisors of base^(−2i/d), as convert_hf_to_gguf.py writes rope_freqs. */
function llama3Divisors(rope: Record<string, number>, dim: number): number[] {
  const { rope_theta: base, factor, low_freq_factor: low, high_freq_factor: high } = rope;
  const old = rope.original_max_position_embeddings;
  return [...Array(dim / 2).keys()].map((i) => {
    const wavelen = 2 * Math.PI * base ** ((2 * i) / dim);
    if (wavelen < old / high) return 1;
    if (wavelen > old / low) return factor;
    const smooth = (old / wavelen - low) / (high - low);
    return 1 / ((1 - smooth) / factor + smooth);
  });
}

describe("Llama 4 to GGUF F32 (llama.cpp's llama4)", () => {
  const work = tmpDir('moe-llama4-gguf-');
  const data = path.join(work, 'ids.json');
  beforeAll(() => {
    fs.writeFileSync(data, fs.readFileSync(path.join(GOLDEN, '..', 'reference', 'golden-data', 'eval.json')));
  });
  const ppl = async (x: string) => (await evalCommand({ model: x, data, seqLen: 32 }, quiet)).perplexity;

  test('llama3 scaling as rope_freqs, the chunked layers as a pattern, the widths; read back equal', async () => {
    // llama.cpp's fixed constants: chunks and temperature floor of 8192
    const set = { vocab_size: 256, attention_chunk_size: 8192, floor_scale: 8192 };
    const model = await makeSynth('llama4_text', path.join(work, 'model'), { set });
    fs.writeFileSync(path.join(model, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    const warnings: string[] = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    const file = (await exportGguf({ model, output: path.join(work, 'l.gguf'), type: 'F32' }, ctx)).output;
    expect(warnings).toEqual([]);
    const g = readGguf(file);
    const m = g.metadata;
    const key = (k: string) => m.get(`llama4.${k}`);
    expect([
      m.get('general.architecture'),
      key('interleave_moe_layer_step'),
      key('expert_feed_forward_length'),
      key('feed_forward_length'),
      key('attention.sliding_window_pattern'),
    ]).toEqual(['llama4', 2, 32, 48, [true, true, true, false]]);
    const freqs = g.tensors.find((t) => t.name === 'rope_freqs.weight')!;
    expect(freqs.shape).toEqual([16]);
    const values = new Float32Array(fs.readFileSync(file).buffer.slice(freqs.offset, freqs.offset + 64));
    const want = llama3Divisors(PRESETS.llama4_text.rope_parameters as Record<string, number>, 32);
    expect(want.some((f) => f > 1 && f < 8)).toBe(true); // the blend between 1 and the factor is exercised
    values.forEach((v, i) => expect(v).toBeCloseTo(want[i], 5));
    expect(g.tensors.some((t) => t.name === 'blk.0.ffn_gate.weight' && t.shape.join() === '48,64')).toBe(true);
    expect(Math.abs((await ppl(file)) / (await ppl(model)) - 1)).toBeLessThan(1e-6);
  });

  test('the nested checkpoint: warned where llama.cpp fixes what this model sets; MoE layers it cannot load refused', async () => {
    const model = withByteTokenizer(path.join(GOLDEN, 'llama4'));
    const warnings: string[] = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    const file = (await exportGguf({ model, output: path.join(work, 'n.gguf'), type: 'F32' }, ctx)).output;
    const text = warnings.join('\n');
    expect(text).toMatch(/chunks of 8192 positions; this model's are 8/);
    expect(text).toMatch(/floor_scale 8192 and attn_scale 0.1; this model's are 4 and 0.1/);
    expect(text).toMatch(/vision tower .* is not written/);
    expect(readGguf(file).tensors.some((t) => t.name.startsWith('v.') || t.name.includes('vision'))).toBe(false);

    const cfg = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'llama4_text', 'config.json'), 'utf8'));
    const bad = path.join(work, 'bad');
    fs.mkdirSync(bad);
    for (const f of fs.readdirSync(path.join(GOLDEN, 'llama4_text')))
      fs.copyFileSync(path.join(GOLDEN, 'llama4_text', f), path.join(bad, f));
    fs.writeFileSync(path.join(bad, 'config.json'), JSON.stringify({ ...cfg, interleave_moe_layer_step: 1 }));
    fs.writeFileSync(path.join(bad, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    const out = path.join(work, 'bad.gguf');
    const run = exportGguf({ model: bad, output: out, type: 'F32' }, quiet);
    await expect(run).rejects.toThrow(
      "llama.cpp runs Llama 4's MoE on layers 0, 1, 2, 3 (interleave_moe_layer_step 1); this model's are 1, 3",
    );
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe("PhiMoE to GGUF F32 (llama.cpp's phimoe)", () => {
  test('LayerNorm biases, longrope factors and mscale, the residual writes centred; read back as llama.cpp runs it; warned', async () => {
    const model = withByteTokenizer(path.join(GOLDEN, 'phimoe'));
    const warnings: string[] = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    const file = (await exportGguf({ model, output: path.join(tmpDir(), 'p.gguf'), type: 'F32' }, ctx)).output;
    expect(warnings.join('\n')).toMatch(/softmax over all experts, top-2, renormalised/);
    expect(warnings.join('\n')).toMatch(/long rope factors whenever its context size exceeds 64 tokens/);
    const g = readGguf(file);
    const m = g.metadata;
    expect([m.get('phimoe.rope.scaling.attn_factor'), m.get('phimoe.rope.scaling.original_context_length')]).toEqual([
      Math.fround(1.243),
      64,
    ]);
    const bytes = fs.readFileSync(file);
    const f32 = (name: string) => {
      const t = g.tensors.find((x) => x.name === name)!;
      expect(t.type).toBe(0);
      const n = t.shape.reduce((a, b) => a * b, 1);
      return new Float32Array(bytes.buffer.slice(bytes.byteOffset + t.offset, bytes.byteOffset + t.offset + 4 * n));
    };
    expect([...f32('rope_factors_short.weight')]).toEqual([1, 1.05, 1.1, 1.2].map(Math.fround));
    expect([...f32('rope_factors_long.weight')]).toEqual([1, 2, 4, 8]);
    for (const n of [
      'blk.0.attn_norm.bias',
      'blk.1.ffn_norm.bias',
      'output_norm.bias',
      'output.bias',
      'blk.0.attn_q.bias',
    ])
      expect(g.tensors.some((t) => t.name === n)).toBe(true);
    // centred: every embedding row, and every column of an expert's down projection, sums to 0
    const embd = f32('token_embd.weight');
    for (let r = 0; r < 256; r += 37)
      expect(Math.abs(embd.subarray(r * 32, r * 32 + 32).reduce((a, b) => a + b))).toBeLessThan(1e-5);
    const down = f32('blk.1.ffn_down_exps.weight'); // [8, 32, 16]
    for (let c = 0; c < 16; c += 5) {
      let s = 0;
      for (let r = 0; r < 32; r++) s += down[7 * 512 + r * 16 + c];
      expect(Math.abs(s)).toBeLessThan(1e-5);
    }
    const data = path.join(tmpDir(), 'ids.json');
    fs.writeFileSync(data, fs.readFileSync(path.join(GOLDEN, '..', 'reference', 'golden-data', 'eval.json')));
    const ppl = async (x: string) => (await evalCommand({ model: x, data, seqLen: 32 }, quiet)).perplexity;
    // The same model with the residual writes centred here (an F32 copy): under its LayerNorms it is the source; run
    // as llama.cpp runs phimoe (llama_cpp_phimoe: softmax top-2, RMSNorm + bias) it is the file.
    const centred = centredCopy(model, tmpDir());
    const config = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8'));
    const variant = (dir: string, cpp: boolean) => {
      const out = fs.mkdtempSync(path.join(tmpDir(), 'v-'));
      fs.cpSync(dir, out, { recursive: true });
      fs.writeFileSync(path.join(out, 'config.json'), JSON.stringify({ ...config, llama_cpp_phimoe: cpp }));
      return out;
    };
    const [source, centredLn, centredCpp, sourceCpp] = [
      await ppl(model),
      await ppl(variant(centred, false)),
      await ppl(variant(centred, true)),
      await ppl(variant(model, true)),
    ];
    expect(Math.abs(centredLn / source - 1)).toBeLessThan(1e-6); // centring leaves the model unchanged
    expect(Math.abs((await ppl(file)) / centredCpp - 1)).toBeLessThan(1e-6);
    expect(Math.abs(centredCpp / centredLn - 1)).toBeGreaterThan(1e-3); // sparsemixer is not softmax top-2
    expect(Math.abs(sourceCpp / centredCpp - 1)).toBeGreaterThan(1e-5); // uncentred, RMSNorm is not LayerNorm
  });
});

/** An F32 copy of a PhiMoE checkpoint whose writes into the residual stream have their hidden-axis mean removed. */
function centredCopy(model: string, dir: string): string {
  const ckpt = openCheckpoint(model);
  const reader = new TensorReader(ckpt);
  const header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> = {};
  const parts: Buffer[] = [];
  let at = 0;
  for (const [name, ref] of ckpt.tensors) {
    const w = reader.f32(name).slice();
    const [rows, cols] = ref.shape.length === 2 ? ref.shape : [ref.shape[0], 1];
    if (name === 'model.embed_tokens.weight')
      for (let r = 0; r < rows; r++) {
        const row = w.subarray(r * cols, (r + 1) * cols);
        const m = row.reduce((a, b) => a + b, 0) / cols;
        for (let c = 0; c < cols; c++) row[c] -= m;
      }
    else if (/(o_proj\.(weight|bias)|w2\.weight)$/.test(name))
      for (let c = 0; c < cols; c++) {
        let m = 0;
        for (let r = 0; r < rows; r++) m += w[r * cols + c];
        for (let r = 0; r < rows; r++) w[r * cols + c] -= m / rows;
      }
    header[name] = { dtype: 'F32', shape: ref.shape, data_offsets: [at, at + w.byteLength] };
    parts.push(Buffer.from(w.buffer));
    at += w.byteLength;
  }
  reader.close();
  const out = path.join(dir, 'centred');
  fs.cpSync(model, out, { recursive: true });
  for (const f of fs.readdirSync(out))
    if (f.endsWith('.safetensors') || f.endsWith('.index.json')) fs.rmSync(path.join(out, f));
  writeRaw(path.join(out, 'model.safetensors'), header, Buffer.concat(parts));
  return out;
}
