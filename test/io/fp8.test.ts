/**
 * FP8 block-scaled checkpoints (quant_method "fp8", src/io/fp8.ts): decoding (hand-checkable values, partial
 * edge blocks, row reads), the encoder against the codes and scales Python made from the base goldens'
 * float32 weights (scripts/make_golden.py: transformers' Fp8Quantize rule), transformers' router choices on the
 * FP8 goldens, inspect, prune bit-exactness of codes and scales, merge's re-encoding, convert's dequantized
 * output, and the refusals. The logits and loss of the FP8 goldens are checked by test/model/forward-golden.test.ts
 * and the perplexity of their outputs in transformers by test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { convert } from '../../src/commands/convert';
import { inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { fromFloat32, toFloat32 } from '../../src/io/dtype';
import { dequantizeFp8, E4M3_MAX, encodeFp8, floatToE4M3, scaleName } from '../../src/io/fp8';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, rawHeader, ROOT, tmpDir, writeRaw } from '../helpers';

const QWEN = path.join(GOLDEN, 'qwen3_moe-fp8');
const DSV3 = path.join(GOLDEN, 'deepseek_v3-fp8');
const CALIB = path.join(ROOT, 'fixtures', 'reference', 'golden-data', 'calib.json');

/** A tensor's stored bytes, straight from the file (no src/ code). */
function stored(dir: string, name: string): Buffer {
  const file = path.join(dir, 'model.safetensors');
  const { n, json } = rawHeader(file);
  const t = json[name];
  if (!t) throw new Error(`${name} not in ${file}`);
  const buf = fs.readFileSync(file);
  return buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]);
}

function f32(b: Buffer): Float32Array {
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

describe('decoding', () => {
  test('e4m3 codes × the scale of their block, with partial edge blocks on both axes', () => {
    // [3, 5] in blocks of [2, 3]: scale grid [2, 2]; block (1, 1) holds the single value at [2, 3..4].
    const codes = new Uint8Array([
      ...[0x38, 0x40, 0xb8, 0x30, 0x01], // 1, 2, -1 | 0.5, 2^-9
      ...[0x7e, 0x00, 0x80, 0x3c, 0x44], // 448, 0, -0 | 1.5, 3
      ...[0x38, 0x38, 0x38, 0x38, 0xc8], // 1, 1, 1 | 1, -4
    ]);
    const scales = new Float32Array([0.5, 4, 8, 0.25]);
    const got = dequantizeFp8(codes, scales, 0, 3, 5, [2, 3], 'F32');
    expect([...got]).toEqual([0.5, 1, -0.5, 2, 4 * 2 ** -9, 224, 0, -0, 6, 12, 8, 8, 8, 0.25, -1]);
    // Rows 1..2 alone: the scale rows passed start at block row floor(1/2) = 0.
    expect([...dequantizeFp8(codes.subarray(5), scales, 1, 2, 5, [2, 3], 'F32')]).toEqual([...got.subarray(5)]);
    // Rounded to the compute dtype: 1.5 × 0.3 in float32, then bf16.
    const bf = dequantizeFp8(new Uint8Array([0x3c]), new Float32Array([0.3]), 0, 1, 1, [1, 1], 'BF16')[0];
    expect(bf).toBe(toFloat32(new Uint8Array([0xe6, 0x3e]), 'BF16')[0]); // 0.44921875 = bf16(0.45000002)
  });

  test('the e4m3 encoder inverts every finite code, rounds half to even and saturates at ±448', () => {
    const all = toFloat32(
      Uint8Array.from({ length: 256 }, (_, i) => i),
      'F8_E4M3',
    );
    for (let i = 0; i < 256; i++) if (!Number.isNaN(all[i])) expect([i, floatToE4M3(all[i])]).toEqual([i, i]);
    expect(floatToE4M3(1.0625)).toBe(0x38); // halfway between 1 and 1.125: to the even code 1
    expect(floatToE4M3(1.1875)).toBe(0x3a); // halfway between 1.125 and 1.25: to 1.25
    expect(floatToE4M3(2 ** -10)).toBe(0x00); // half the smallest subnormal: to zero (even)
    expect(floatToE4M3(3 * 2 ** -10)).toBe(0x02); // 1.5 subnormal steps: to 2
    expect(floatToE4M3(460)).toBe(0x7e);
    expect(floatToE4M3(-1e9)).toBe(0xfe);
    expect(floatToE4M3(NaN)).toBe(0x7f);
    expect(E4M3_MAX).toBe(all[0x7e]);
  });

  test('encoding with BF16 scales: the scales are bf16 values and the codes are computed from them', () => {
    const w = Float32Array.from({ length: 6 * 5 }, (_, i) => Math.sin(i * 1.7) * (i % 7) * 0.013);
    const e = encodeFp8(w, 6, 5, [4, 3], false, 'BF16');
    expect(e.scales.length).toBe(4);
    expect(toFloat32(fromFloat32(e.scales, 'BF16'), 'BF16')).toEqual(e.scales);
    const back = dequantizeFp8(e.codes, e.scales, 0, 6, 5, [4, 3], 'F32');
    // e4m3 keeps 3 mantissa bits: within half a step (2^-4 relative), or a subnormal step, of every value
    w.forEach((x, i) => {
      const scale = e.scales[Math.floor(i / 5 / 4) * 2 + Math.floor((i % 5) / 3)];
      expect(Math.abs(back[i] - x)).toBeLessThanOrEqual(Math.abs(x) / 16 + scale * 2 ** -10);
    });
  });

  test("the FP8 goldens' logical tensors read as codes × block scales, whole, by rows and by gathered rows", () => {
    const ckpt = openCheckpoint(QWEN);
    const reader = new TensorReader(ckpt);
    const name = 'model.layers.0.self_attn.k_proj.weight'; // [48, 64] in blocks of 32×48: edges on both axes
    const t = reader.ref(name);
    expect({ dtype: t.dtype, shape: t.shape, block: t.fp8?.block }).toEqual({
      dtype: 'F32',
      shape: [48, 64],
      block: [32, 48],
    });
    const codes = toFloat32(stored(QWEN, name), 'F8_E4M3');
    const s = f32(stored(QWEN, scaleName(name)));
    expect(s.length).toBe(4);
    const want = codes.map((q, i) => Math.fround(q * s[Math.floor(i / 64 / 32) * 2 + Math.floor((i % 64) / 48)]));
    expect(reader.f32(name)).toEqual(want);
    expect(reader.rowsF32(name, 30, 5)).toEqual(want.slice(30 * 64, 35 * 64)); // across the block-row edge
    expect(toFloat32(reader.bytes(name), 'F32')).toEqual(want);
    reader.close();
  });
});

describe('the encoder gives the codes and scales Python made from the float32 weights', () => {
  test.each([
    ['qwen3_moe-fp8', 'qwen3_moe'],
    ['deepseek_v3-fp8', 'deepseek_v3'],
  ])('%s (transformers Fp8Quantize, ue8m0 on deepseek_v3-fp8)', (fp8, base) => {
    const dir = path.join(GOLDEN, fp8);
    const ckpt = openCheckpoint(dir);
    const src = new TensorReader(openCheckpoint(path.join(GOLDEN, base)));
    let n = 0;
    for (const t of ckpt.tensors.values()) {
      if (!t.fp8) continue;
      const [rows, cols] = t.shape;
      const e = encodeFp8(src.f32(t.name), rows, cols, t.fp8.block, t.fp8.ue8m0);
      expect(Buffer.from(e.codes).equals(stored(dir, t.fp8.weight.name))).toBe(true);
      expect(e.scales).toEqual(f32(stored(dir, t.fp8.scale.name)));
      if (t.fp8.ue8m0) for (const x of e.scales) expect(Number.isInteger(Math.log2(x))).toBe(true);
      n++;
    }
    src.close();
    expect(n).toBe(JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8')).fp8_weights);
  });
});

test.each(['qwen3_moe-fp8', 'deepseek_v3-fp8'])(
  "%s: the router picks transformers' experts on every token",
  async (c) => {
    const dir = path.join(GOLDEN, c);
    const golden = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
    const ids = Int32Array.from(new BigInt64Array(golden.bytes('input_ids').slice().buffer), Number);
    const [B, T, V] = golden.ref('logits').shape;
    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    const reader = new TensorReader(ckpt);
    const fp = new ForwardPass(reader, arch, new RefBackend());
    const got = new Map<number, number[][]>();
    const k = arch.topK;
    await fp.run(ids, B, T, fullLogits(B * T, V).sink, {
      router: (layer, r, _x, tokens) => {
        const rows = got.get(layer) ?? [];
        for (let i = 0; i < tokens; i++) rows.push([...r.experts.subarray(i * k, (i + 1) * k)].sort((a, b) => a - b));
        got.set(layer, rows);
      },
    });
    reader.close();
    expect([...got.keys()]).toEqual(arch.moeLayers);
    for (const layer of arch.moeLayers) {
      const want = new BigInt64Array(golden.bytes(`router.${layer}`).slice().buffer);
      const rows = [...Array(B * T).keys()].map((i) =>
        [...want.subarray(i * k, (i + 1) * k)].map(Number).sort((a, b) => a - b),
      );
      expect(got.get(layer)).toEqual(rows);
    }
    golden.close();
  },
);

test('inspect states how the FP8 tensors are stored, and counts scales as bytes, not parameters', () => {
  const golden = JSON.parse(fs.readFileSync(path.join(QWEN, 'golden.json'), 'utf8'));
  const r = inspect({ model: QWEN });
  const { json } = rawHeader(path.join(QWEN, 'model.safetensors'));
  const bytesOf = (re: RegExp, dtype?: string) =>
    Object.entries(json)
      .filter(([k, t]) => re.test(k) && (!dtype || t.dtype === dtype))
      .reduce((s, [, t]) => s + t.data_offsets[1] - t.data_offsets[0], 0);
  const fp8Bytes = bytesOf(/./, 'F8_E4M3') + bytesOf(/weight_scale_inv$/);
  expect(r.dtypes).toEqual({
    F32: { tensors: 14, params: golden.params_total - golden.fp8_params, bytes: bytesOf(/(?<!_scale_inv)$/, 'F32') },
    'F8_E4M3 + F32 block scales 32×48': { tensors: golden.fp8_weights, params: golden.fp8_params, bytes: fp8Bytes },
  });
  expect(r.fp8).toEqual({
    tensors: golden.fp8_weights,
    params: golden.fp8_params,
    bytes: fp8Bytes,
    storage: ['F8_E4M3 + F32 block scales 32×48'],
    read_as: 'F32',
  });
  expect(r.params_total).toBe(golden.params_total);
  expect(inspect({ model: DSV3 }).fp8!.storage).toEqual(['F8_E4M3 + F32 block scales 32×32 (ue8m0)']);
});

describe('prune, merge and convert of FP8 checkpoints', () => {
  let work: string;
  beforeAll(() => {
    work = tmpDir('moe-fp8-');
  });

  const stats = async (model: string, name: string) => {
    const out = path.join(work, `${name}-stats`);
    if (!fs.existsSync(out)) await calibrate({ model, output: out, data: CALIB, seqLen: 32 }, quiet);
    return out;
  };

  test('prune copies the kept experts and every other FP8 tensor bit-exact, scales included', async () => {
    const out = path.join(work, 'pruned');
    await prune({ model: QWEN, stats: await stats(QWEN, 'qwen'), method: 'reap', keep: 5, output: out }, quiet);
    const kept = JSON.parse(fs.readFileSync(path.join(out, 'moe-compression.json'), 'utf8')).kept;
    const { json } = rawHeader(path.join(out, 'model.safetensors'));
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config).toEqual(
      JSON.parse(fs.readFileSync(path.join(QWEN, 'config.json'), 'utf8')).quantization_config,
    );
    let compared = 0;
    for (const [name, t] of Object.entries(json)) {
      if (name.endsWith('mlp.gate.weight')) continue; // the router: rows sliced
      const m = /^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(.*)$/.exec(name);
      const from = m ? `model.layers.${m[1]}.mlp.experts.${kept[m[1]][Number(m[2])]}.${m[3]}` : name;
      expect(stored(out, name).equals(stored(QWEN, from))).toBe(true);
      if (t.dtype === 'F8_E4M3' || name.endsWith('_scale_inv')) compared++;
    }
    expect(compared).toBe(2 * (7 + 2 * 5 * 3)); // attention (o_proj of layer 1 kept f32) + 5 experts × 3, × 2 layers
    expect(openCheckpoint(out).tensors.get('model.layers.1.mlp.experts.4.down_proj.weight')?.fp8).toBeDefined();
  });

  test('merge re-encodes merged experts (ue8m0) and keeps the single ones bit-exact', async () => {
    const st = await stats(DSV3, 'dsv3');
    const out = path.join(work, 'merged');
    await merge({ model: DSV3, stats: st, method: 'msmoe', keep: 4, output: out }, quiet);
    // The same merge on the dequantized model (convert reads FP8 dequantized and writes float32).
    const plain = path.join(work, 'dsv3-f32');
    await convert({ model: DSV3, output: plain }, quiet);
    expect(JSON.parse(fs.readFileSync(path.join(plain, 'config.json'), 'utf8')).quantization_config).toBeUndefined();
    expect(
      rawHeader(path.join(plain, 'model.safetensors')).json['model.layers.1.mlp.experts.0.up_proj.weight'],
    ).toEqual(expect.objectContaining({ dtype: 'F32', shape: [8, 64] }));
    const plainOut = path.join(work, 'merged-f32');
    await merge(
      { model: plain, stats: await stats(plain, 'dsv3-f32'), method: 'msmoe', keep: 4, output: plainOut },
      quiet,
    );
    const record = JSON.parse(fs.readFileSync(path.join(out, 'moe-compression.json'), 'utf8'));
    const merged = new TensorReader(openCheckpoint(out));
    const reference = new TensorReader(openCheckpoint(plainOut));
    let reencoded = 0;
    let copied = 0;
    for (const layer of ['1', '2']) {
      record.groups[layer].forEach((g: { members: number[] }, i: number) => {
        for (const proj of ['gate_proj', 'up_proj', 'down_proj']) {
          const name = `model.layers.${layer}.mlp.experts.${i}.${proj}.weight`;
          const t = merged.ref(name);
          const w = stored(out, name);
          const s = stored(out, scaleName(name));
          if (g.members.length === 1) {
            const from = `model.layers.${layer}.mlp.experts.${g.members[0]}.${proj}.weight`;
            expect(w.equals(stored(DSV3, from)) && s.equals(stored(DSV3, scaleName(from)))).toBe(true);
            copied++;
          } else {
            const e = encodeFp8(reference.f32(name), t.shape[0], t.shape[1], [32, 32], true);
            expect(w.equals(Buffer.from(e.codes))).toBe(true);
            expect(f32(s)).toEqual(e.scales);
            for (const x of e.scales) expect(Number.isInteger(Math.log2(x))).toBe(true);
            reencoded++;
          }
        }
      });
    }
    merged.close();
    reference.close();
    expect(reencoded).toBeGreaterThan(0);
    expect(copied).toBeGreaterThan(0);
  });
});

test('quantize starts from the dequantized values; its outputs carry no fp8 quantization_config', async () => {
  const work = tmpDir('moe-fp8-q-');
  const packed = path.join(work, 'packed');
  await quantize({ model: QWEN, output: packed, bits: 8 }, quiet); // RTN through the worker pool (bytesInto)
  const q = openCheckpoint(packed);
  expect(q.config.quantization_config).toEqual(expect.objectContaining({ quant_method: 'moe-packed' }));
  const src = new TensorReader(openCheckpoint(QWEN));
  const out = new TensorReader(q);
  const name = 'model.layers.0.self_attn.k_proj.weight';
  expect(q.tensors.get(name)?.packed?.info.bits).toBe(8);
  const a = src.f32(name);
  const b = out.f32(name);
  const amax = a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  a.forEach((x, i) => expect(Math.abs(x - b[i])).toBeLessThan(amax / 100)); // 8-bit groups of the FP8 values
  out.close();
  const deq = path.join(work, 'dequantized');
  await quantize({ model: QWEN, output: deq, bits: 4, format: 'dequantized' }, quiet);
  const d = openCheckpoint(deq);
  expect(d.config.quantization_config).toBeUndefined();
  expect(new Set([...d.tensors.values()].map((t) => t.dtype))).toEqual(new Set(['F32']));
  const { json } = rawHeader(path.join(deq, 'model.safetensors'));
  expect(Object.keys(json).filter((k) => k.endsWith('_scale_inv'))).toEqual([]);
  // Tensors quantize leaves alone are the source's values.
  expect(new TensorReader(d).f32('model.norm.weight')).toEqual(src.f32('model.norm.weight'));
  src.close();
});

describe('refusals', () => {
  const model = 'model.layers.0.mlp.experts.0.down_proj.weight';
  /** A copy of qwen3_moe-fp8 with its tensors (file order, bytes) and config edited. */
  function variant(
    name: string,
    edit: (ts: { name: string; dtype: string; shape: number[]; bytes: Buffer }[]) => typeof ts,
    editConfig?: (q: Record<string, unknown>) => void,
  ): string {
    const dir = path.join(tmpDir('moe-fp8-bad-'), name);
    fs.cpSync(QWEN, dir, { recursive: true });
    const file = path.join(dir, 'model.safetensors');
    const { n, json } = rawHeader(file);
    const buf = fs.readFileSync(file);
    const ts = Object.entries(json)
      .sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0])
      .map(([k, t]) => ({
        name: k,
        dtype: t.dtype,
        shape: t.shape,
        bytes: buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]),
      }));
    const header: Record<string, unknown> = {};
    const parts: Buffer[] = [];
    let at = 0;
    for (const t of edit(ts)) {
      header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes.length] };
      parts.push(t.bytes);
      at += t.bytes.length;
    }
    writeRaw(file, header, Buffer.concat(parts));
    if (editConfig) {
      const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      editConfig(c.quantization_config);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c));
    }
    return dir;
  }
  const same = <T>(ts: T[]) => ts;
  const file = (dir: string) => path.join(dir, 'model.safetensors');
  const config = (dir: string) => path.join(dir, 'config.json');
  const HINT =
    'dequantize the checkpoint first (transformers: FineGrainedFP8Config(dequantize=True)), or use the unquantized original';

  test.each<[string, () => string, (d: string) => { message: string; file: string; hint?: string }]>([
    [
      'a scale of another dtype',
      () =>
        variant('f16-scale', (ts) =>
          ts.map((t) => (t.name === scaleName(model) ? { ...t, dtype: 'F16', bytes: t.bytes.subarray(0, 4) } : t)),
        ),
      (d) => ({
        message: `${scaleName(model)} is F16 [2,1], expected F32 or BF16 [2,1] for ${model} [64,8] in blocks of 32×48`,
        file: file(d),
      }),
    ],
    [
      'a scale of another shape',
      () => variant('shape', (ts) => ts.map((t) => (t.name === scaleName(model) ? { ...t, shape: [1, 2] } : t))),
      (d) => ({
        message: `${scaleName(model)} is F32 [1,2], expected F32 or BF16 [2,1] for ${model} [64,8] in blocks of 32×48`,
        file: file(d),
      }),
    ],
    [
      'a weight without its scale',
      () => variant('no-scale', (ts) => ts.filter((t) => t.name !== scaleName(model))),
      (d) => ({
        message: `tensor "${model}" is stored as F8_E4M3 without its ${scaleName(model)}`,
        file: file(d),
      }),
    ],
    [
      'a scale without its weight',
      () =>
        variant('no-weight', (ts) =>
          ts.map((t) => (t.name === model ? { ...t, dtype: 'F32', bytes: Buffer.alloc(t.bytes.length * 4) } : t)),
        ),
      (d) => ({
        message: `tensor "${scaleName(model)}" is an FP8 block scale without its F8_E4M3 weight`,
        file: file(d),
      }),
    ],
    [
      'an F8_E5M2 weight',
      () => variant('e5m2', (ts) => ts.map((t) => (t.name === model ? { ...t, dtype: 'F8_E5M2' } : t))),
      (d) => ({
        message: `tensor "${model}" is stored as F8_E5M2, which moe does not decode (FP8 is read as E4M3)`,
        file: file(d),
        hint: HINT,
      }),
    ],
    [
      'activation_scheme "static"',
      () => variant('static', same, (q) => (q.activation_scheme = 'static')),
      (d) => ({
        message:
          'config.json declares quantization_config.quant_method "fp8" with activation_scheme "static", whose static input scales moe does not apply (only "dynamic" is read)',
        file: config(d),
        hint: HINT,
      }),
    ],
    [
      'per-tensor FP8',
      () => variant('per-tensor', same, (q) => (q.weight_block_size = null)),
      (d) => ({
        message:
          'config.json declares quantization_config.quant_method "fp8" with weight_block_size null, per-tensor FP8, which moe does not decode (block scales are read)',
        file: config(d),
      }),
    ],
    [
      'an unknown scale_fmt',
      () => variant('scale-fmt', same, (q) => (q.scale_fmt = 'e8m0x')),
      (d) => ({
        message:
          'config.json declares quantization_config.quant_method "fp8" with scale_fmt "e8m0x", which moe does not decode ("float" or "ue8m0" are read)',
        file: config(d),
      }),
    ],
    [
      'F8 weights without an fp8 quantization_config',
      () => {
        const d = variant('no-config', same);
        const c = JSON.parse(fs.readFileSync(config(d), 'utf8'));
        delete c.quantization_config;
        fs.writeFileSync(config(d), JSON.stringify(c));
        return d;
      },
      (d) => ({
        message: expect.stringMatching(
          /^tensor "[^"]+" is (stored as F8_E4M3, a quantized weight|an FP8 block scale) \(and 109 more such tensors\), but config.json declares no quantization_config with quant_method "fp8"$/,
        ),
        file: file(d),
      }),
    ],
  ])('%s: exit 3 with the reason', (_what, make, want) => {
    const dir = make();
    expect(() => openCheckpoint(dir)).toThrow(expect.objectContaining({ exitCode: 3, ...want(dir) }));
  });

  test('BF16 scales and a bf16 compute dtype are read (the products rounded to bf16, as transformers does)', () => {
    const hi16 = (b: Buffer) => Buffer.from(Array.from(b).filter((_, i) => i % 4 >= 2)); // f32 → bf16 by truncation
    const dir = variant('bf16', (ts) =>
      ts.map((t) => (t.name === scaleName(model) ? { ...t, dtype: 'BF16', bytes: hi16(t.bytes) } : t)),
    );
    const c = JSON.parse(fs.readFileSync(config(dir), 'utf8'));
    fs.writeFileSync(config(dir), JSON.stringify({ ...c, dtype: 'bfloat16' }));
    const reader = new TensorReader(openCheckpoint(dir));
    expect(reader.dtype(model)).toBe('BF16');
    const codes = toFloat32(stored(QWEN, model), 'F8_E4M3');
    const s = toFloat32(hi16(stored(QWEN, scaleName(model))), 'BF16');
    const want = codes.map((q, i) => Math.fround(q * s[Math.floor(i / 8 / 32)]));
    const got = reader.f32(model);
    expect(got).toEqual(toFloat32(fromFloat32(want, 'BF16'), 'BF16'));
    expect(got).not.toEqual(want);
    expect(toFloat32(reader.bytes(model), 'BF16')).toEqual(got);
    reader.close();
  });
});
