/**
 * GGUF files read back as models (`moe inspect FILE.gguf`, `moe eval FILE.gguf`): the trained fixture's F32 export
 * evaluates to the safetensors model's perplexity, quantized exports close to it; every golden architecture's F32
 * export gives transformers' logits again (experts unstacked, Mixtral's q/k un-permuted, DeepSeek's kv_b rebuilt
 * from k_b/v_b); the tokenizer rebuilt from the metadata gives the original's ids; bad files are exit 3.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { evalCommand } from '../../src/commands/eval';
import { inspect } from '../../src/commands/inspect';
import { loadTokenizer, tokenizerFromJson } from '../../src/eval/tokenizer';
import { ggufModel } from '../../src/gguf/arch';
import { exportGguf } from '../../src/commands/gguf';
import type { GgmlType } from '../../src/gguf/quants';
import { readGguf } from '../../src/io/gguf-reader';
import { openGgufModel } from '../../src/gguf/source';
import { ggufTokenizerJson } from '../../src/gguf/tokenizer';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { PRESETS } from '../../src/synth/presets';
import { GOLDEN, makeSynth, quiet, ROOT, runMain, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';
import { byteTokenizer } from '../model/byte-tokenizer';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const EVAL_TXT = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
const EVAL = { data: EVAL_TXT, seqLen: 64, maxTokens: 256 };

async function exportTo(model: string, type: GgmlType, dir = tmpDir()): Promise<string> {
  return (await exportGguf({ model, output: path.join(dir, `${path.basename(model)}-${type}.gguf`), type }, quiet))
    .output;
}

/** A copy of a checkpoint folder with a tokenizer (GGUF export needs one). */
function withTokenizer(src: string): string {
  const dir = path.join(tmpDir(), path.basename(src));
  fs.cpSync(src, dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
  return dir;
}

async function logitsOf(
  reader: TensorReader,
  arch: ReturnType<typeof loadArchitecture>,
  ids: Int32Array,
  B: number,
  T: number,
): Promise<Float32Array> {
  const { sink, logits } = fullLogits(B * T, arch.vocab);
  await new ForwardPass(reader, arch, new RefBackend()).run(ids, B, T, sink);
  reader.close();
  return logits;
}

describe('the trained fixture as GGUF', () => {
  const files: Partial<Record<GgmlType, string>> = {};
  let base: Awaited<ReturnType<typeof evalCommand>>;
  beforeAll(async () => {
    for (const t of ['F32', 'Q8_0', 'Q4_K'] as GgmlType[]) files[t] = await exportTo(MODEL, t);
    base = await evalCommand({ model: MODEL, ...EVAL }, quiet);
  }, 60_000);

  test("F32 evaluates to the safetensors model's perplexity; Q8_0 and Q4_K close to it", async () => {
    const f32 = await evalCommand({ model: files.F32!, ...EVAL }, quiet);
    expect(f32.positions).toBe(base.positions);
    expect(Math.abs(f32.perplexity / base.perplexity - 1)).toBeLessThanOrEqual(1e-4);
    expect(f32.size.params).toBe(inspect({ model: MODEL }).params_total);
    // The size is the file's bytes (header and tokenizer included), as for safetensors; the tensor data is 32 bits a
    // weight.
    expect(f32.size.bytes).toBe(fs.statSync(files.F32!).size);
    expect(f32.size.bits_per_param).toBeCloseTo((8 * f32.size.bytes) / f32.size.params, 12);
    expect(inspect({ model: files.F32! }).bytes_tensors).toBe(4 * f32.size.params);
    const q8 = await evalCommand({ model: files.Q8_0!, ...EVAL }, quiet);
    const q4 = await evalCommand({ model: files.Q4_K!, ...EVAL }, quiet);
    for (const r of [q8, q4]) expect(Number.isFinite(r.perplexity)).toBe(true);
    expect(Math.abs(q8.perplexity / base.perplexity - 1)).toBeLessThanOrEqual(0.005);
    expect(Math.abs(q4.perplexity / base.perplexity - 1)).toBeLessThanOrEqual(0.05);
    // Bits per weight of the tensor data (the file's size also holds the header and the vocabulary).
    expect(inspect({ model: files.Q8_0! }).gguf!.bits_per_weight).toBeLessThan(8.6);
    expect(inspect({ model: files.Q4_K! }).gguf!.bits_per_weight).toBeLessThan(4.7);
    expect(q8.size.bytes).toBe(fs.statSync(files.Q8_0!).size);
  }, 60_000);

  test('--baseline either way', async () => {
    const a = await evalCommand({ model: files.Q4_K!, baseline: MODEL, ...EVAL }, quiet);
    expect(Math.abs(a.baseline!.perplexity / base.perplexity - 1)).toBeLessThanOrEqual(1e-6);
    expect(a.baseline!.kl_mean).toBeGreaterThan(0);
    expect(a.baseline!.routing_agreement.length).toBe(3);
    const b = await evalCommand({ model: MODEL, baseline: files.F32!, ...EVAL }, quiet);
    expect(b.baseline!.kl_mean).toBeLessThan(1e-6);
    expect(b.baseline!.top1_agreement).toBe(1);
    expect(b.baseline!.routing_agreement.every((r) => r.agreement === 1)).toBe(true);
  }, 60_000);

  test("the tokenizer rebuilt from the metadata gives the original's ids", () => {
    const text = fs.readFileSync(EVAL_TXT, 'utf8');
    const want = loadTokenizer(MODEL).encode(text);
    const got = tokenizerFromJson(ggufTokenizerJson(readGguf(files.Q8_0!)), {}, files.Q8_0!).encode(text);
    expect(want.length).toBeGreaterThan(10000);
    expect(got).toEqual(want);
  });

  test('a Qwen2 pre-tokenizer (split regex, then bytes) is rebuilt too', async () => {
    const dir = path.join(tmpDir(), 'qwen-tok');
    fs.cpSync(MODEL, dir, { recursive: true });
    const tok = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
    // Qwen2's tokenizer.json pre-tokenizer, as the hub ships it.
    const regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    tok.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    };
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
    const file = await exportTo(dir, 'Q8_0');
    const g = readGguf(file);
    expect(g.metadata.get('tokenizer.ggml.pre')).toBe('qwen2');
    const text = `${fs.readFileSync(EVAL_TXT, 'utf8').slice(0, 20000)} I'LL DON'T 2024-12345 foo\r\n\n  bar\t!!`;
    const want = loadTokenizer(dir).encode(text);
    expect(want).not.toEqual(loadTokenizer(MODEL).encode(text)); // the split differs from GPT-2's
    expect(tokenizerFromJson(ggufTokenizerJson(g), {}, file).encode(text)).toEqual(want);
  });

  test("inspect gives the source's parameters and the bytes by ggml type", async () => {
    const src = inspect({ model: MODEL });
    const g = inspect({ model: files.Q4_K! });
    for (const k of [
      'model_type',
      'num_layers',
      'moe_layers',
      'experts_per_layer',
      'top_k',
      'hidden_size',
      'expert_width',
      'vocab_size',
      'routing',
      'params_total',
      'params_active',
      'params_experts',
    ] as const)
      expect(g[k]).toEqual(src[k]);
    expect(Object.keys(g.dtypes).sort()).toEqual(['F32', 'Q4_K']);
    expect(g.dtypes.Q4_K.bytes).toBe((g.dtypes.Q4_K.params / 256) * 144);
    expect(g.gguf!.file_bytes).toBe(fs.statSync(files.Q4_K!).size);
    expect(g.gguf!.bits_per_weight).toBeCloseTo((8 * g.bytes_tensors) / g.params_total, 9);
    expect(g.bytes).toBe(g.gguf!.file_bytes);
    // The header only: one chunk of positioned reads, not the 4 MB of tensor data.
    expect(g.bytes_read).toBeGreaterThan(readGguf(files.Q4_K!).dataStart - 1);
    expect(g.bytes_read).toBeLessThanOrEqual(1 << 20);
    expect(g.gguf!.file_bytes).toBeGreaterThan(4 * (1 << 20));
    const cli = await runMain(['inspect', files.Q4_K!]);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toMatch(/gguf +qwen3moe, 4\.\d+ bits per weight/);
  });

  test('a truncated file, an unknown ggml type and an unknown tokenizer are exit 3', async () => {
    const dir = tmpDir();
    const buf = fs.readFileSync(files.Q8_0!);
    const cut = path.join(dir, 'cut.gguf');
    fs.writeFileSync(cut, buf.subarray(0, buf.length - 1000));
    const r0 = await runMain(['eval', cut, '--data', EVAL_TXT]);
    expect(r0.code).toBe(3);
    expect(r0.stderr).toMatch(
      /^moe: not a valid GGUF file: tensor "output\.weight" ends at byte \d+, past the end of the file/m,
    );
    expect(() => inspect({ model: cut })).toThrow(
      expect.objectContaining({ exitCode: 3, message: expect.stringMatching(/tensor "output\.weight" ends at byte/) }),
    );
    const head = path.join(dir, 'head.gguf');
    fs.writeFileSync(head, buf.subarray(0, 100));
    expect(() => inspect({ model: head })).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: expect.stringMatching(/not a valid GGUF file: truncated header/),
      }),
    );

    // blk.0.ffn_up_exps.weight as IQ2_XXS (16): name, dims (u32), 3 × u64, then the type.
    const odd = Buffer.from(buf);
    const name = Buffer.from('blk.0.ffn_up_exps.weight');
    const at = odd.indexOf(name) + name.length + 4 + 3 * 8;
    expect(odd.readUInt32LE(at)).toBe(8);
    odd.writeUInt32LE(16, at);
    const oddFile = path.join(dir, 'odd.gguf');
    fs.writeFileSync(oddFile, odd);
    const r = await runMain(['eval', oddFile, '--data', EVAL_TXT]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(
      /GGUF tensor "blk\.0\.ffn_up_exps\.weight" has ggml type IQ2_XXS, which moe does not decode/,
    );

    // tokenizer.ggml.model "gpt2" → "gpt3": text is refused, pre-tokenized ids still evaluate.
    const tok = Buffer.from(buf);
    const key = tok.indexOf(Buffer.from('tokenizer.ggml.model')) + 'tokenizer.ggml.model'.length + 12;
    expect(tok.toString('utf8', key, key + 4)).toBe('gpt2');
    tok.write('gpt3', key);
    const tokFile = path.join(dir, 'tok.gguf');
    fs.writeFileSync(tokFile, tok);
    await expect(evalCommand({ model: tokFile, ...EVAL }, quiet)).rejects.toMatchObject({
      exitCode: 3,
      message: expect.stringMatching(/the GGUF tokenizer model "gpt3" is not rebuilt by moe/),
    });
    const ids = path.join(dir, 'ids.json');
    fs.writeFileSync(ids, JSON.stringify([[1, 2, 3, 4, 5, 6, 7, 8]]));
    expect((await evalCommand({ model: tokFile, data: ids, seqLen: 8 }, quiet)).positions).toBe(7);
  }, 60_000);
});

describe('every architecture read back from its F32 GGUF', () => {
  // olmoe's golden has grouped-query attention, which llama.cpp's OLMoE cannot run (export refuses it): below, a synth
  // one.
  // The FP8 goldens are read dequantized (src/io/fp8.ts) and written as F32.
  const CASES = ['mixtral', 'qwen3_moe', 'qwen3_moe-rope-scaled', 'deepseek_v3', 'qwen3_moe-fp8', 'deepseek_v3-fp8'];
  test.each(CASES)(
    "%s: transformers' logits",
    async (c) => {
      const golden = new TensorReader(openTensorFile(path.join(GOLDEN, c, 'golden.safetensors')));
      const ids = Int32Array.from(new BigInt64Array(golden.bytes('input_ids').slice().buffer), Number);
      const want = golden.f32('logits');
      const [B, T] = golden.ref('logits').shape;
      golden.close();
      const g = openGgufModel(await exportTo(withTokenizer(path.join(GOLDEN, c)), 'F32'));
      expect(g.arch.modelType).toBe(
        JSON.parse(fs.readFileSync(path.join(GOLDEN, c, 'config.json'), 'utf8')).model_type,
      );
      expect(maxDiff(await logitsOf(g.reader, g.arch, ids, B, T), want)).toBeLessThanOrEqual(1e-3);
    },
    30_000,
  );

  /** The logits of a checkpoint's own forward pass (golden-checked in test/model) and of its F32 GGUF. */
  async function both(
    dir: string,
  ): Promise<{ want: Float32Array; got: Float32Array; g: ReturnType<typeof openGgufModel> }> {
    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    const ids = Int32Array.from({ length: 32 }, (_, i) => (i * 37) % arch.vocab);
    const want = await logitsOf(new TensorReader(ckpt), arch, ids, 2, 16);
    const g = openGgufModel(await exportTo(dir, 'F32'));
    return { want, got: await logitsOf(g.reader, g.arch, ids, 2, 16), g };
  }

  test("qwen2_moe (shared expert, q/k/v biases; llama.cpp has no dense qwen2moe layers) and olmoe (no GQA): the safetensors model's logits", async () => {
    const q = await both(
      withTokenizer(await makeSynth('qwen2_moe', path.join(tmpDir(), 'qwen2'), { set: { mlp_only_layers: [] } })),
    );
    expect(q.g.ckpt.config.shared_expert_intermediate_size).toBe(48);
    expect(maxDiff(q.got, q.want)).toBeLessThanOrEqual(1e-4);
    const o = await both(withTokenizer(await makeSynth('olmoe', path.join(tmpDir(), 'olmoe'))));
    expect(o.g.arch.modelType).toBe('olmoe');
    expect(maxDiff(o.got, o.want)).toBeLessThanOrEqual(1e-4);
  }, 30_000);

  test("deepseek_v2 (YaRN, grouped routing): the checkpoint's logits with mscale = mscale_all_dim, all GGUF can say", async () => {
    // GGUF keeps only mscale_all_dim (yarn_log_multiplier); llama.cpp's DeepSeek graph takes mscale equal to it, as
    // DeepSeek's own configs have. The golden checkpoint has mscale 1 and mscale_all_dim 0.5, so it is compared
    // with itself under llama.cpp's reading.
    const dir = withTokenizer(path.join(GOLDEN, 'deepseek_v2'));
    const cfgFile = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    cfg.rope_parameters.mscale = cfg.rope_parameters.mscale_all_dim;
    fs.writeFileSync(cfgFile, JSON.stringify(cfg));
    const d = await both(dir);
    expect(d.g.arch.modelType).toBe('deepseek_v2');
    expect(d.g.arch.routing.nGroup).toBe(2);
    expect(maxDiff(d.got, d.want)).toBeLessThanOrEqual(1e-4);
  }, 30_000);

  test.each(['gpt_oss', 'gpt_oss-mxfp4'])(
    "%s (YaRN with truncate false): the checkpoint's logits with truncate true, as llama.cpp's YaRN always rounds",
    async (c) => {
      // llama.cpp has no key for YaRN's truncate (ggml_rope_yarn_corr_dims floors and ceils the correction range),
      // so the file means truncate true and moe reads it so: compared with the checkpoint under that reading.
      const dir = withTokenizer(path.join(GOLDEN, c));
      const cfgFile = path.join(dir, 'config.json');
      const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
      expect(cfg.rope_parameters.truncate).toBe(false);
      cfg.rope_parameters.truncate = true;
      fs.writeFileSync(cfgFile, JSON.stringify(cfg));
      const d = await both(dir);
      expect(d.g.arch.modelType).toBe('gpt_oss');
      expect(d.g.ckpt.config.rope_parameters).toMatchObject({ rope_type: 'yarn', truncate: true });
      expect(maxDiff(d.got, d.want)).toBeLessThanOrEqual(1e-4);
    },
    30_000,
  );

  test('export warns where llama.cpp reads the file differently from the checkpoint', () => {
    const warnings = (config: Record<string, unknown>) => {
      const a = architectureFor(config, tmpDir());
      return ggufModel(a, new Map(a.schema().map((t) => [t.name, t.shape]))).warnings.join('\n');
    };
    const ds = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'deepseek_v2', 'config.json'), 'utf8'));
    expect(warnings(ds)).toMatch(/keeps only mscale_all_dim \(0\.5\).*mscale 1/);
    expect(warnings({ ...ds, rope_parameters: { ...ds.rope_parameters, mscale: 0.5 } })).not.toMatch(/mscale/);
    expect(warnings({ ...PRESETS.qwen3_moe, norm_topk_prob: false })).toMatch(
      /llama\.cpp always renormalises the top-k routing weights of qwen3moe/,
    );
    expect(warnings(PRESETS.qwen3_moe)).toBe('');
  });
});
