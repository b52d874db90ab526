/**
 * MXFP4 as gpt-oss publishes it (issue 18), against transformers: fixtures/golden/gpt_oss-mxfp4 is a tiny gpt-oss
 * whose experts are stored as *_blocks / *_scales (scripts/make_golden.py), with the sha256 of the expert tensors
 * transformers 5.18 dequantized from it. moe folds each pair into one BF16 tensor of the bf16 checkpoint's shape and
 * orientation, decodes it to the same values bit for bit (whole, and one expert at a time reading only that expert's
 * bytes), and its encoder writes the bytes the script's encoder wrote for awkward rows. Malformed MXFP4 is refused.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import {
  decodeMxfp4,
  e2m1Code,
  encodeMxfp4,
  encodeMxfp4Transposed,
  decodeMxfp4Transposed,
  mxfp4ScaleByte,
} from '../../src/io/mxfp4';
import { convert } from '../../src/commands/convert';
import { inspect, storedAs } from '../../src/commands/inspect';
import { storedBytes } from '../../src/io/packed';
import { GOLDEN, quiet, rawHeader, tmpDir, writeRaw } from '../helpers';

const DIR = path.join(GOLDEN, 'gpt_oss-mxfp4');
const info = JSON.parse(fs.readFileSync(path.join(DIR, 'golden.json'), 'utf8'));
const EXPERTS = Object.keys(info.mxfp4.dequantized);
const sha256 = (a: Float32Array | Uint8Array) =>
  createHash('sha256')
    .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
    .digest('hex');

describe('the golden gpt-oss with MXFP4 experts', () => {
  const ckpt = openCheckpoint(DIR);

  test('each *_blocks + *_scales pair is one BF16 tensor [E, in, out] in the place of its blocks', () => {
    const names = [...ckpt.tensors.keys()];
    expect(names.filter((n) => /_blocks$|_scales$/.test(n))).toEqual([]);
    for (const name of EXPERTS) {
      const t = ckpt.tensors.get(name)!;
      expect({ dtype: t.dtype, shape: t.shape }).toEqual({ dtype: 'BF16', shape: info.mxfp4.dequantized[name].shape });
      expect(t.mxfp4!.blocks.name).toBe(`${name}_blocks`);
      expect(t.mxfp4!.scales.name).toBe(`${name}_scales`);
      expect(t.begin).toBe(t.mxfp4!.blocks.begin);
    }
    expect(ckpt.tensors.get('model.layers.0.mlp.experts.gate_up_proj')!.shape).toEqual([8, 64, 128]); // [E, H, 2I]
    expect(ckpt.tensors.get('model.layers.0.mlp.experts.down_proj')!.shape).toEqual([8, 64, 64]); // [E, I, H]
    // The biases stay plain tensors beside them.
    expect(ckpt.tensors.get('model.layers.0.mlp.experts.gate_up_proj_bias')!.shape).toEqual([8, 128]);
    // Every parameter of the bf16 model, counted on the logical tensors.
    let params = 0;
    for (const t of ckpt.tensors.values()) params += t.shape.reduce((a, b) => a * b, 1);
    expect(params).toBe(info.params_total);
  });

  test.each(EXPERTS)("%s decodes to transformers' dequantized tensor bit for bit", (name) => {
    const reader = new TensorReader(ckpt);
    const whole = reader.f32(name);
    expect(sha256(whole)).toBe(info.mxfp4.dequantized[name].sha256_f32);
    expect(whole.reduce((s, v) => s + Math.abs(v), 0)).toBeCloseTo(info.mxfp4.dequantized[name].sum_abs, 6);
    // bytes() is that tensor as BF16 (exact: every MXFP4 value has at most two significant bits).
    const bf16 = reader.bytes(name);
    expect(bf16.length).toBe(whole.length * 2);
    expect(new Uint16Array(bf16.slice().buffer)[123]).toBe(new Uint32Array(whole.buffer)[123] >>> 16);
    reader.close();
  });

  test('one expert at a time: sliceF32 reads only that expert and equals the whole tensor', () => {
    const name = 'model.layers.1.mlp.experts.gate_up_proj';
    const t = ckpt.tensors.get(name)!;
    const reader = new TensorReader(ckpt);
    const whole = reader.f32(name);
    const per = whole.length / t.shape[0];
    for (const e of [0, 5, 7]) {
      const before = ckpt.bytesRead.value;
      const slice = reader.sliceF32(name, e);
      const { blocks, scales } = t.mxfp4!;
      expect(ckpt.bytesRead.value - before).toBe((blocks.end - blocks.begin + scales.end - scales.begin) / t.shape[0]);
      expect(slice).toEqual(whole.subarray(e * per, (e + 1) * per));
    }
    expect(reader.rowsF32(name, 2, 3)).toEqual(whole.subarray(2 * per, 5 * per));
    // chunks() streams the BF16 bytes one expert at a time (what convert and verify read).
    const pieces = [...reader.chunks(name, 1 << 20)];
    expect(pieces.map((p) => p.length)).toEqual(new Array(t.shape[0]).fill(per * 2));
    expect(Buffer.concat(pieces).equals(Buffer.from(reader.bytes(name)))).toBe(true);
    expect(() => reader.sliceF32(name, 8)).toThrow(RangeError);
    reader.close();
  });

  test('rawSlice gives the stored bytes of one expert, bit-exact', () => {
    const t = ckpt.tensors.get('model.layers.0.mlp.experts.down_proj')!;
    const { blocks, scales } = t.mxfp4!;
    const file = fs.readFileSync(blocks.file);
    const reader = new TensorReader(ckpt);
    const e = 3;
    const nb = (blocks.end - blocks.begin) / 8;
    const ns = (scales.end - scales.begin) / 8;
    const rawB = reader.rawSlice(blocks, e);
    const rawS = reader.rawSlice(scales, e);
    expect(Buffer.from(rawB).equals(file.subarray(blocks.begin + e * nb, blocks.begin + (e + 1) * nb))).toBe(true);
    expect(Buffer.from(rawS).equals(file.subarray(scales.begin + e * ns, scales.begin + (e + 1) * ns))).toBe(true);
    // Re-encoding the decoded expert gives back the stored bytes (the encoder is the rule these were made by).
    const [, outDim, groups] = blocks.shape;
    const again = encodeMxfp4Transposed(reader.sliceF32(t.name, e), groups * 32, outDim);
    expect(Buffer.from(again.blocks).equals(Buffer.from(rawB))).toBe(true);
    expect(Buffer.from(again.scales).equals(Buffer.from(rawS))).toBe(true);
    reader.close();
  });
});

describe('moe inspect states the storage', () => {
  const MXFP4 = 'MXFP4 (U8 blocks + E8M0 scales, 32/block)';

  test('MXFP4 tensors: their storage and the bytes of their blocks and scales', () => {
    const ckpt = openCheckpoint(DIR);
    const file = path.join(DIR, 'model.safetensors');
    const raw = rawHeader(file).json as Record<string, { data_offsets: [number, number] }>;
    const size = (n: string) => raw[n].data_offsets[1] - raw[n].data_offsets[0];
    let total = 0;
    for (const t of ckpt.tensors.values()) {
      total += storedBytes(t);
      if (EXPERTS.includes(t.name)) {
        expect(storedAs(t)).toBe(MXFP4);
        expect(storedBytes(t)).toBe(size(`${t.name}_blocks`) + size(`${t.name}_scales`));
      } else expect(storedAs(t)).toBe(t.dtype);
    }
    expect(total).toBe(fs.statSync(file).size - 8 - rawHeader(file).n);
  });

  // The lead enables this after merging the gpt_oss architecture (inspect needs it to classify the tensors).
  test('inspect on the golden', () => {
    const r = inspect({ model: DIR });
    expect(r.dtypes[MXFP4]).toEqual({
      tensors: 4,
      params: 2 * (8 * 64 * 128 + 8 * 64 * 64),
      bytes: 2 * (8 * 128 * 2 * 17 + 8 * 64 * 2 * 17),
    });
    expect(r.params_total).toBe(info.params_total);
    expect(r.bytes_experts).toBe(r.dtypes[MXFP4].bytes + 2 * 2 * (8 * 128 + 8 * 64)); // + the BF16 biases
  });
});

// The lead enables this after merging the gpt_oss architecture (convert loads it to validate the checkpoint).
test('moe convert writes the bf16 checkpoint the MXFP4 one stands for', async () => {
  const out = path.join(tmpDir(), 'bf16');
  await convert({ model: DIR, output: out }, quiet);
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  expect(config.quantization_config).toBeUndefined();
  const a = new TensorReader(openCheckpoint(DIR));
  const b = new TensorReader(openCheckpoint(out));
  for (const name of EXPERTS) {
    expect(b.ref(name).mxfp4).toBeUndefined();
    expect(b.ref(name).shape).toEqual(info.mxfp4.dequantized[name].shape);
    expect(sha256(b.f32(name))).toBe(sha256(a.f32(name)));
  }
  expect(b.has(`${EXPERTS[0]}_blocks`)).toBe(false);
  a.close();
  b.close();
});

describe('the encoder', () => {
  test("writes the bytes of the golden script's encoder on awkward rows (ties, saturation, clamps, zeros)", () => {
    const ref = new TensorReader(openTensorFile(path.join(DIR, 'mxfp4-encode.safetensors')));
    const x = ref.f32('x');
    const [rows, cols] = ref.ref('x').shape;
    const mine = encodeMxfp4(x, rows, cols);
    expect(Buffer.from(mine.scales).equals(Buffer.from(ref.bytes('scales')))).toBe(true);
    expect(Buffer.from(mine.blocks).equals(Buffer.from(ref.bytes('blocks')))).toBe(true);
    ref.close();
  });

  test('the OCP MX rule: exponent floor(log2 amax) − 2, clamped; ties to the even code; saturation at 6', () => {
    expect(mxfp4ScaleByte(6)).toBe(127); // 6 = 1.5·2^2
    expect(mxfp4ScaleByte(4)).toBe(127);
    expect(mxfp4ScaleByte(3.99)).toBe(126);
    expect(mxfp4ScaleByte(0)).toBe(0);
    expect(mxfp4ScaleByte(2 ** -149)).toBe(0); // clamped at −127
    expect([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5].map(e2m1Code)).toEqual([0, 2, 2, 4, 4, 6, 6]);
    expect([0.26, 0.74, 1.3, 5.01, 7.9, 100].map(e2m1Code)).toEqual([1, 1, 3, 7, 7, 7]);
    // A block of 32 with amax 7.5: exponent 0, 7.5 saturates to 6, −0.1 rounds to (positive) zero.
    const x = new Float32Array(32);
    x[0] = 7.5;
    x[1] = -0.1;
    x[2] = -3.2;
    const { blocks, scales } = encodeMxfp4(x, 1, 32);
    expect(scales[0]).toBe(127);
    expect(Array.from(blocks.subarray(0, 2))).toEqual([0x07, 0xd]); // 6 | +0 << 4, −3 (code 13)
    expect(Array.from(decodeMxfp4(blocks, scales, 1, 1).subarray(0, 3))).toEqual([6, 0, -3]);
    expect(() => encodeMxfp4(new Float32Array(48), 1, 48)).toThrow(/not a multiple of 32/);
    expect(() => encodeMxfp4(Float32Array.of(...new Array(31).fill(0), NaN), 1, 32)).toThrow(/cannot be encoded/);
  });

  test('decoding: low nibble first, scale 2^(s − 127), transposed to [in, out]', () => {
    const blocks = new Uint8Array(32);
    blocks[0] = 0x9f; // element 0: code 15 (−6), element 1: code 9 (−0.5)
    blocks[16] = 0x72; // second row: 1, 6
    const scales = Uint8Array.of(128, 125); // ×2, ×1/4
    const d = decodeMxfp4(blocks, scales, 2, 1); // [2, 32]
    expect([d[0], d[1], d[2], d[32], d[33]]).toEqual([-12, -1, 0, 0.25, 1.5]);
    const t = decodeMxfp4Transposed(blocks, scales, 2, 1); // [32, 2]
    expect([t[0], t[1], t[2], t[3]]).toEqual([-12, 0.25, -1, 1.5]);
  });
});

describe('malformed MXFP4 is refused', () => {
  const CONFIG = { model_type: 'gpt_oss', quantization_config: { quant_method: 'mxfp4' } };

  /** A folder with config.json and one shard holding the given tensors (zero bytes). */
  function folder(tensors: Record<string, { dtype: string; shape: number[] }>, config: object = CONFIG): string {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    const header: Record<string, unknown> = {};
    let at = 0;
    for (const [name, t] of Object.entries(tensors)) {
      const n = t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'U8' ? 1 : t.dtype === 'F32' ? 4 : 2);
      header[name] = { ...t, data_offsets: [at, at + n] };
      at += n;
    }
    writeRaw(path.join(dir, 'model.safetensors'), header, new Uint8Array(at));
    return dir;
  }
  const P = 'model.layers.0.mlp.experts.down_proj';
  const blocks = { dtype: 'U8', shape: [2, 4, 1, 16] };
  const scales = { dtype: 'U8', shape: [2, 4, 1] };

  test.each([
    ['blocks without scales', { [`${P}_blocks`]: blocks }, `MXFP4 blocks ${P}_blocks have no scales (${P}_scales)`],
    ['scales without blocks', { [`${P}_scales`]: scales }, `MXFP4 scales ${P}_scales have no blocks (${P}_blocks)`],
    [
      'scales of another dtype',
      { [`${P}_blocks`]: blocks, [`${P}_scales`]: { dtype: 'BF16', shape: [2, 4, 1] } },
      `MXFP4 tensor ${P}_scales is BF16, expected U8`,
    ],
    [
      'blocks not of 16 bytes',
      { [`${P}_blocks`]: { dtype: 'U8', shape: [2, 4, 1, 8] }, [`${P}_scales`]: scales },
      `MXFP4 blocks ${P}_blocks are [2,4,1,8], expected [experts, out, in/32, 16]`,
    ],
    [
      'scales of another shape',
      { [`${P}_blocks`]: blocks, [`${P}_scales`]: { dtype: 'U8', shape: [2, 4, 2] } },
      `MXFP4 scales ${P}_scales are [2,4,2], expected [2,4,1] for blocks [2,4,1,16]`,
    ],
    [
      'a tensor stored both ways',
      { [P]: { dtype: 'BF16', shape: [2, 32, 4] }, [`${P}_blocks`]: blocks, [`${P}_scales`]: scales },
      `${P} is stored both as MXFP4 and unquantized`,
    ],
    [
      'mxfp4 declared but no MXFP4 tensor',
      { 'model.norm.weight': { dtype: 'BF16', shape: [4] } },
      'config.json declares quantization_config.quant_method "mxfp4", but no tensor is MXFP4',
    ],
  ])('%s', (_, tensors, message) => {
    expect(() => openCheckpoint(folder(tensors))).toThrow(
      expect.objectContaining({ exitCode: 3, message: expect.stringContaining(message) }),
    );
  });

  test('blocks and scales without the mxfp4 declaration stay refused as before', () => {
    const dir = folder({ [`${P}_blocks`]: blocks, [`${P}_scales`]: scales }, { model_type: 'gpt_oss' });
    expect(() => openCheckpoint(dir)).toThrow(
      expect.objectContaining({ exitCode: 3, message: expect.stringContaining('is MXFP4 blocks or scales') }),
    );
  });

  test('a well-formed pair opens as one tensor', () => {
    const ckpt = openCheckpoint(folder({ [`${P}_blocks`]: blocks, [`${P}_scales`]: scales }));
    expect([...ckpt.tensors.keys()]).toEqual([P]);
    expect(ckpt.tensors.get(P)!.shape).toEqual([2, 32, 4]);
    const reader = new TensorReader(ckpt);
    expect(reader.sliceF32(P, 1)).toEqual(new Float32Array(128)); // zero bytes: +0 codes, scale 2^−127
    reader.close();
  });
});
