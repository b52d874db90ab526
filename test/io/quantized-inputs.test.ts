/**
 * Wrong numbers must never be silent (issue 16): a checkpoint stored quantized in a format moe does not decode
 * (a quantization_config, a compression_config, scale / zero-point side tensors, F8/I8/U8 weights) is refused by
 * every command with exit 3, naming the method and what moe reads, and nothing is written. moe's own packed format
 * still opens. Made from a synth model: bitsandbytes (a method moe will never read) by its config, FP8 (as
 * DeepSeek-V3 and Qwen3-*-FP8 ship it: an F8_E4M3 weight with a float32 weight_scale_inv) by config and tensors.
 * FP8 with dynamic activation scaling is decoded since issue 18 (test/io/fp8.test.ts): here it opens, and FP8 with
 * activation_scheme "static" (input scales moe does not apply) stands for the refused FP8 settings.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { convert } from '../../src/commands/convert';
import { evalCommand } from '../../src/commands/eval';
import { inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { exportGguf } from '../../src/commands/gguf';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { checkConfigNotQuantized, checkTensorsNotQuantized } from '../../src/io/quantized';
import type { TensorRef } from '../../src/io/safetensors';
import { verifyCheckpoint } from '../../src/model/verify';
import { listDir, makeSynth, quiet, ROOT, runMain, tmpDir, writeRaw } from '../helpers';

const CALIB = path.join(ROOT, 'fixtures', 'text', 'calib.txt');
const SUPPORTED =
  'moe reads bf16, f16 and f32 safetensors, block-scaled FP8, gpt-oss MXFP4 experts, compressed-tensors int weights, GPTQ and its own packed format: dequantize the checkpoint first, or use the unquantized original';
const FP8_WEIGHT = 'model.layers.0.mlp.experts.0.down_proj.weight';
const FP8_HINT =
  'dequantize the checkpoint first (transformers: FineGrainedFP8Config(dequantize=True)), or use the unquantized original';

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;

/** Rewrites model.safetensors: `edit` gets the tensors (in file order, with their bytes) and returns the new list. */
function editShard(
  dir: string,
  edit: (
    ts: { name: string; dtype: string; shape: number[]; bytes: Buffer }[],
  ) => { name: string; dtype: string; shape: number[]; bytes: Buffer }[],
): void {
  const file = path.join(dir, 'model.safetensors');
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const json = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Header & {
    __metadata__?: Record<string, string>;
  };
  const meta = json.__metadata__;
  delete json.__metadata__;
  const ts = Object.entries(json as Header)
    .sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0])
    .map(([name, t]) => ({
      name,
      dtype: t.dtype,
      shape: t.shape,
      bytes: buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]),
    }));
  const header: Record<string, unknown> = meta ? { __metadata__: meta } : {};
  const parts: Buffer[] = [];
  let at = 0;
  for (const t of edit(ts)) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes.length] };
    parts.push(t.bytes);
    at += t.bytes.length;
  }
  writeRaw(file, header, Buffer.concat(parts));
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const file = path.join(dir, 'config.json');
  const c = JSON.parse(fs.readFileSync(file, 'utf8'));
  edit(c);
  fs.writeFileSync(file, JSON.stringify(c, null, 2));
}

/** One expert's down_proj as F8_E4M3 codes with its block scale (weight_block_size [128, 128]: one block here). */
function addFp8Weight(dir: string): void {
  editShard(dir, (ts) =>
    ts.flatMap((t) => {
      if (t.name !== FP8_WEIGHT) return [t];
      const count = t.shape.reduce((a, b) => a * b, 1);
      const scale = Buffer.alloc(4);
      scale.writeFloatLE(0.01);
      return [
        { ...t, dtype: 'F8_E4M3', bytes: Buffer.alloc(count, 0x38) },
        { name: FP8_WEIGHT.replace(/weight$/, 'weight_scale_inv'), dtype: 'F32', shape: [1, 1], bytes: scale },
      ];
    }),
  );
}

let root: string;
const models: Record<string, string> = {};

beforeAll(async () => {
  root = tmpDir('moe-quantized-');
  const plain = await makeSynth('qwen3_moe', path.join(root, 'plain'));
  const copy = (name: string) => {
    fs.cpSync(plain, path.join(root, name), { recursive: true });
    return (models[name] = path.join(root, name));
  };
  editConfig(
    copy('bnb'),
    (c) =>
      (c.quantization_config = {
        quant_method: 'bitsandbytes',
        load_in_4bit: true,
        bnb_4bit_quant_type: 'nf4',
        bnb_4bit_compute_dtype: 'bfloat16',
      }),
  );
  const fp8Config = (scheme: string) => (c: Record<string, unknown>) =>
    (c.quantization_config = {
      quant_method: 'fp8',
      fmt: 'e4m3',
      activation_scheme: scheme,
      weight_block_size: [128, 128],
    });
  const fp8 = copy('fp8');
  editConfig(fp8, fp8Config('dynamic'));
  addFp8Weight(fp8);
  const fp8Static = copy('fp8-static');
  editConfig(fp8Static, fp8Config('static'));
  addFp8Weight(fp8Static);
  addFp8Weight(copy('fp8-no-config'));
  editConfig(copy('nested'), (c) => (c.text_config = { quantization_config: { quant_method: 'gptq', bits: 4 } }));
  editConfig(
    copy('compressed'),
    (c) => (c.compression_config = { quant_method: 'compressed-tensors', format: 'pack-quantized' }),
  );
});

const configMessage = (name: string, what: string) =>
  `config.json declares ${what} (${path.join(models[name], 'config.json')}); ${SUPPORTED}`;

describe('checkpoints quantized in a format moe does not decode are refused', () => {
  test.each([
    ['bnb', 'quantization_config.quant_method "bitsandbytes", which moe does not decode'],
    [
      'fp8-static',
      'quantization_config.quant_method "fp8" with activation_scheme "static", whose static input scales moe does not apply (only "dynamic" is read)',
    ],
    ['nested', 'text_config.quantization_config.quant_method "gptq", which moe does not decode'],
    ['compressed', 'compression_config (quant_method "compressed-tensors"), which moe does not decode yet'],
  ])('%s: by its config.json', (name, what) => {
    expect(() => openCheckpoint(models[name])).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: `config.json declares ${what}`,
        hint: name === 'fp8-static' ? FP8_HINT : SUPPORTED,
      }),
    );
  });

  test('FP8 with dynamic activation scaling opens: the weight reads as codes × its block scale', () => {
    const ckpt = openCheckpoint(models.fp8);
    expect(ckpt.tensors.get(FP8_WEIGHT)?.fp8?.block).toEqual([128, 128]);
    expect(ckpt.tensors.has(FP8_WEIGHT.replace(/weight$/, 'weight_scale_inv'))).toBe(false);
    const reader = new TensorReader(ckpt);
    const w = reader.f32(FP8_WEIGHT);
    reader.close();
    expect(w.every((x) => x === Math.fround(0.01))).toBe(true); // code 0x38 is 1.0
  });

  test('FP8 tensors without any quantization_config: by the F8_E4M3 weight and its scale', () => {
    expect(() => openCheckpoint(models['fp8-no-config'])).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: `tensor "${FP8_WEIGHT}" is stored as F8_E4M3, a quantized weight (and 1 more such tensor), but config.json declares no quantization_config with quant_method "fp8"`,
        file: path.join(models['fp8-no-config'], 'model.safetensors'),
        hint: 'add the quantization_config the checkpoint was published with, or dequantize it first',
      }),
    );
  });

  test.each(['bnb', 'fp8-static'])(
    '%s: inspect, eval, calibrate, prune, merge, quantize (packed and GGUF), convert and verify refuse it and write nothing',
    async (name) => {
      const dir = models[name];
      const out = path.join(tmpDir(), 'out');
      const before = listDir(path.dirname(out));
      const runs: [string, () => unknown][] = [
        ['inspect', () => inspect({ model: dir })],
        ['eval', () => evalCommand({ model: dir, data: CALIB, seqLen: 32, maxTokens: 64 }, quiet)],
        [
          'eval --baseline',
          () =>
            evalCommand(
              { model: path.join(root, 'plain'), baseline: dir, data: CALIB, seqLen: 32, maxTokens: 64 },
              quiet,
            ),
        ],
        ['calibrate', () => calibrate({ model: dir, output: out, data: CALIB, seqLen: 32, maxTokens: 64 }, quiet)],
        [
          'prune',
          () =>
            prune({ model: dir, stats: path.join(root, 'no-stats'), method: 'frequency', keep: 2, output: out }, quiet),
        ],
        [
          'merge',
          () => merge({ model: dir, stats: path.join(root, 'no-stats'), method: 'msmoe', keep: 2, output: out }, quiet),
        ],
        ['quantize', () => quantize({ model: dir, output: out, bits: 4 }, quiet)],
        [
          'quantize --format gguf',
          () => exportGguf({ model: dir, output: path.join(out, 'm.gguf'), type: 'Q8_0' }, quiet),
        ],
        ['convert', () => convert({ model: dir, output: out }, quiet)],
        ['verify', () => verifyCheckpoint(dir)],
      ];
      for (const [cmd, run] of runs) {
        let error: unknown;
        try {
          await run();
        } catch (e) {
          error = e;
        }
        expect([cmd, error]).toEqual([
          cmd,
          expect.objectContaining({
            exitCode: 3,
            message: expect.stringMatching(
              /^config\.json declares quantization_config\.quant_method "(bitsandbytes|fp8)"/,
            ),
          }),
        ]);
      }
      expect(listDir(path.dirname(out))).toEqual(before);
    },
  );

  test('through the CLI: exit 3 and the one line, for eval of static FP8 and quantize of bitsandbytes', async () => {
    const out = path.join(tmpDir(), 'q');
    const e = await runMain(['eval', models['fp8-static'], '--data', CALIB, '--seq-len', '32', '--max-tokens', '64']);
    expect({ code: e.code, stderr: e.stderr.trim() }).toEqual({
      code: 3,
      stderr: `moe: config.json declares quantization_config.quant_method "fp8" with activation_scheme "static", whose static input scales moe does not apply (only "dynamic" is read) (${path.join(models['fp8-static'], 'config.json')}); ${FP8_HINT}`,
    });
    const q = await runMain(['quantize', models.bnb, '--bits', '4', '-o', out]);
    expect({ code: q.code, stderr: q.stderr.trim() }).toEqual({
      code: 3,
      stderr: `moe: ${configMessage('bnb', 'quantization_config.quant_method "bitsandbytes", which moe does not decode')}`,
    });
    expect(fs.existsSync(out)).toBe(false);
  });

  test('moe\'s own packed output (quantization_config "moe-packed") still opens', async () => {
    const out = path.join(tmpDir(), 'packed');
    await quantize({ model: path.join(root, 'plain'), output: out, bits: 4 }, quiet);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config.quant_method).toBe(
      'moe-packed',
    );
    const r = inspect({ model: out });
    expect(r.quantization!.tensors).toBeGreaterThan(0);
    expect(r.quantization!.bits_histogram['4']).toBeGreaterThan(0);
    // A moe-packed config over tensors with no packing metadata is not moe's format: the qweight parts are refused.
    const stripped = path.join(tmpDir(), 'stripped');
    fs.cpSync(out, stripped, { recursive: true });
    const file = path.join(stripped, 'model.safetensors');
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const json = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    delete json.__metadata__;
    writeRaw(file, json, buf.subarray(8 + n));
    expect(() => openCheckpoint(stripped)).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: expect.stringMatching(
          /^tensor "[^"]+\.qweight" is a part of a GPTQ\/AWQ packed weight \(or of a moe-packed one whose shard metadata is missing\)/,
        ),
      }),
    );
  });
});

describe('the side tensors and dtypes of each quantized format', () => {
  const ref = (name: string, dtype = 'F32'): [string, TensorRef] => [
    name,
    { name, dtype: dtype as TensorRef['dtype'], shape: [4, 4], file: '/m/model.safetensors', begin: 0, end: 64 },
  ];
  test.each([
    ['model.layers.0.mlp.experts.0.down_proj.weight_scale_inv', 'an FP8 block scale'],
    ['model.layers.0.self_attn.q_proj.weight_scale', 'a quantization scale or zero point (FP8, compressed-tensors)'],
    ['model.layers.0.self_attn.q_proj.input_scale', 'a quantization scale or zero point (FP8, compressed-tensors)'],
    [
      'model.layers.0.self_attn.q_proj.weight_zero_point',
      'a quantization scale or zero point (FP8, compressed-tensors)',
    ],
    ['model.layers.0.self_attn.q_proj.weight_packed', 'a part of a compressed-tensors packed weight'],
    [
      'model.layers.0.self_attn.q_proj.qweight',
      'a part of a GPTQ/AWQ packed weight (or of a moe-packed one whose shard metadata is missing)',
    ],
    [
      'model.layers.0.self_attn.q_proj.qzeros',
      'a part of a GPTQ/AWQ packed weight (or of a moe-packed one whose shard metadata is missing)',
    ],
    [
      'model.layers.0.self_attn.q_proj.scales',
      'a part of a GPTQ/AWQ packed weight (or of a moe-packed one whose shard metadata is missing)',
    ],
    [
      'model.layers.0.self_attn.q_proj.g_idx',
      'a part of a GPTQ/AWQ packed weight (or of a moe-packed one whose shard metadata is missing)',
    ],
    ['model.layers.0.mlp.experts.gate_up_proj_blocks', 'MXFP4 blocks or scales'],
    ['model.layers.0.mlp.experts.down_proj_scales', 'MXFP4 blocks or scales'],
    ['model.layers.0.mlp.experts.0.down_proj.weight.absmax', 'bitsandbytes quantization state'],
    ['model.layers.0.mlp.experts.0.down_proj.weight.quant_map', 'bitsandbytes quantization state'],
    ['model.layers.0.mlp.experts.0.down_proj.weight.quant_state.bitsandbytes__nf4', 'bitsandbytes quantization state'],
    ['model.layers.0.mlp.experts.0.down_proj.SCB', 'bitsandbytes quantization state'],
  ])('%s', (name, what) => {
    expect(() => checkTensorsNotQuantized(new Map([ref('model.embed_tokens.weight'), ref(name)]))).toThrow(
      expect.objectContaining({ exitCode: 3, message: expect.stringContaining(`tensor "${name}" is ${what}`) }),
    );
  });

  test.each(['F8_E4M3', 'F8_E5M2', 'I8', 'U8'])('a %s weight', (dtype) => {
    expect(() => checkTensorsNotQuantized(new Map([ref('model.norm.weight'), ref('lm_head.weight', dtype)]))).toThrow(
      expect.objectContaining({
        message: expect.stringContaining(`tensor "lm_head.weight" is stored as ${dtype}, a quantized weight`),
      }),
    );
  });

  test('plain bf16/f16/f32 tensors, e_score_correction_bias and a moe-packed config pass', () => {
    expect(() =>
      checkTensorsNotQuantized(
        new Map([
          ref('a.weight', 'BF16'),
          ref('b.weight', 'F16'),
          ref('model.layers.0.mlp.gate.e_score_correction_bias'),
          ref('c.bias', 'F32'),
        ]),
      ),
    ).not.toThrow();
    expect(() =>
      checkConfigNotQuantized(
        {
          model_type: 'qwen3_moe',
          quantization_config: { quant_method: 'moe-packed' },
          rope_scaling: { type: 'yarn' },
        },
        '/m/config.json',
      ),
    ).not.toThrow();
    expect(() =>
      checkConfigNotQuantized({ model_type: 'qwen3_moe', quantization_config: null }, '/m/config.json'),
    ).not.toThrow();
    expect(() => checkConfigNotQuantized({ quantization_config: { bits: 4 } }, '/m/config.json')).toThrow(
      expect.objectContaining({
        message: 'config.json declares quantization_config (no quant_method: {"bits":4}), which moe does not decode',
      }),
    );
  });
});
