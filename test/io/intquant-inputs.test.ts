/**
 * compressed-tensors and GPTQ checkpoints as INPUT (issue 22): src/io/ct-read.ts and gptq-read.ts fold their parts
 * into logical weights that every command reads dequantized.
 *   - fixtures/quantized/ct-lib, ct-w8a8, ct-gpt_oss (llm-compressor's linearized experts) and gptq-lib were
 *     quantized and packed by the libraries' own code
 *     (scripts/check_quantized_inputs.py; three compressed-tensors config groups resolved by regex, exact name and
 *     class, g_idx, asymmetric packed zero points; GPTQ v1 desc_act with "-:" / "+:" dynamic overrides): every
 *     weight moe reads equals the library's decode (fixtures/reference/quantized-inputs.json), bit for bit;
 *   - moe's own compressed-tensors and GPTQ outputs of goldens read back as exactly the weights of
 *     --format dequantized of the same run;
 *   - inspect names the schemes; eval, convert, prune and quantize compute on the dequantized weights and write
 *     plain checkpoints without the quantization_config;
 *   - what moe does not decode is refused at open with exit 3 and one line naming config.json and the key.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inspect } from '../../src/commands/inspect';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { readHeader } from '../../src/io/safetensors';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, ROOT, runMain, tmpDir } from '../helpers';

const Q = path.join(ROOT, 'fixtures', 'quantized');
const REF = JSON.parse(
  fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'quantized-inputs.json'), 'utf8'),
) as Record<string, { modules: Record<string, { sha256: string; shape: number[] }> }>;
const OUT = tmpDir('moe-intq-');
const WINDOWS = path.join(OUT, 'windows.json');

beforeAll(() => {
  let seed = 7;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 256;
  fs.writeFileSync(WINDOWS, JSON.stringify(Array.from({ length: 4 }, () => Array.from({ length: 32 }, next))));
});

const sha = (w: Float32Array) =>
  createHash('sha256')
    .update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength))
    .digest('hex');

async function moe(args: string[]): Promise<string> {
  const r = await runMain(args);
  expect(r.stderr.split('\n').filter((l) => l.startsWith('moe:') && !l.startsWith('moe: warning:'))).toEqual([]);
  expect(r.code).toBe(0);
  return r.stdout;
}

describe('checkpoints quantized by the libraries read as their decode', () => {
  test.each(['ct-lib', 'ct-w8a8', 'ct-gpt_oss', 'gptq-lib'])(
    '%s: every weight equals the library decode bit for bit',
    (name) => {
      const ckpt = openCheckpoint(path.join(Q, name));
      const reader = new TensorReader(ckpt);
      const modules = Object.entries(REF[name].modules);
      expect(modules.length).toBeGreaterThan(50);
      expect([...ckpt.tensors.values()].filter((t) => t.intq).length).toBe(modules.length);
      for (const [weight, m] of modules) {
        expect(ckpt.tensors.get(weight)?.shape).toEqual(m.shape);
        expect([weight, sha(reader.f32(weight))]).toEqual([weight, m.sha256]);
      }
      // no side tensor is left over; the excluded GPTQ module and the routers are plain
      const parts =
        /\.(weight_packed|weight_scale|weight_zero_point|weight_shape|weight_g_idx|qweight|qzeros|scales|g_idx)$/;
      expect([...ckpt.tensors.keys()].filter((n) => parts.test(n))).toEqual([]);
      reader.close();
    },
  );

  test('inspect names the format and the scheme of each group of weights', () => {
    const ct = inspect({ model: path.join(Q, 'ct-lib') });
    expect(ct.int_quant).toEqual({
      format: 'compressed-tensors',
      read_as: 'BF16',
      schemes: {
        'compressed-tensors int8 channel asymmetric': { tensors: 8, params: expect.any(Number) },
        'compressed-tensors int4 group 8 symmetric act-order': { tensors: 47, params: expect.any(Number) },
        'compressed-tensors int3 group 16 asymmetric': { tensors: 1, params: 512 },
      },
    });
    // W8A8: the weights are exact; the activations the engine quantizes are computed in float32, and inspect says so
    expect(inspect({ model: path.join(Q, 'ct-w8a8') }).int_quant?.schemes).toEqual({
      'compressed-tensors int8 channel symmetric, int8 dynamic activations (not applied: moe computes them in float32)':
        { tensors: 56, params: expect.any(Number) },
    });
    const gq = inspect({ model: path.join(Q, 'gptq-lib') });
    expect(gq.int_quant?.schemes).toEqual({
      'gptq 4-bit group 32 desc_act': { tensors: 53, params: expect.any(Number) },
      'gptq 8-bit group 32 desc_act': { tensors: 2, params: 2 * 64 * 96 },
    });
    expect(gq.dtypes.F16.tensors).toBe(14); // embeddings, norms, routers, lm_head and the "-:" expert
  });
});

describe("moe's own compressed-tensors and GPTQ outputs read back as its dequantized weights", () => {
  test.each([
    ['ct', 'qwen3_moe', ['--bits', '4', '--group-size', '32', '--grid', 'symmetric'], 'compressed-tensors'],
    ['ct-asym', 'mixtral', ['--bits', '3', '--group-size', '32', '--grid', 'asymmetric'], 'compressed-tensors'],
    ['gptq', 'mixtral-bf16-sharded', ['--bits', '4'], 'gptq'],
    // written linearized as llm-compressor does; the dequantized output is fused (read as per-expert views)
    ['ct-linearized', 'gpt_oss', ['--bits', '4', '--group-size', '16', '--grid', 'symmetric'], 'compressed-tensors'],
  ])('%s of %s', async (name, golden, opts, format) => {
    const model = path.join(GOLDEN, golden);
    const q = path.join(OUT, `${name}-q`);
    const dq = path.join(OUT, `${name}-dq`);
    await moe(['quantize', model, ...opts, '--format', format, '-o', q]);
    await moe(['quantize', model, ...opts, '--format', 'dequantized', '--keep-router-fp', '-o', dq]);
    const a = openCheckpoint(q);
    const b = openCheckpoint(dq);
    loadArchitecture(b); // fused experts as per-expert views
    const [ra, rb] = [new TensorReader(a), new TensorReader(b)];
    const quantized = [...a.tensors.values()].filter((t) => t.intq);
    expect(quantized.length).toBeGreaterThanOrEqual(32);
    for (const t of quantized) {
      expect(t.dtype).toBe(b.tensors.get(t.name)!.dtype);
      const x = new Uint32Array(ra.f32(t.name).buffer);
      const y = new Uint32Array(rb.f32(t.name).buffer);
      expect([t.name, x.every((v, i) => v === y[i])]).toEqual([t.name, true]);
    }
    ra.close();
    rb.close();
  });
});

describe('commands on compressed-tensors and GPTQ inputs', () => {
  const ppl = async (model: string) =>
    (
      JSON.parse(await moe(['eval', model, '--data', WINDOWS, '--seq-len', '32', '--json', '--backend', 'ref'])) as {
        perplexity: number;
      }
    ).perplexity;

  // quantize goes through the same reader for both formats: run once, on the compressed-tensors input
  test.each([
    ['ct-lib', true],
    ['gptq-lib', false],
  ])(
    '%s: eval equals eval of its convert --dtype f32 (plain, without its config); quantize: %s',
    async (name, full) => {
      const model = path.join(Q, name);
      const conv = path.join(OUT, `${name}-f32`);
      await moe(['convert', model, '--dtype', 'f32', '-o', conv]);
      const config = JSON.parse(fs.readFileSync(path.join(conv, 'config.json'), 'utf8'));
      expect(config.quantization_config).toBeUndefined();
      expect(await ppl(model)).toBe(await ppl(conv));
      if (!full) return;
      const packed = path.join(OUT, `${name}-packed`);
      await moe(['quantize', model, '--bits', '4', '--format', 'packed', '-o', packed]);
      const qc = JSON.parse(fs.readFileSync(path.join(packed, 'config.json'), 'utf8')).quantization_config;
      expect(qc.quant_method).toBe('moe-packed');
    },
  );

  test('prune of gpt_oss as llm-compressor writes it (experts linearized): plain, fused as transformers stores them, without its config', async () => {
    const model = path.join(Q, 'ct-gpt_oss');
    const stats = path.join(OUT, 'gpt_oss-stats');
    await moe(['calibrate', model, '--data', WINDOWS, '--seq-len', '32', '--backend', 'ref', '-o', stats]);
    const pruned = path.join(OUT, 'gpt_oss-pruned');
    await moe(['prune', model, '--stats', stats, '--method', 'random', '--keep', '4', '-o', pruned]);
    const p = openCheckpoint(pruned);
    expect(p.config.quantization_config).toBeUndefined();
    expect(p.config.num_local_experts).toBe(4);
    const stored = readHeader(path.join(pruned, 'model.safetensors')).tensors;
    expect(stored.find((t) => t.name === 'model.layers.0.mlp.experts.gate_up_proj')).toMatchObject({
      dtype: 'BF16',
      shape: [4, 64, 32],
    });
    expect(stored.filter((t) => t.name.includes('.experts.0.'))).toEqual([]);
    expect([...p.tensors.values()].filter((t) => t.intq || t.dtype.startsWith('I'))).toEqual([]);
    // copied weights are their dequantized values, in the model's dtype
    const w = 'model.layers.1.self_attn.o_proj.weight';
    const src = new TensorReader(openCheckpoint(model)).f32(w);
    expect(sha(new TensorReader(p).f32(w))).toBe(sha(src));
  });
});

/** The parts of a quantization_config the refusal cases edit. */
interface QC {
  config_groups: Record<string, { format?: string; weights: Record<string, unknown>; input_activations?: unknown }>;
  ignore: string[];
  sparsity_config?: unknown;
  checkpoint_format?: string;
  bits?: number;
  dynamic?: Record<string, unknown>;
}

describe('what moe does not decode is refused at open, naming config.json and the key', () => {
  const variant = (from: string, name: string, edit: (q: QC) => void) => {
    const dir = path.join(OUT, `refuse-${name}`);
    fs.cpSync(path.join(Q, from), dir, { recursive: true });
    const file = path.join(dir, 'config.json');
    const c = JSON.parse(fs.readFileSync(file, 'utf8'));
    edit(c.quantization_config);
    fs.writeFileSync(file, JSON.stringify(c));
    return dir;
  };
  test.each([
    [
      'ct-fp8',
      'ct-lib',
      (q: QC) => {
        q.config_groups.group_1.format = 'float-quantized';
        q.config_groups.group_1.weights.type = 'float';
      },
      'config.json quantization_config.config_groups.group_1.weights.type is "float" (format "float-quantized"), which moe does not decode',
    ],
    [
      'ct-marlin',
      'ct-lib',
      (q: QC) => (q.config_groups.group_0.format = 'marlin-24'),
      'config.json quantization_config.config_groups.group_0.format is "marlin-24", which moe does not decode',
    ],
    [
      'ct-static',
      'ct-lib',
      (q: QC) => (q.config_groups.group_1.input_activations = { num_bits: 8, type: 'int', dynamic: false }),
      'config.json quantization_config.config_groups.group_1.input_activations.dynamic is false: static input scales change the activations and moe does not apply them',
    ],
    [
      'ct-tensor',
      'ct-lib',
      (q: QC) => (q.config_groups.group_2.weights.strategy = 'tensor'),
      'config.json quantization_config.config_groups.group_2.weights.strategy is "tensor", which moe does not decode (group, channel)',
    ],
    [
      'ct-sparse',
      'ct-lib',
      (q: QC) => (q.sparsity_config = { format: 'sparse-24-bitmask' }),
      'config.json quantization_config.sparsity_config is set ({"format":"sparse-24-bitmask"}), which moe does not apply',
    ],
    [
      'ct-ignored',
      'ct-lib',
      (q: QC) => q.ignore.push('model.layers.0.mlp.experts.2.gate_proj'),
      'tensor "model.layers.0.mlp.experts.2.gate_proj.weight_packed" is stored quantized, but quantization_config lists its module in ignore',
    ],
    [
      'gptq-marlin',
      'gptq-lib',
      (q: QC) => (q.checkpoint_format = 'marlin'),
      'config.json quantization_config.checkpoint_format is "marlin", which moe does not decode',
    ],
    [
      'gptq-5bit',
      'gptq-lib',
      (q: QC) => (q.bits = 5),
      'config.json quantization_config.bits is 5, which GPTQ v1 does not pack (2, 3, 4, 8)',
    ],
    [
      'gptq-excluded',
      'gptq-lib',
      (q: QC) => (q.dynamic = { '-:.*experts\\.1\\.up_proj$': {}, ...q.dynamic }),
      'tensor "model.layers.0.mlp.experts.1.up_proj.qweight" is stored quantized, but quantization_config.dynamic excludes model.layers.0.mlp.experts.1.up_proj ("-:")',
    ],
  ])('%s', (name, from, edit, message) => {
    const dir = variant(from, name, edit);
    expect(() => openCheckpoint(dir)).toThrow(expect.objectContaining({ exitCode: 3, message }));
  });

  test('through the CLI: exit 3 and one line naming the file', async () => {
    const dir = variant('gptq-lib', 'cli', (q) => (q.checkpoint_format = 'bitblas'));
    const r = await runMain(['eval', dir, '--data', WINDOWS, '--seq-len', '32']);
    expect(r.code).toBe(3);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toEqual([
      `moe: config.json quantization_config.checkpoint_format is "bitblas", which moe does not decode (${path.join(dir, 'config.json')}); moe reads GPTQ v1/v2 checkpoints (checkpoint_format "gptq" or "gptq_v2", int32 packing, 2/3/4/8 bits); convert it with GPTQModel to that format or use the unquantized original`,
    ]);
  });
});
