/**
 * ggml's MXFP4 (issue 18): moe's codec against gguf-py (scripts/gguf_codec_reference.py; ggml's own C
 * quantize_row_mxfp4_ref and dequantize_row_mxfp4 wrote the same bytes and values when the reference was made), and
 * gpt-oss's MXFP4 experts repacked into ggml's layout without re-quantizing: the bytes the reference script's own
 * repacking wrote (checked there against gguf-py's decoder), decoding to transformers' values bit for bit.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repackMxfp4 } from '../../src/gguf/codecs/mxfp4';
import { dequantizeRows, GGML_TYPE_ID, GGUF_TYPES, parseGgmlType, quantizeRows, rowBytes } from '../../src/gguf/quants';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { decodeMxfp4 } from '../../src/io/mxfp4';
import { GOLDEN, ROOT } from '../helpers';

const DIR = path.join(ROOT, 'fixtures', 'reference', 'gguf-codecs');
const info = JSON.parse(fs.readFileSync(path.join(DIR, 'gguf-py.json'), 'utf8'));
const bytesOf = (file: string) => new Uint8Array(fs.readFileSync(path.join(DIR, file)));
const sha256 = (b: Uint8Array | Float32Array) =>
  createHash('sha256')
    .update(new Uint8Array(b.buffer, b.byteOffset, b.byteLength))
    .digest('hex');
const { rows, cols } = info;
const inputs = bytesOf(info.files.inputs);
const x = new Float32Array(inputs.buffer, inputs.byteOffset, rows * cols);

describe('MXFP4 against gguf-py', () => {
  const ref = bytesOf(info.files.MXFP4);

  test('the encoder writes gguf-py’s bytes on every row', () => {
    expect(sha256(ref)).toBe(info.sha256.MXFP4);
    const mine = quantizeRows(x, rows, cols, 'MXFP4');
    const rb = rowBytes('MXFP4', cols);
    expect(rb).toBe((cols / 32) * 17);
    const bad = [...Array(rows).keys()].filter(
      (r) => !Buffer.from(mine.subarray(r * rb, (r + 1) * rb)).equals(Buffer.from(ref.subarray(r * rb, (r + 1) * rb))),
    );
    expect(bad.map((r) => info.labels[r])).toEqual([]);
  });

  test('the decoder gives gguf-py’s values for its bytes', () => {
    expect(sha256(dequantizeRows(ref, rows, cols, 'MXFP4'))).toBe(info.mxfp4.MXFP4_decoded);
  });

  test('MXFP4 is read and written as stored, not offered as a --type', () => {
    expect(GGML_TYPE_ID.MXFP4).toBe(39);
    expect(GGUF_TYPES).not.toContain('MXFP4');
    expect(parseGgmlType('mxfp4')).toBeUndefined();
  });
});

describe("gpt-oss's MXFP4 experts in ggml's layout", () => {
  const ckpt = openCheckpoint(path.join(GOLDEN, 'gpt_oss-mxfp4'));
  const names = Object.keys(info.mxfp4.repacked);

  test.each(names)('%s: repacked bit-exactly, decoding to the same values', (name) => {
    const t = ckpt.tensors.get(name)!;
    const { blocks, scales } = t.mxfp4!;
    const [E, out, groups] = blocks.shape;
    const reader = new TensorReader(ckpt);
    const b = new Uint8Array(blocks.end - blocks.begin);
    const s = new Uint8Array(scales.end - scales.begin);
    for (let e = 0; e < E; e++) {
      b.set(reader.rawSlice(blocks, e), (e * b.length) / E);
      s.set(reader.rawSlice(scales, e), (e * s.length) / E);
    }
    reader.close();
    const ggml = repackMxfp4(b, s, E * out, groups);
    expect(sha256(ggml)).toBe(info.mxfp4.repacked[name]);
    // ggml's decoding of the repacked rows is the io decoding of the stored ones ([E·out, in]), ±0 included.
    const a = dequantizeRows(ggml, E * out, groups * 32, 'MXFP4');
    expect(sha256(a)).toBe(sha256(decodeMxfp4(b, s, E * out, groups)));
    // gate_up_proj's rows interleave gate and up: llama.cpp's ffn_gate_exps takes the even rows, ffn_up_exps the odd.
    const rb = groups * 17;
    const odd = repackMxfp4(b, s, (E * out) / 2, groups, (r) => 2 * r + 1);
    for (const r of [0, 1, (E * out) / 2 - 1])
      expect(
        Buffer.from(odd.subarray(r * rb, (r + 1) * rb)).equals(
          Buffer.from(ggml.subarray((2 * r + 1) * rb, (2 * r + 2) * rb)),
        ),
      ).toBe(true);
  });
});
