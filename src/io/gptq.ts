/**
 * The GPTQ v1 checkpoint layout (checkpoint_format "gptq"), as AutoGPTQ defined it and GPTQModel, vLLM and
 * transformers read it. A linear weight `P.weight` [out, in] at b bits with groups of G input columns is stored as
 *   P.qweight I32 [in·b/32, out]      the codes packed along the input dimension: within every run of 32 inputs
 *                                     the codes form one little-endian bit stream over b words, code i at bit
 *                                     i·b (for 2, 4, 8 bits word i·b/32 at shift (i·b) mod 32; for 3 bits some
 *                                     codes straddle two words, GPTQModel's `_pack_cols_3bit`)
 *   P.qzeros  I32 [⌈in/G⌉, out·b/32]  the zero points packed the same way along the output dimension, each stored
 *                                     as (zero − 1) mod 2^b (v1's offset; readers add 1 back per field)
 *   P.scales  F16 [⌈in/G⌉, out]
 *   P.g_idx   I32 [in]                the group of each input column (i / G: moe's groups are in column order)
 * and w[o, i] = (code[i, o] − zero[g, o]) · scale[g, o] with g = g_idx[i].
 * The encoder is src/quant/gptq-format.ts; this file holds the names and shapes both sides share and the decoder.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { DType, toFloat32 } from './dtype';
import { readExact, readHeader, TensorRef } from './safetensors';
import type { PlannedTensor } from './writer';
import { readField } from '../util/bitfield';

export const GPTQ_QUANT_METHOD = 'gptq';
export const GPTQ_CHECKPOINT_FORMAT = 'gptq';
/** The bit widths with a GPTQ v1 packing (5, 6, 7 exist only in GPTQModel's planar "gptq_p" layout). */
export const GPTQ_BITS = [2, 3, 4, 8];

export function gptqPartNames(weight: string): { qweight: string; qzeros: string; scales: string; gIdx: string } {
  const base = weight.replace(/\.weight$/, '');
  return { qweight: `${base}.qweight`, qzeros: `${base}.qzeros`, scales: `${base}.scales`, gIdx: `${base}.g_idx` };
}

/** Values per packing unit along a packed dimension: 32 for 3 bits (3 words), else 32/b (one word). */
export function gptqUnit(bits: number): number {
  return bits === 3 ? 32 : 32 / bits;
}

/** Whether a weight [rows = out, cols = in] packs whole (both dimensions a multiple of the packing unit). */
export function gptqFits(rows: number, cols: number, bits: number): boolean {
  const u = gptqUnit(bits);
  return GPTQ_BITS.includes(bits) && rows % u === 0 && cols % u === 0;
}

/** The four stored tensors of a weight [rows, cols], in write order. */
export function gptqPlan(weight: string, rows: number, cols: number, bits: number, groupSize: number): PlannedTensor[] {
  const n = gptqPartNames(weight);
  const groups = Math.ceil(cols / groupSize);
  const i32: DType = 'I32';
  return [
    { name: n.qweight, dtype: i32, shape: [(cols * bits) / 32, rows] },
    { name: n.qzeros, dtype: i32, shape: [groups, (rows * bits) / 32] },
    { name: n.scales, dtype: 'F16', shape: [groups, rows] },
    { name: n.gIdx, dtype: i32, shape: [cols] },
  ];
}

/** Bytes of the four tensors. */
export function gptqBytes(rows: number, cols: number, bits: number, groupSize: number): number {
  const groups = Math.ceil(cols / groupSize);
  return (cols * bits * rows) / 8 + (groups * rows * bits) / 8 + 2 * groups * rows + 4 * cols;
}

export interface GptqTensors {
  qweight: Uint32Array; // [cols·b/32, rows]
  qzeros: Uint32Array; // [groups, rows·b/32]
  scales: Float32Array; // [groups, rows]
  gIdx: Int32Array; // [cols]
}

/** The weight [rows = out, cols = in] a GPTQ v1 module stands for, in float32 (see the header). */
export function dequantizeGptq(t: GptqTensors, rows: number, cols: number, bits: number): Float32Array {
  const maxq = (1 << bits) - 1;
  const groups = t.scales.length / rows;
  const zeros = new Int32Array(groups * rows);
  for (let g = 0; g < groups; g++) {
    const row = new Uint32Array(t.qzeros.buffer, t.qzeros.byteOffset + g * ((rows * bits) / 8), (rows * bits) / 32);
    for (let o = 0; o < rows; o++) zeros[g * rows + o] = (readField(row, 1, 0, o, bits) + 1) & maxq;
  }
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < cols; i++) {
    const g = t.gIdx[i];
    for (let o = 0; o < rows; o++) {
      const code = readField(t.qweight, rows, o, i, bits);
      out[o * cols + i] = Math.fround((code - zeros[g * rows + o]) * t.scales[g * rows + o]);
    }
  }
  return out;
}

/** A GPTQ module as stored: its four tensors' refs, its shape [rows = out, cols = in] and bits. */
export interface GptqModule {
  weight: string;
  rows: number;
  cols: number;
  bits: number;
  parts: { qweight: TensorRef; qzeros: TensorRef; scales: TensorRef; gIdx: TensorRef };
}

/**
 * The GPTQ modules of the shards in `dir` (headers only), each checked whole: the four tensors present with the
 * dtypes and shapes of the layout (the bits follow from qweight's rows over g_idx's length).
 */
export function gptqModules(dir: string): GptqModule[] {
  const refs = new Map<string, TensorRef>();
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.safetensors')))
    for (const t of readHeader(path.join(dir, f)).tensors) refs.set(t.name, t);
  const out: GptqModule[] = [];
  for (const [name, qweight] of refs) {
    if (!name.endsWith('.qweight')) continue;
    const weight = name.replace(/\.qweight$/, '.weight');
    const n = gptqPartNames(weight);
    const bad = (why: string) =>
      new CheckpointError(`GPTQ module ${weight} ${why}`, { file: qweight.file, hint: 're-run moe quantize' });
    const [qzeros, scales, gIdx] = [n.qzeros, n.scales, n.gIdx].map((p) => refs.get(p));
    if (!qzeros || !scales || !gIdx) throw bad('lacks one of qzeros, scales, g_idx');
    const cols = gIdx.shape[0];
    const rows = qweight.shape[1];
    const bits = (qweight.shape[0] * 32) / cols;
    const groups = scales.shape[0];
    const want = gptqPlan(weight, rows, cols, bits, Math.ceil(cols / groups));
    const got = [qweight, qzeros, scales, gIdx];
    if (
      !GPTQ_BITS.includes(bits) ||
      want.some((w, i) => w.dtype !== got[i].dtype || `${w.shape}` !== `${got[i].shape}`)
    )
      throw bad(`has ${got.map((t) => `${t.dtype} [${t.shape}]`).join(', ')}, not a ${bits}-bit GPTQ v1 layout`);
    out.push({ weight, rows, cols, bits, parts: { qweight, qzeros, scales, gIdx } });
  }
  return out;
}

/** The bytes of one stored tensor. */
function bytesOf(t: TensorRef): Uint8Array {
  const fd = fs.openSync(t.file, 'r');
  try {
    return readExact(fd, t.file, t.begin, t.end - t.begin);
  } finally {
    fs.closeSync(fd);
  }
}

/** A stored GPTQ module's weight [rows, cols] in float32. */
export function readGptqWeight(m: GptqModule): Float32Array {
  const u32 = (t: TensorRef) => {
    const b = bytesOf(t);
    return new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
  };
  const gi = bytesOf(m.parts.gIdx);
  return dequantizeGptq(
    {
      qweight: u32(m.parts.qweight),
      qzeros: u32(m.parts.qzeros),
      scales: toFloat32(bytesOf(m.parts.scales), 'F16'),
      gIdx: new Int32Array(gi.buffer, gi.byteOffset, gi.length / 4),
    },
    m.rows,
    m.cols,
    m.bits,
  );
}

/** withOutput's check of a GPTQ checkpoint just written: every module whole, config.json readable. */
export function verifyGptq(dir: string): void {
  gptqModules(dir);
  JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
}
