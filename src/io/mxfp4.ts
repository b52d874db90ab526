/**
 * MXFP4 as gpt-oss publishes it (OCP Microscaling Formats v1.0: E2M1 elements, one E8M0 scale per 32), read as the
 * bf16 tensors transformers makes of it (transformers/integrations/mxfp4.py, convert_moe_packed_tensors).
 *
 * A fused expert weight `P` of the bf16 checkpoint, [E, in, out] (gpt_oss: mlp.experts.gate_up_proj [E, H, 2I],
 * mlp.experts.down_proj [E, I, H]), is stored as two tensors, transposed:
 *   P_blocks  U8 [E, out, in/32, 16]  32 E2M1 codes per block, two per byte: byte j holds element 2j in its LOW
 *                                     nibble and element 2j+1 in its high nibble
 *   P_scales  U8 [E, out, in/32]      one E8M0 scale per block: 2^(s − 127)
 * and P[e, i, o] = E2M1[code(e, o, i)] · 2^(s(e, o, floor(i/32)) − 127), E2M1 = {0, .5, 1, 1.5, 2, 3, 4, 6} with the
 * code's bit 3 as the sign. config.json declares quantization_config {quant_method: "mxfp4", modules_to_not_convert}.
 * Every decoded value has at most two significant bits, so it is exact in bf16 and float32 alike.
 *
 * The encoder (merge's re-encoding) follows the OCP MX rule: the shared exponent of a block is
 * floor(log2(amax)) − 2 (2 is E2M1's largest exponent), clamped to E8M0's range [−127, 127] (an all-zero block gets
 * −127); each value x is x / 2^exponent rounded to the nearest E2M1 value, ties to the even code, magnitudes above
 * 6 saturate to 6 (with that exponent amax / 2^exponent lies in [4, 8)), and a zero magnitude is stored as code 0.
 */
import { CheckpointError } from '../errors';
import type { TensorRef } from './safetensors';
import { withoutQuantMethod } from './quant-config';

export const MXFP4_METHOD = 'mxfp4';
/** Values per block (one scale each) and bytes of codes per block. */
export const MXFP4_BLOCK = 32;
export const MXFP4_BLOCK_BYTES = 16;
/** What `moe inspect` says a folded tensor is stored as. */
export const MXFP4_STORAGE = 'MXFP4 (U8 blocks + E8M0 scales, 32/block)';

/** The E2M1 values by code (bit 3 is the sign). */
export const E2M1 = Float32Array.of(0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6);

/** E8M0 → float: 2^(s − 127). 255 is NaN in OCP MX; transformers' ldexp gives 2^128, and so does this. */
export const e8m0 = (s: number): number => 2 ** (s - 127);

let table: Float32Array | undefined;
/** value[s·16 + code]: every (scale, code) pair decoded once. */
function valueTable(): Float32Array {
  if (!table) {
    table = new Float32Array(256 * 16);
    for (let s = 0; s < 256; s++) for (let c = 0; c < 16; c++) table[s * 16 + c] = E2M1[c] * e8m0(s);
  }
  return table;
}

/**
 * Decodes `rows` rows of `groups` blocks each: blocks [rows, groups, 16], scales [rows, groups] → float32
 * [rows, groups·32] (the stored orientation, [out, in]).
 */
export function decodeMxfp4(blocks: Uint8Array, scales: Uint8Array, rows: number, groups: number): Float32Array {
  const n = rows * groups;
  if (blocks.length < n * MXFP4_BLOCK_BYTES || scales.length < n)
    throw new RangeError(`decodeMxfp4: ${blocks.length} block bytes, ${scales.length} scales for ${n} blocks`);
  const t = valueTable();
  const out = new Float32Array(n * MXFP4_BLOCK);
  for (let b = 0; b < n; b++) {
    const base = scales[b] * 16;
    const at = b * MXFP4_BLOCK_BYTES;
    const y = b * MXFP4_BLOCK;
    for (let j = 0; j < MXFP4_BLOCK_BYTES; j++) {
      const byte = blocks[at + j];
      out[y + 2 * j] = t[base + (byte & 15)];
      out[y + 2 * j + 1] = t[base + (byte >> 4)];
    }
  }
  return out;
}

/** One expert's blocks [out, in/32, 16] and scales [out, in/32] decoded in transformers' orientation, [in, out]. */
export function decodeMxfp4Transposed(
  blocks: Uint8Array,
  scales: Uint8Array,
  outDim: number,
  groups: number,
): Float32Array {
  const stored = decodeMxfp4(blocks, scales, outDim, groups); // [out, in]
  const inDim = groups * MXFP4_BLOCK;
  const out = new Float32Array(stored.length); // [in, out]
  for (let o = 0; o < outDim; o++) {
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) out[i * outDim + o] = stored[row + i];
  }
  return out;
}

/** Midpoints between consecutive E2M1 magnitudes; at a tie the even code (of the two around it) wins. */
const MIDPOINTS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5];

/** |q| rounded to the nearest E2M1 magnitude code (0..7), ties to the even code, saturating at 6. */
export function e2m1Code(a: number): number {
  let c = 0;
  while (c < 7 && a > MIDPOINTS[c]) c++;
  if (c < 7 && a === MIDPOINTS[c] && c % 2 === 1) c++;
  return c;
}

/** The shared exponent of a block by the OCP MX rule (see the header), as an E8M0 byte. */
export function mxfp4ScaleByte(amax: number): number {
  if (amax === 0) return 0;
  const e = Math.floor(Math.log2(amax)) - 2;
  return Math.min(127, Math.max(-127, e)) + 127;
}

/**
 * Encodes x [rows, cols] (the stored orientation, [out, in]; cols a multiple of 32) by the OCP MX rule into
 * blocks [rows, cols/32, 16] and scales [rows, cols/32].
 */
export function encodeMxfp4(x: Float32Array, rows: number, cols: number): { blocks: Uint8Array; scales: Uint8Array } {
  if (cols % MXFP4_BLOCK !== 0) throw new RangeError(`encodeMxfp4: rows of ${cols} are not a multiple of 32`);
  const n = (rows * cols) / MXFP4_BLOCK;
  const blocks = new Uint8Array(n * MXFP4_BLOCK_BYTES);
  const scales = new Uint8Array(n);
  for (let b = 0; b < n; b++) {
    const y = b * MXFP4_BLOCK;
    let amax = 0;
    for (let i = 0; i < MXFP4_BLOCK; i++) {
      const v = x[y + i];
      if (!Number.isFinite(v)) throw new RangeError(`encodeMxfp4: value ${v} at ${y + i} cannot be encoded`);
      amax = Math.max(amax, Math.abs(v));
    }
    const s = mxfp4ScaleByte(amax);
    scales[b] = s;
    const inv = 2 ** (127 - s); // exact: a power of two
    for (let j = 0; j < MXFP4_BLOCK_BYTES; j++) {
      blocks[b * MXFP4_BLOCK_BYTES + j] = code(x[y + 2 * j] * inv) | (code(x[y + 2 * j + 1] * inv) << 4);
    }
  }
  return { blocks, scales };
}

function code(q: number): number {
  const c = e2m1Code(Math.abs(q));
  return c !== 0 && q < 0 ? c | 8 : c;
}

/** One expert's weight in transformers' orientation [in, out] encoded into its stored blocks and scales. */
export function encodeMxfp4Transposed(
  w: Float32Array,
  inDim: number,
  outDim: number,
): { blocks: Uint8Array; scales: Uint8Array } {
  const t = new Float32Array(w.length); // [out, in]
  for (let i = 0; i < inDim; i++) for (let o = 0; o < outDim; o++) t[o * inDim + i] = w[i * outDim + o];
  return encodeMxfp4(t, outDim, inDim);
}

/** The names of P's parts. */
export const mxfp4PartNames = (p: string) => ({ blocks: `${p}_blocks`, scales: `${p}_scales` });

/** Whether config.json declares MXFP4 (gpt-oss's quantization_config). */
export function isMxfp4Config(config: Record<string, unknown>): boolean {
  const q = config.quantization_config as { quant_method?: unknown } | undefined;
  return q?.quant_method === MXFP4_METHOD;
}

/** A config without its MXFP4 quantization_config, for a checkpoint written with every MXFP4 tensor decoded. */
export function withoutMxfp4Config(config: Record<string, unknown>): Record<string, unknown> {
  return withoutQuantMethod(config, MXFP4_METHOD);
}

const BLOCKS = /_blocks$/;
const SCALES = /_scales$/;

function refuse(why: string, t: { file: string }, hint: string): never {
  throw new CheckpointError(why, { file: t.file, hint });
}

const CORRUPT = 'the checkpoint is incomplete or corrupt; re-download it';

/** Checks one pair against the published layout and returns P's logical ref. */
function foldPair(name: string, blocks: TensorRef, scales: TensorRef): TensorRef {
  const b = blocks.shape;
  const s = scales.shape;
  if (blocks.dtype !== 'U8' || scales.dtype !== 'U8')
    refuse(
      `MXFP4 tensor ${blocks.dtype !== 'U8' ? blocks.name : scales.name} is ${blocks.dtype !== 'U8' ? blocks.dtype : scales.dtype}, expected U8`,
      blocks.dtype !== 'U8' ? blocks : scales,
      'MXFP4 blocks hold two E2M1 codes per byte and scales one E8M0 byte per block; the file is not MXFP4 as gpt-oss publishes it',
    );
  if (b.length !== 4 || b[3] !== MXFP4_BLOCK_BYTES)
    refuse(
      `MXFP4 blocks ${blocks.name} are [${b}], expected [experts, out, in/32, 16]`,
      blocks,
      'moe decodes the fused expert weights gpt-oss stores as MXFP4; other layouts are not read',
    );
  if (s.length !== 3 || s.some((d, i) => d !== b[i]))
    refuse(`MXFP4 scales ${scales.name} are [${s}], expected [${b.slice(0, 3)}] for blocks [${b}]`, scales, CORRUPT);
  return {
    name,
    dtype: 'BF16',
    shape: [b[0], b[2] * MXFP4_BLOCK, b[1]],
    file: blocks.file,
    begin: blocks.begin,
    end: blocks.end,
    mxfp4: { blocks, scales },
  };
}

/**
 * When config.json declares MXFP4, replaces each pair P_blocks + P_scales by the logical tensor P (BF16, shape and
 * orientation of the bf16 checkpoint: [E, in, out]) in the place of its blocks; other tensors pass through.
 * Without the declaration the tensors pass through (and io/quantized.ts refuses the blocks and scales).
 */
export function foldMxfp4(
  config: Record<string, unknown>,
  tensors: Map<string, TensorRef>,
  configFile: string,
): Map<string, TensorRef> {
  if (!isMxfp4Config(config)) return tensors;
  const out = new Map<string, TensorRef>();
  let folded = 0;
  for (const [name, t] of tensors) {
    if (SCALES.test(name)) {
      if (!tensors.has(name.replace(SCALES, '_blocks')))
        refuse(`MXFP4 scales ${name} have no blocks (${name.replace(SCALES, '_blocks')})`, t, CORRUPT);
      continue;
    }
    if (!BLOCKS.test(name)) {
      out.set(name, t);
      continue;
    }
    const p = name.replace(BLOCKS, '');
    const scales = tensors.get(mxfp4PartNames(p).scales);
    if (!scales) refuse(`MXFP4 blocks ${name} have no scales (${mxfp4PartNames(p).scales})`, t, CORRUPT);
    if (tensors.has(p)) refuse(`${p} is stored both as MXFP4 and unquantized`, t, CORRUPT);
    out.set(p, foldPair(p, t, scales));
    folded++;
  }
  if (folded === 0)
    throw new CheckpointError(
      'config.json declares quantization_config.quant_method "mxfp4", but no tensor is MXFP4 (no *_blocks with *_scales)',
      {
        file: configFile,
        hint: 'the config does not match the weights; re-download the checkpoint or remove the quantization_config',
      },
    );
  return out;
}

/** Bytes an MXFP4 tensor takes on disk: its blocks and scales. */
export const mxfp4Bytes = (p: { blocks: TensorRef; scales: TensorRef }) =>
  p.blocks.end - p.blocks.begin + (p.scales.end - p.scales.begin);
