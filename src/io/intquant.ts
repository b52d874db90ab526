/**
 * Integer group-quantized weights published by other tools, read as floating weights: compressed-tensors
 * `pack-quantized` / `int-quantized` (llm-compressor; src/io/ct-read.ts folds them) and GPTQ v1/v2 (GPTQModel,
 * AutoGPTQ; src/io/gptq-read.ts). At open each weight's parts fold into ONE logical tensor (P.weight, the model's
 * dtype, [out, in]) carrying `intq`; TensorReader decodes it whole with `decodeIntQuant`, so every command sees the
 * dequantized weight:
 *   compressed-tensors  w = (v − zp) · scale computed as the library does, in the scale's dtype: the exact product
 *                       rounded once to that dtype (its `dequantize` of PackedQuantizationCompressor.decompress)
 *   GPTQ                w = (code − zero) · scale rounded once to the model's dtype (config torch_dtype / dtype,
 *                       f16 when absent), as GPTQModel's model_dequant decodes to that dtype; the zero point
 *                       stored minus one (v1) or as it is (gptq_v2)
 * Both are rounded to the logical dtype, so eval, calibrate (float32 reads) and convert (bytes of that dtype) see
 * the same values.
 * Writers that rewrite such a model (convert, prune, merge, quantize) write plain tensors and drop the
 * quantization_config (`withoutIntQuantConfig`).
 */
import { CheckpointError } from '../errors';
import { DType, roundedBits, roundToDtype, toFloat32 } from './dtype';
import type { IntQuantParts, TensorRef } from './safetensors';
import { readField } from '../util/bitfield';

export const CT_METHOD = 'compressed-tensors';
export const GPTQ_METHOD = 'gptq';

/** A config without a compressed-tensors or GPTQ quantization_config (an output whose weights are all plain). */
export function withoutIntQuantConfig(config: Record<string, unknown>): Record<string, unknown> {
  const q = config.quantization_config as { quant_method?: unknown } | undefined;
  if (q?.quant_method !== CT_METHOD && q?.quant_method !== GPTQ_METHOD) return config;
  const out = { ...config };
  delete out.quantization_config;
  return out;
}

/** Bytes the weight takes on disk: every part. */
export function intQuantBytes(p: IntQuantParts): number {
  return [p.codes, p.scale, p.zero, p.gIdx, p.shape].reduce((s, t) => s + (t ? t.end - t.begin : 0), 0);
}

/** The bytes as 32-bit words: a view when aligned (reads return fresh, aligned buffers), else a copy. */
const u32 = (b: Uint8Array) =>
  b.byteOffset % 4 === 0 && b.byteLength % 4 === 0
    ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4)
    : new Uint32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

/** A g_idx tensor (I32 or I64) as group numbers, each checked against the number of groups. */
function groupsOf(t: TensorRef, b: Uint8Array, cols: number, groups: number): Int32Array {
  const out = new Int32Array(cols);
  const copy = b.slice();
  const v = t.dtype === 'I64' ? Array.from(new BigInt64Array(copy.buffer), Number) : new Int32Array(copy.buffer);
  for (let i = 0; i < cols; i++) {
    const g = v[i];
    if (!(g >= 0 && g < groups))
      throw new CheckpointError(`${t.name}[${i}] is ${g}, outside the ${groups} groups of the scales`, {
        file: t.file,
        hint: 'the checkpoint is corrupt; re-download it',
      });
    out[i] = g;
  }
  return out;
}

/**
 * Whether a weight's values can be decoded through a table of its 2^bits values per (row, group): 2, 4 or 8 bits,
 * groups in order (no g_idx, or an ordered one) and of whole words.
 */
function byTable(p: IntQuantParts, cols: number, gIdx: Int32Array | undefined): boolean {
  const perWord = 32 / p.bits;
  return (
    (p.bits === 2 || p.bits === 4 || p.bits === 8) &&
    inOrder(gIdx, p.groupSize) &&
    p.groupSize % perWord === 0 &&
    cols % perWord === 0
  );
}

/** No g_idx, or one that puts column i in group ⌊i / groupSize⌋ (writers store it even without act-order). */
function inOrder(gIdx: Int32Array | undefined, groupSize: number): boolean {
  if (!gIdx) return true;
  for (let i = 0; i < gIdx.length; i++) if (gIdx[i] !== Math.floor(i / groupSize)) return false;
  return true;
}

/**
 * Values [from, to) of one output row (from and to whole words) from a table of their group's 2^bits decoded values:
 * the codes are `bits`-bit fields of 32-bit words, low bits first, word k of the row at words[first + k·stride]
 * (compressed-tensors: the row's own words, stride 1; GPTQ: the column of words of that output, stride rows). The
 * table holds each value as the decoder rounds it, so every value is one 32-bit copy. Signed 32-bit views
 * throughout: V8 keeps int32 values unboxed, while a uint32 of 2^31 or more (a negative float's bits, a word with its
 * top bit set) becomes a heap number (measured: 3.4 against ~0.5 ns per value).
 */
function fromTable(
  out32: Int32Array,
  at: number,
  words: Int32Array,
  first: number,
  stride: number,
  from: number,
  to: number,
  bits: number,
  t32: Int32Array,
): void {
  const perWord = 32 / bits;
  const mask = (1 << bits) - 1;
  let o = at + from;
  const end = (to / perWord) | 0; // int32 loop bounds: a division's double would make every index a double
  if (bits === 4) {
    // unrolled: 1.05 against 1.5 ns per value
    for (let k = (from / perWord) | 0; k < end; k++, o += 8) {
      const w = words[first + k * stride];
      out32[o] = t32[w & 15];
      out32[o + 1] = t32[(w >> 4) & 15];
      out32[o + 2] = t32[(w >> 8) & 15];
      out32[o + 3] = t32[(w >> 12) & 15];
      out32[o + 4] = t32[(w >> 16) & 15];
      out32[o + 5] = t32[(w >> 20) & 15];
      out32[o + 6] = t32[(w >> 24) & 15];
      out32[o + 7] = t32[(w >> 28) & 15];
    }
    return;
  }
  for (let k = (from / perWord) | 0; k < end; k++) {
    const w = words[first + k * stride];
    for (let sh = 0; sh < 32; sh += bits) out32[o++] = t32[(w >> sh) & mask];
  }
}

/**
 * One stored row of GPTQ words (word o holds inputs col..col + 32/bits − 1 of output o, low bits first) into
 * out[o·cols + col ..], each value looked up in output o's table (tables[o·2^bits + code]).
 */
function wordRow(
  out32: Int32Array,
  cols: number,
  words: Int32Array,
  first: number,
  rows: number,
  col: number,
  bits: number,
  tables: Int32Array,
): void {
  const mask = (1 << bits) - 1;
  for (let o = 0; o < rows; o++) {
    const w = words[first + o];
    const t = o << bits;
    let at = o * cols + col;
    if (bits === 4) {
      out32[at] = tables[t + (w & 15)];
      out32[at + 1] = tables[t + ((w >> 4) & 15)];
      out32[at + 2] = tables[t + ((w >> 8) & 15)];
      out32[at + 3] = tables[t + ((w >> 12) & 15)];
      out32[at + 4] = tables[t + ((w >> 16) & 15)];
      out32[at + 5] = tables[t + ((w >> 20) & 15)];
      out32[at + 6] = tables[t + ((w >> 24) & 15)];
      out32[at + 7] = tables[t + ((w >> 28) & 15)];
    } else {
      for (let sh = 0; sh < 32; sh += bits) out32[at++] = tables[t + ((w >> sh) & mask)];
    }
  }
}

/** A compressed-tensors weight [rows, cols] (see the header). */
function decodeCt(
  p: IntQuantParts,
  rows: number,
  cols: number,
  read: (t: TensorRef) => Uint8Array,
  into?: Float32Array,
): Float32Array {
  const { bits } = p;
  const scales = toFloat32(read(p.scale), p.scale.dtype);
  const ng = scales.length / rows;
  const off = 1 << (bits - 1);
  const gIdx = p.gIdx ? groupsOf(p.gIdx, read(p.gIdx), cols, ng) : undefined;
  const zp = p.zero ? u32(read(p.zero)) : undefined;
  const out = into ?? new Float32Array(rows * cols);
  const raw = read(p.codes);
  const i8 = p.codes.dtype === 'I8' ? new Int8Array(raw.buffer, raw.byteOffset, raw.byteLength) : undefined;
  const packed = i8 ? undefined : u32(raw);
  const wpr = packed ? packed.length / rows : 0;
  if (packed && byTable(p, cols, gIdx)) {
    // per (row, group): the 2^bits values (v − z)·scale, rounded as below; then one lookup per value
    const t32 = new Int32Array(1 << bits);
    const out32 = new Int32Array(out.buffer, out.byteOffset, out.length);
    const words = new Int32Array(packed.buffer, packed.byteOffset, packed.length);
    const mask = (1 << bits) - 1;
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < ng; g++) {
        const z = zp ? readField(zp, ng, g, r, bits) - off : 0;
        const s = scales[r * ng + g];
        for (let q = 0; q <= mask; q++) t32[q] = roundedBits(Math.fround((q - off - z) * s), p.scale.dtype);
        const to = Math.min(cols, (g + 1) * p.groupSize);
        fromTable(out32, r * cols, words, r * wpr, 1, g * p.groupSize, to, bits, t32);
      }
    }
    return out;
  }
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < cols; i++) {
      const g = gIdx ? gIdx[i] : Math.floor(i / p.groupSize);
      const v = i8 ? i8[r * cols + i] : readField(packed!, 1, r * wpr, i, bits) - off;
      const z = zp ? readField(zp, ng, g, r, bits) - off : 0;
      out[r * cols + i] = Math.fround((v - z) * scales[r * ng + g]);
    }
  }
  return roundToDtype(out, p.scale.dtype);
}

/** A GPTQ weight [rows = out, cols = in] (see the header and src/io/gptq.ts for the layout). */
function decodeGptq(
  p: IntQuantParts,
  rows: number,
  cols: number,
  dtype: DType,
  read: (t: TensorRef) => Uint8Array,
  into?: Float32Array,
): Float32Array {
  const { bits } = p;
  const maxq = (1 << bits) - 1;
  const scales = toFloat32(read(p.scale), p.scale.dtype);
  const groups = scales.length / rows;
  const qzeros = u32(read(p.zero!));
  const zw = qzeros.length / groups;
  const zeros = new Int32Array(groups * rows);
  const add = p.zeroMinusOne ? 1 : 0;
  for (let g = 0; g < groups; g++)
    for (let o = 0; o < rows; o++) zeros[g * rows + o] = (readField(qzeros, 1, g * zw, o, bits) + add) & maxq;
  const gIdx = p.gIdx ? groupsOf(p.gIdx, read(p.gIdx), cols, groups) : undefined;
  const qweight = u32(read(p.codes));
  const out = into ?? new Float32Array(rows * cols);
  if (byTable(p, cols, gIdx)) {
    // per group, every output's table of the 2^bits values (code − zero)·scale rounded to dtype; then the words
    // row by row as they are stored ([in·bits/32, out]: one word holds 32/bits inputs of one output), one lookup per
    // value (walking each output's column of words instead was 2× slower)
    const levels = maxq + 1;
    const tables = new Int32Array(rows * levels);
    const out32 = new Int32Array(out.buffer, out.byteOffset, out.length);
    const words = new Int32Array(qweight.buffer, qweight.byteOffset, qweight.length);
    const perWord = 32 / bits;
    for (let g = 0; g < groups; g++) {
      for (let o = 0; o < rows; o++) {
        const z = zeros[g * rows + o];
        const sc = scales[g * rows + o];
        for (let q = 0; q <= maxq; q++) tables[o * levels + q] = roundedBits(Math.fround((q - z) * sc), dtype);
      }
      const end = (Math.min(cols, (g + 1) * p.groupSize) / perWord) | 0;
      for (let k = ((g * p.groupSize) / perWord) | 0; k < end; k++)
        wordRow(out32, cols, words, k * rows, rows, k * perWord, bits, tables);
    }
    return out;
  }
  for (let i = 0; i < cols; i++) {
    const g = gIdx ? gIdx[i] : Math.floor(i / p.groupSize);
    for (let o = 0; o < rows; o++) {
      const code = readField(qweight, rows, o, i, bits);
      out[o * cols + i] = Math.fround((code - zeros[g * rows + o]) * scales[g * rows + o]);
    }
  }
  return roundToDtype(out, dtype);
}

/**
 * The weight [rows, cols] a compressed-tensors or GPTQ module stands for, as float32 values of `dtype` (the logical
 * tensor's); `read` gives a part's bytes. Into `into` when given (rows·cols values).
 */
export function decodeIntQuant(
  p: IntQuantParts,
  rows: number,
  cols: number,
  dtype: DType,
  read: (t: TensorRef) => Uint8Array,
  into?: Float32Array,
): Float32Array {
  if (into && into.length !== rows * cols)
    throw new RangeError(`${rows * cols} values into an array of ${into.length}`);
  return p.format === 'gptq' ? decodeGptq(p, rows, cols, dtype, read, into) : decodeCt(p, rows, cols, read, into);
}

/** Python's `re.match(pattern, name)`: the pattern anchored at the start (named groups as JS spells them). */
export function pyMatch(pattern: string, name: string, file: string, key: string): boolean {
  let re: RegExp;
  try {
    re = new RegExp(`^(?:${pattern.replace(/\(\?P</g, '(?<').replace(/\(\?P=(\w+)\)/g, '\\k<$1>')})`);
  } catch (e) {
    throw new CheckpointError(`config.json ${key} ${JSON.stringify(pattern)} is not a regex moe reads`, {
      file,
      hint: `${(e as Error).message}; rewrite the pattern`,
    });
  }
  return re.test(name);
}

/** What inspect says of a compressed-tensors or GPTQ checkpoint: its format and the weights of each scheme. */
export interface IntQuantSummary {
  format: string;
  /** Per scheme ("gptq 4-bit group 128"): weights and parameters. */
  schemes: Record<string, { tensors: number; params: number }>;
  /** The dtype the weights are read as (dequantized on read). */
  read_as: string;
}

export function intQuantSummary(tensors: Map<string, TensorRef>): IntQuantSummary | undefined {
  let out: IntQuantSummary | undefined;
  for (const t of tensors.values()) {
    if (!t.intq) continue;
    out ??= { format: t.intq.format, schemes: {}, read_as: t.dtype };
    const s = (out.schemes[t.intq.scheme] ??= { tensors: 0, params: 0 });
    s.tensors++;
    s.params += t.shape[0] * t.shape[1];
  }
  return out;
}

/**
 * The tensor list with each folded module in place of its stored parts: `folded` maps the stored tensor a module is
 * listed under to its logical weight; parts in `used` are dropped.
 */
export function withFolded(
  tensors: Map<string, TensorRef>,
  folded: Map<string, TensorRef>,
  used: Set<string>,
): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  for (const [name, t] of tensors) {
    const f = folded.get(name);
    if (f) out.set(f.name, f);
    else if (!used.has(name)) out.set(name, t);
  }
  return out;
}
