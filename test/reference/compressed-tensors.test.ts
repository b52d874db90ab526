/**
 * `moe quantize --format compressed-tensors` against fixtures/reference/compressed-tensors.json, made by
 * scripts/check_compressed_tensors.py: there the compressed-tensors library (pinned tag) decompressed every weight
 * of these outputs to exactly moe's dequantized weights, and transformers loaded them with moe eval's perplexity.
 * Here moe re-writes each case and its safetensors bytes must hash as they did then; the config's
 * quantization_config is checked field by field, one packed weight is unpacked by the library's rule and compared
 * with the quantizer, and what the format refuses is refused in one line.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { quantizeRtn } from '../../src/quant/rtn';
import { mixedWidthsWarning } from '../../src/quant/granularity';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { readHeader } from '../../src/io/safetensors';
import { GOLDEN, ROOT, runMain, tmpDir } from '../helpers';

interface Case {
  model: string;
  options: string[];
  /** How the STATS of `options` were made: `moe calibrate` of the model on these token windows with these args. */
  calibration: { windows?: number[][]; text?: string; args: string[] } | null;
  /** Re-written here (the goldens, and tiny-moe at 4 bits); the other tiny-moe cases only by the script. */
  jest: boolean;
  safetensors_sha256: string;
  modules: number;
  max_abs_diff: number;
  quantization_config: Record<string, unknown>;
  ppl_transformers?: number;
  ppl_moe_eval?: number;
}
const REF = JSON.parse(
  fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'compressed-tensors.json'), 'utf8'),
) as { compressed_tensors: string; cases: Record<string, Case> };
const OUT = tmpDir('moe-ct-');

async function write(name: string, c: Case): Promise<string> {
  let opts = c.options;
  if (c.calibration) {
    const data = path.join(OUT, `${name}-calib.json`);
    fs.writeFileSync(data, JSON.stringify(c.calibration.windows));
    const stats = path.join(OUT, `${name}-stats`);
    const cal = await runMain(['calibrate', c.model, '--data', data, ...c.calibration.args, '-o', stats]);
    expect(cal.code).toBe(0);
    opts = opts.map((o) => (o === 'STATS' ? stats : o));
  }
  const out = path.join(OUT, name);
  const r = await runMain(['quantize', c.model, ...opts, '--format', 'compressed-tensors', '-o', out]);
  // The LP cases allocate per expert (made before layer-projection became the default): the engines' warning, only.
  const perExpert = opts.join(' ').includes('--granularity expert');
  expect(r.stderr.split('\n').filter((l) => l.startsWith('moe:'))).toEqual(
    perExpert ? [`moe: warning: ${mixedWidthsWarning('compressed-tensors', 'expert')}`] : [],
  );
  expect(r.code).toBe(0);
  return out;
}

const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

describe('compressed-tensors output matches the library-checked references', () => {
  it('pins the library tag and checked every case exactly, perplexities within 1e-3', () => {
    expect(REF.compressed_tensors).toBe('0.18.0');
    const cases = Object.values(REF.cases);
    expect(cases.length).toBeGreaterThanOrEqual(20);
    // the fixture and one golden of every architecture (gpt_oss's fused experts written linearized), mixed bit
    // widths (LP, --attn-bits), asymmetric, GPTQ
    const index = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'index.json'), 'utf8')) as {
      cases: { model_type: string }[];
    };
    const typeOf = (model: string) =>
      (JSON.parse(fs.readFileSync(path.join(ROOT, model, 'config.json'), 'utf8')) as { model_type: string }).model_type;
    expect(new Set(cases.map((c) => typeOf(c.model)))).toEqual(new Set(index.cases.map((c) => c.model_type)));
    expect(cases.map((c) => c.model)).toContain('fixtures/tiny-moe');
    for (const c of cases) {
      expect(c.max_abs_diff).toBe(0);
      if (c.ppl_transformers !== undefined)
        expect(Math.abs(c.ppl_transformers - c.ppl_moe_eval!) / c.ppl_moe_eval!).toBeLessThan(1e-3);
    }
    expect(cases.filter((c) => c.ppl_transformers !== undefined).length).toBeGreaterThanOrEqual(13);
    // Mixed widths: one config group per width, the experts' targets one regex per layer and projection.
    const mixed = REF.cases['qwen3_moe-4-attn8'].quantization_config as {
      config_groups: Record<string, { targets: string[]; weights: { num_bits: number } }>;
    };
    expect(Object.values(mixed.config_groups).map((g) => g.weights.num_bits)).toEqual([8, 4]);
    expect(mixed.config_groups.group_0.targets).toContain('re:^model\\.layers\\.0\\.self_attn\\.q_proj$');
    expect(mixed.config_groups.group_1.targets).toContain('re:^model\\.layers\\.1\\.mlp\\.experts\\.\\d+\\.up_proj$');
  });

  const rewritten = Object.keys(REF.cases).filter((n) => REF.cases[n].jest);
  it.each(rewritten)('%s: the same bytes as the checked output', async (name) => {
    const c = REF.cases[name];
    const out = await write(name, c);
    expect(sha(path.join(out, 'model.safetensors'))).toBe(c.safetensors_sha256);
    const packed = readHeader(path.join(out, 'model.safetensors')).tensors.filter((t) =>
      t.name.endsWith('.weight_packed'),
    );
    expect(packed.length).toBe(c.modules);
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toEqual(c.quantization_config);
  });

  it('writes the config and the packing the library reads (tiny-moe, 4 bits, symmetric)', async () => {
    const out = path.join(OUT, 'tiny-4');
    if (!fs.existsSync(out)) await write('tiny-4', REF.cases['tiny-4']);
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    const q = config.quantization_config;
    expect(q.quant_method).toBe('compressed-tensors');
    expect(q.format).toBe('pack-quantized');
    expect(q.quantization_status).toBe('compressed');
    expect(Object.keys(q.config_groups)).toEqual(['group_0']);
    expect(q.config_groups.group_0.targets).toEqual(['Linear']);
    expect(q.config_groups.group_0.weights).toMatchObject({ num_bits: 4, symmetric: true, strategy: 'group' });
    expect(q.ignore).toEqual([
      'lm_head',
      'model.embed_tokens',
      'model.layers.0.mlp.gate',
      'model.layers.1.mlp.gate',
      'model.layers.2.mlp.gate',
    ]);
    // One expert's weight_packed unpacked by the library's rule: value i at bits 4i.. of the row's int32 words,
    // minus 2^(b-1), equals the symmetric RTN codes minus their zero point 8.
    const name = 'model.layers.1.mlp.experts.3.down_proj';
    const src = openCheckpoint(path.join(ROOT, 'fixtures', 'tiny-moe'));
    const w = new TensorReader(src).f32(name + '.weight');
    const ref = src.tensors.get(name + '.weight')!;
    const [rows, cols] = ref.shape;
    const expected = quantizeRtn(w, rows, cols, { bits: 4, groupSize: 128, symmetric: true });
    const h = readHeader(path.join(out, 'model.safetensors'));
    const t = h.tensors.find((x) => x.name === name + '.weight_packed')!;
    expect(t.dtype).toBe('I32');
    expect(t.shape).toEqual([rows, Math.ceil((cols * 4) / 32)]);
    const fd = fs.openSync(path.join(out, 'model.safetensors'), 'r');
    const buf = Buffer.alloc(t.end - t.begin);
    fs.readSync(fd, buf, 0, buf.length, t.begin);
    fs.closeSync(fd);
    const words = new Int32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    let bad = 0;
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < cols; i++) {
        const v = ((words[r * t.shape[1] + (i >> 3)] >>> ((i & 7) * 4)) & 15) - 8;
        if (v !== expected.codes[r * cols + i] - expected.zeros[r]) bad++;
      }
    expect(bad).toBe(0);
    expect(new Set(expected.zeros)).toEqual(new Set([8]));
  });

  it('writes fused experts (gpt_oss) linearized as llm-compressor does: one module per expert and projection', async () => {
    // gpt_oss-4 above re-wrote it byte for byte; here its layout: per-expert Linear modules with their biases
    const out = path.join(OUT, 'gpt_oss-4');
    if (!fs.existsSync(out)) await write('gpt_oss-4', REF.cases['gpt_oss-4']);
    const names = readHeader(path.join(out, 'model.safetensors')).tensors.map((t) => t.name);
    expect(names).toContain('model.layers.0.mlp.experts.7.gate_proj.weight_packed');
    expect(names).toContain('model.layers.0.mlp.experts.7.down_proj.bias');
    expect(names.filter((n) => /experts\.(gate_up_proj|down_proj)/.test(n))).toEqual([]);
    expect(REF.cases['gpt_oss-4'].quantization_config.ignore).toContain('model.layers.0.mlp.router');
  });

  it('refuses --layers and a group size that does not divide the inputs', async () => {
    const tiny = path.join(ROOT, 'fixtures', 'tiny-moe');
    const layers = await runMain([
      'quantize',
      tiny,
      '--bits',
      '4',
      '--format',
      'compressed-tensors',
      '--layers',
      '0-1',
      '-o',
      path.join(OUT, 'l'),
    ]);
    expect(layers.code).toBe(2);
    expect(layers.stderr).toContain('--format compressed-tensors writes a whole model; --layers writes parts');
    const group = await runMain([
      'quantize',
      tiny,
      '--bits',
      '4',
      '--format',
      'compressed-tensors',
      '--group-size',
      '96',
      '-o',
      path.join(OUT, 'x'),
    ]);
    expect(group.code).toBe(2);
    expect(group.stderr).toMatch(
      /has 256 inputs, not a multiple of --group-size 96 .*choose a --group-size that divides it/,
    );
    for (const d of ['g', 'l', 'x']) expect(fs.existsSync(path.join(OUT, d))).toBe(false);
  });
});
