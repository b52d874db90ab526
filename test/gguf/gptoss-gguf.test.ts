/**
 * gpt-oss as GGUF (issue 18): the tensors and keys llama.cpp's "gpt-oss" loads (llama-arch.cpp LLM_ARCH_OPENAI_MOE,
 * models/openai-moe.cpp), the MXFP4 experts of the golden checkpoint written as ggml MXFP4 bit-exactly (the bytes of
 * the mxfp4 reference's repacking, which gguf-py checked, gate and up split by rows), expert biases stacked [E, out]
 * in F32, and the file read back by moe: every Hugging Face tensor equal to the source's when nothing is quantized.
 * The perplexity llama.cpp gets from such files: bench/llama-gguf-oss.mjs.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { exportGguf } from '../../src/commands/gguf';
import { repackMxfp4 } from '../../src/gguf/codecs/mxfp4';
import { GGML_TYPE_ID, GgmlType, rowBytes } from '../../src/gguf/quants';
import { openGgufModel } from '../../src/gguf/source';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { GgufFile, readGguf } from '../../src/io/gguf-reader';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, makeSynth, quiet, ROOT, tmpDir } from '../helpers';

const TYPE_BY_ID = new Map(Object.entries(GGML_TYPE_ID).map(([k, v]) => [v, k as GgmlType]));
const codecRef = JSON.parse(
  fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'gguf-codecs', 'gguf-py.json'), 'utf8'),
);
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * A byte-level BPE tokenizer of `n` tokens, pre-tokenized as gpt-oss's o200k (a regex Split, then ByteLevel without
 * its own regex): llama.cpp's pre-tokenizer "gpt-4o".
 */
function writeTokenizer(dir: string, n: number): void {
  const bytes = [...Array(256).keys()];
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let extra = 0;
  const chars = bytes.map((b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
  const vocab = Object.fromEntries(chars.slice(0, n).map((c, i) => [c, i]));
  const tok = {
    version: '1.0',
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: '\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+|\\s+' }, behavior: 'Isolated' },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    decoder: { type: 'ByteLevel' },
    model: { type: 'BPE', vocab, merges: [] },
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
  fs.writeFileSync(
    path.join(dir, 'tokenizer_config.json'),
    JSON.stringify({ tokenizer_class: 'PreTrainedTokenizerFast' }),
  );
}

function tensorBytes(g: GgufFile, buf: Buffer, name: string): { type: GgmlType; shape: number[]; bytes: Uint8Array } {
  const t = g.tensors.find((x) => x.name === name);
  if (!t) throw new Error(`no tensor ${name}`);
  const type = TYPE_BY_ID.get(t.type)!;
  const cols = t.shape[t.shape.length - 1];
  const rows = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset + t.offset, rows * rowBytes(type, cols));
  return { type, shape: t.shape, bytes };
}

describe('gpt-oss with MXFP4 experts to GGUF', () => {
  const model = path.join(tmpDir(), 'gpt_oss-mxfp4');
  let file: string;
  let g: GgufFile;
  let buf: Buffer;
  let warnings: string[];
  beforeAll(async () => {
    fs.cpSync(path.join(GOLDEN, 'gpt_oss-mxfp4'), model, { recursive: true });
    writeTokenizer(model, 256);
    warnings = [];
    const ctx = { ...quiet, warn: (w: string) => warnings.push(w) } as typeof quiet;
    // F32 for every other weight: nothing is quantized, so moe's reading of the file gives the source back.
    const r = await exportGguf({ model, output: path.join(tmpDir(), 'oss.gguf'), type: 'F32' }, ctx);
    file = r.output;
    g = readGguf(file);
    buf = fs.readFileSync(file);
  });

  test("the keys llama.cpp's gpt-oss reads", () => {
    const m = g.metadata;
    expect(m.get('general.architecture')).toBe('gpt-oss');
    expect(m.get('gpt-oss.block_count')).toBe(2);
    expect(m.get('gpt-oss.embedding_length')).toBe(64);
    expect(m.get('gpt-oss.feed_forward_length')).toBe(64);
    expect(m.get('gpt-oss.expert_feed_forward_length')).toBe(64);
    expect(m.get('gpt-oss.expert_count')).toBe(8);
    expect(m.get('gpt-oss.expert_used_count')).toBe(2);
    expect(m.get('gpt-oss.attention.head_count')).toBe(4);
    expect(m.get('gpt-oss.attention.head_count_kv')).toBe(2);
    expect(m.get('gpt-oss.attention.key_length')).toBe(16);
    expect(m.get('gpt-oss.attention.sliding_window')).toBe(8);
    // layer_types [sliding, full]: llama.cpp's default period of 2, so no pattern key
    expect(m.has('gpt-oss.attention.sliding_window_pattern')).toBe(false);
    expect(m.get('gpt-oss.rope.freq_base')).toBe(150000);
    expect(m.get('gpt-oss.rope.scaling.type')).toBe('yarn');
    expect(m.get('gpt-oss.rope.scaling.factor')).toBe(32);
    expect(m.get('gpt-oss.rope.scaling.original_context_length')).toBe(4096);
    expect(m.get('tokenizer.ggml.pre')).toBe('gpt-4o');
    expect(warnings).toEqual([expect.stringContaining('truncate false')]);
  });

  test('tensor names, types and shapes (ggml order reversed: PyTorch order here)', () => {
    const want: Record<string, [GgmlType, number[]]> = {
      'token_embd.weight': ['F32', [256, 64]],
      'output_norm.weight': ['F32', [64]],
      'output.weight': ['F32', [256, 64]],
    };
    for (const b of ['blk.0', 'blk.1']) {
      Object.assign(want, {
        [`${b}.attn_norm.weight`]: ['F32', [64]],
        [`${b}.attn_q.weight`]: ['F32', [64, 64]],
        [`${b}.attn_q.bias`]: ['F32', [64]],
        [`${b}.attn_k.weight`]: ['F32', [32, 64]],
        [`${b}.attn_k.bias`]: ['F32', [32]],
        [`${b}.attn_v.weight`]: ['F32', [32, 64]],
        [`${b}.attn_v.bias`]: ['F32', [32]],
        [`${b}.attn_output.weight`]: ['F32', [64, 64]],
        [`${b}.attn_output.bias`]: ['F32', [64]],
        [`${b}.attn_sinks.weight`]: ['F32', [4]],
        [`${b}.post_attention_norm.weight`]: ['F32', [64]],
        [`${b}.ffn_gate_inp.weight`]: ['F32', [8, 64]],
        [`${b}.ffn_gate_inp.bias`]: ['F32', [8]],
        [`${b}.ffn_gate_exps.weight`]: ['MXFP4', [8, 64, 64]],
        [`${b}.ffn_gate_exps.bias`]: ['F32', [8, 64]],
        [`${b}.ffn_up_exps.weight`]: ['MXFP4', [8, 64, 64]],
        [`${b}.ffn_up_exps.bias`]: ['F32', [8, 64]],
        [`${b}.ffn_down_exps.weight`]: ['MXFP4', [8, 64, 64]],
        [`${b}.ffn_down_exps.bias`]: ['F32', [8, 64]],
      });
    }
    const got = Object.fromEntries(g.tensors.map((t) => [t.name, [TYPE_BY_ID.get(t.type), t.shape]]));
    expect(got).toEqual(want);
  });

  test('MXFP4 experts are the stored blocks repacked (gguf-py-checked bytes), gate and up split by rows', () => {
    const ckpt = openCheckpoint(path.join(GOLDEN, 'gpt_oss-mxfp4'));
    const reader = new TensorReader(ckpt);
    try {
      for (const l of [0, 1]) {
        for (const [fused, parts] of [
          ['gate_up_proj', ['ffn_gate_exps', 'ffn_up_exps']],
          ['down_proj', ['ffn_down_exps']],
        ] as const) {
          const name = `model.layers.${l}.mlp.experts.${fused}`;
          const { blocks, scales } = ckpt.tensors.get(name)!.mxfp4!;
          const [E, out, groups] = blocks.shape;
          const b = Buffer.concat([...Array(E).keys()].map((e) => reader.rawSlice(blocks, e)));
          const s = Buffer.concat([...Array(E).keys()].map((e) => reader.rawSlice(scales, e)));
          const whole = repackMxfp4(b, s, E * out, groups);
          expect(sha256(whole)).toBe(codecRef.mxfp4.repacked[name]);
          const rb = groups * 17;
          parts.forEach((p, k) => {
            const t = tensorBytes(g, buf, `blk.${l}.${p}.weight`);
            const rows = t.shape[0] * t.shape[1];
            const expected = new Uint8Array(rows * rb);
            for (let r = 0; r < rows; r++) {
              // expert e's row i: stored row 2i (+1 for up) of gate_up, row i of down
              const e = Math.floor(r / t.shape[1]);
              const i = r % t.shape[1];
              const src = e * out + (parts.length === 2 ? 2 * i + k : i);
              expected.set(whole.subarray(src * rb, (src + 1) * rb), r * rb);
            }
            expect(Buffer.from(t.bytes).equals(Buffer.from(expected))).toBe(true);
          });
        }
      }
    } finally {
      reader.close();
    }
  });

  test('expert and router biases: gate the even entries of gate_up_proj_bias, up the odd ones', () => {
    const ckpt = openCheckpoint(path.join(GOLDEN, 'gpt_oss-mxfp4'));
    const reader = new TensorReader(ckpt);
    const f32 = (name: string) => {
      const t = tensorBytes(g, buf, name);
      return new Float32Array(t.bytes.slice().buffer);
    };
    try {
      const gu = reader.f32('model.layers.1.mlp.experts.gate_up_proj_bias'); // [8, 128]
      const gate = f32('blk.1.ffn_gate_exps.bias');
      const up = f32('blk.1.ffn_up_exps.bias');
      for (let e = 0; e < 8; e++)
        for (let i = 0; i < 64; i++) {
          expect(gate[e * 64 + i]).toBe(gu[e * 128 + 2 * i]);
          expect(up[e * 64 + i]).toBe(gu[e * 128 + 2 * i + 1]);
        }
      expect(f32('blk.1.ffn_down_exps.bias')).toEqual(reader.f32('model.layers.1.mlp.experts.down_proj_bias'));
      expect(f32('blk.1.ffn_gate_inp.bias')).toEqual(reader.f32('model.layers.1.mlp.router.bias'));
      expect(f32('blk.0.attn_sinks.weight')).toEqual(reader.f32('model.layers.0.self_attn.sinks'));
    } finally {
      reader.close();
    }
  });

  test('--allocate lp: the MXFP4 experts stay MXFP4 and count in the budget at their 4.25 bits', async () => {
    const stats = path.join(tmpDir(), 'stats');
    const data = path.join(tmpDir(), 'ids.json'); // pre-tokenized: 4 windows of 64 ids
    fs.writeFileSync(
      data,
      JSON.stringify([0, 1, 2, 3].map((w) => Array.from({ length: 64 }, (_, i) => (w * 97 + i * 31) % 256))),
    );
    await calibrate({ model, data, seqLen: 64, maxTokens: 256, backend: 'ref', output: stats }, quiet);
    const ctx = { ...quiet, warn: () => undefined } as typeof quiet;
    const o = { model, stats, allocate: 'lp' as const, menu: ['Q4_0', 'Q8_0'] as GgmlType[] };
    const r = await exportGguf({ ...o, output: path.join(tmpDir(), 'lp.gguf'), bpw: 5 }, ctx);
    const exps = r.tensors.filter((t) => /_exps\.weight$/.test(t.name));
    expect(exps.length).toBe(6);
    expect(exps.every((t) => t.type === 'MXFP4')).toBe(true);
    // The experts hold 78% of the weights at 4.25 bits; the rest alone could not average 5 bits (the embeddings and
    // the output fall back to Q8_0 at 8.5: at least 6.8 over the rest), so the budget must count the experts.
    expect(r.bpw).toBeLessThanOrEqual(5 + 1e-9);
    expect(r.bpw).toBeGreaterThan(4.8);
    const rest = r.tensors.filter((t) => !exps.includes(t) && ['Q4_0', 'Q8_0'].includes(t.type));
    expect(new Set(rest.map((t) => t.type))).toEqual(new Set(['Q4_0', 'Q8_0']));
  });

  test('moe reads the file back: the config, and every tensor equal to the source (nothing quantized)', () => {
    const src = openCheckpoint(model);
    const arch = loadArchitecture(src);
    const gg = openGgufModel(file);
    const readSrc = new TensorReader(src);
    try {
      const c = gg.ckpt.config;
      expect(c.model_type).toBe('gpt_oss');
      for (const k of ['num_local_experts', 'intermediate_size', 'head_dim', 'sliding_window', 'layer_types'])
        expect(c[k]).toEqual(src.config[k]);
      expect(c.attention_bias).toBe(true);
      // llama.cpp's YaRN always truncates its correction range: the file means truncate true.
      expect(c.rope_parameters).toMatchObject({ rope_type: 'yarn', factor: 32, truncate: true });
      const names = arch.schema().map((s) => s.name);
      expect(gg.arch.schema().map((s) => s.name)).toEqual(names);
      const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
      const differ = names.filter((n) => !bytes(gg.reader.f32(n)).equals(bytes(readSrc.f32(n))));
      expect(differ).toEqual([]);
    } finally {
      readSrc.close();
      gg.reader.close();
    }
  });
});

test('bf16 gpt-oss experts take the chosen type; biases stay F32', async () => {
  const dir = await makeSynth('gpt_oss', path.join(tmpDir(), 'oss'), { dtype: 'BF16' });
  writeTokenizer(dir, 128);
  const r = await exportGguf({ model: dir, output: path.join(tmpDir(), 'q8.gguf'), type: 'Q8_0' }, quiet);
  const types = new Map(r.tensors.map((t) => [t.name, t.type]));
  expect(types.get('blk.0.ffn_gate_exps.weight')).toBe('Q8_0');
  expect(types.get('blk.1.ffn_down_exps.weight')).toBe('Q8_0');
  expect(types.get('blk.1.ffn_down_exps.bias')).toBe('F32');
  expect(types.get('blk.0.attn_sinks.weight')).toBe('F32');
  const g = readGguf(r.output);
  expect(g.tensors.find((t) => t.name === 'blk.0.ffn_up_exps.bias')!.shape).toEqual([4, 32]);
});
