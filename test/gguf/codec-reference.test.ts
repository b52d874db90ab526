/**
 * moe's GGUF codecs against implementations that are not moe's (issue 17):
 *  - F16, BF16, Q8_0, Q4_0: the bytes gguf-py's quantizers wrote (scripts/gguf_codec_reference.py; ggml's own C
 *    encoders write the same bytes, scripts/ggml_ref/ggml_reference.py checked it) for awkward rows: zeros,
 *    constants, f16 subnormals and overflow, rounding ties, one-signed rows, heavy tails, outliers.
 *  - Q2_K … Q6_K: llama.cpp's own C code (quantize_row_<t>_ref, and quantize_<t> with importance weights as with an
 *    imatrix; scripts/ggml_ref/), on the same rows: moe decodes llama.cpp's bytes to llama.cpp's values bit for bit,
 *    moe's encoder writes llama.cpp's bytes, and its squared error is within 1% of llama.cpp's (the bar) on
 *    every row.
 * The references are committed (fixtures/reference/gguf-codecs); this test needs neither Python nor a C compiler.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dequantizeRows, GgmlType, quantizeRows, rowBytes } from '../../src/gguf/quants';
import { ROOT } from '../helpers';

const DIR = path.join(ROOT, 'fixtures', 'reference', 'gguf-codecs');
const info = JSON.parse(fs.readFileSync(path.join(DIR, 'gguf-py.json'), 'utf8'));
const kq = JSON.parse(fs.readFileSync(path.join(DIR, 'kquants.json'), 'utf8'));
const rows: number = info.rows;
const cols: number = info.cols;
const labels: string[] = info.labels;
/** moe's error may exceed llama.cpp's by this fraction at most (the bar). */
const BAR = 0.01;

const bytesOf = (file: string) => new Uint8Array(fs.readFileSync(path.join(DIR, file)));
const floatsOf = (file: string) => {
  const b = bytesOf(file);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
const sha256 = (b: Uint8Array | Float32Array) =>
  createHash('sha256')
    .update(new Uint8Array(b.buffer, b.byteOffset, b.byteLength))
    .digest('hex');
const x = floatsOf(info.files.inputs);
const importance = floatsOf(info.files.importance);

/** Labels of the rows whose bytes differ. */
function unequalRows(mine: Uint8Array, ref: Uint8Array, t: GgmlType): string[] {
  const rb = rowBytes(t, cols);
  expect(mine.length).toBe(ref.length);
  const bad: string[] = [];
  for (let r = 0; r < rows; r++) {
    for (let i = r * rb; i < (r + 1) * rb; i++) {
      if (mine[i] !== ref[i]) {
        bad.push(labels[r]);
        break;
      }
    }
  }
  return bad;
}

/** Per row: mean of (x − x̂)², weighted per column by the importance when given. */
function rowErrors(decoded: Float32Array, w?: Float32Array): number[] {
  const e: number[] = [];
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += (w ? w[c] : 1) * (x[r * cols + c] - decoded[r * cols + c]) ** 2;
    e.push(s / cols);
  }
  return e;
}

test('the committed inputs are the ones the references were made from', () => {
  expect(x.length).toBe(rows * cols);
  expect(sha256(x)).toBe(info.sha256.inputs);
  expect(sha256(importance)).toBe(info.sha256.importance);
  expect(kq.inputs_sha256).toBe(info.sha256.inputs);
  expect(kq.importance_sha256).toBe(info.sha256.importance);
});

describe.each(['F16', 'BF16', 'Q8_0', 'Q4_0'] as GgmlType[])('%s: the bytes gguf-py writes', (t) => {
  test('every row byte for byte', () => {
    const ref = bytesOf(info.files[t]);
    expect(sha256(ref)).toBe(info.sha256[t]);
    expect(unequalRows(quantizeRows(x, rows, cols, t), ref, t)).toEqual([]);
    // ggml's C encoder wrote the same bytes (recorded when the K-quant references were made)
    expect(kq.ggml_rows_equal_to_gguf_py[t]).toBe(rows);
  });
});

const K_TYPES: GgmlType[] = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'];
const CASES = K_TYPES.flatMap((t) => ['plain', 'imatrix'].map((mode) => [t, mode] as const));
describe.each(CASES)('%s %s: llama.cpp', (t, mode) => {
  const ref = kq.types[t][mode];
  const w = mode === 'imatrix' ? importance : undefined;

  test("moe decodes llama.cpp's bytes to llama.cpp's values bit for bit", () => {
    const bytes = bytesOf(ref.bytes);
    expect(sha256(bytes)).toBe(ref.bytes_sha256);
    expect(bytes.length).toBe(rows * rowBytes(t, cols));
    const decoded = dequantizeRows(bytes, rows, cols, t);
    expect(sha256(decoded)).toBe(ref.decoded_sha256);
    // llama.cpp's error as recorded is the one of these values: the error below is measured the same way (numpy sums
    // in another order: equal to 1e-12 relative)
    const want: number[] = ref.mse_per_row;
    const off = rowErrors(decoded, w).flatMap((e, r) => (Math.abs(e - want[r]) > 1e-12 * want[r] ? [labels[r]] : []));
    expect(off).toEqual([]);
  });

  test(`moe's bytes are llama.cpp's, and its error within ${BAR * 100}% of llama.cpp's, on every row`, () => {
    const bytes = quantizeRows(x, rows, cols, t, w);
    // moe's K-quant encoders are llama.cpp's in float32 (src/gguf/codecs/kquants.ts): the same bytes
    expect(unequalRows(bytes, bytesOf(ref.bytes), t)).toEqual([]);
    const mine = rowErrors(dequantizeRows(bytes, rows, cols, t), w);
    const want: number[] = ref.mse_per_row;
    const worse = mine.flatMap((e, r) => (e > (1 + BAR) * want[r] ? [`${labels[r]}: ${e} vs ${want[r]}`] : []));
    expect(worse).toEqual([]);
  });
});
