/**
 * FP8 block-scaled weights as DeepSeek-V3/R1/V3.1, Qwen3-*-FP8, MiniMax-M2 and GLM-4.5-FP8 publish them
 * (config.json `quantization_config.quant_method: "fp8"`, transformers' FineGrainedFP8Config):
 *   P.weight            F8_E4M3     [rows, cols]                        e4m3fn codes (bias 7, no infinities, max 448)
 *   P.weight_scale_inv  F32 | BF16  [ceil(rows/bm), ceil(cols/bn)]      one scale per block of [bm, bn] =
 *                                                                       quantization_config.weight_block_size
 * and w[r, c] = fp8(P.weight[r, c]) × P.weight_scale_inv[floor(r/bm), floor(c/bn)]; blocks at the right and bottom
 * edges are partial (DeepSeek's weight_dequant kernel; transformers' Fp8Dequantize on CPU instead derives the
 * block from rows / scale_rows, which is wrong when the edges are partial). The product is formed in float32 and
 * rounded to the checkpoint's compute dtype (config `torch_dtype` / `dtype`, bf16 by default), as transformers
 * does when it dequantizes on load.
 *
 * At open, each weight and its scale fold into ONE logical tensor (name P.weight, the compute dtype, the weight's
 * shape) with `fp8` parts, read dequantized by TensorReader: every command sees floating weights. Writers that
 * keep the format (prune, merge) copy the parts bit-exact or re-encode by `encodeFp8`: transformers' Fp8Quantize
 * rule, scale_inv = block amax / 448 (computed as 1 / ((1 / amax) × 448) in float32, as torch does), codes =
 * e4m3(w × 448 / amax) with round-to-nearest-even and saturation at ±448; with `scale_fmt: "ue8m0"`
 * (DeepSeek-V3.1/V3.2) scale_inv is first rounded up to a power of two and the codes are w / scale_inv.
 *
 * Accepted: activation_scheme "dynamic" (activations are quantized on the fly by the FP8 kernels; moe computes in
 * float32 and needs nothing); fmt "e4m3" (or "float8_e4m3fn"); scale_fmt "float" or "ue8m0";
 * modules_to_not_convert (those modules are stored in bf16/f16/f32 and read as stored). Refused, each with its
 * reason: activation_scheme "static" (its per-tensor input scales change the activations and moe does not apply
 * them), F8_E5M2 weights, per-tensor FP8 (weight_block_size null), FP8 embeddings (modules_to_convert), a scale of
 * another dtype or shape, a weight without its scale and a scale without its weight.
 */
import { CheckpointError, shown } from '../errors';
import { DType, floatToBf16Bits, roundToDtype, TORCH_NAMES, toFloat32 } from './dtype';
import type { Fp8Parts, TensorRef } from './safetensors';
import { withoutQuantMethod } from './quant-config';

export const FP8_QUANT_METHOD = 'fp8';
/** The largest finite e4m3fn value. */
export const E4M3_MAX = 448;
/** transformers' FineGrainedFP8Config default when the key is absent. */
const DEFAULT_BLOCK: [number, number] = [128, 128];
const SCALE_SUFFIX = '.weight_scale_inv';
const SCALE_DTYPES: DType[] = ['F32', 'BF16'];
/** `fmt` as DeepSeek, Kimi and Qwen write it, and as MiniMax-M2 does (torch's dtype name). */
const E4M3_NAMES = ['e4m3', 'float8_e4m3fn'];

export interface Fp8Config {
  block: [number, number];
  ue8m0: boolean;
  /** The dtype the weights are dequantized to. */
  computeDType: DType;
}

const REFUSE_HINT =
  'dequantize the checkpoint first (transformers: FineGrainedFP8Config(dequantize=True)), or use the unquantized original';

/** The name of a weight's block scale. */
export function scaleName(weight: string): string {
  return `${weight.replace(/\.weight$/, '')}${SCALE_SUFFIX}`;
}

/** The compute dtype named by the config (`torch_dtype`, transformers 5's `dtype`), bf16 when absent or unusual. */
function computeDType(config: Record<string, unknown>): DType {
  const name = config.torch_dtype ?? config.dtype;
  const found = (Object.entries(TORCH_NAMES) as [DType, string][]).find(([, n]) => n === name);
  return found ? found[0] : 'BF16';
}

/**
 * The FP8 settings of a config whose quantization_config has quant_method "fp8" (undefined for any other
 * config); refuses the settings moe does not honour.
 */
export function parseFp8Config(config: Record<string, unknown>, file: string): Fp8Config | undefined {
  const q = config.quantization_config as Record<string, unknown> | undefined | null;
  if (!q || typeof q !== 'object' || q.quant_method !== FP8_QUANT_METHOD) return undefined;
  const refuse = (what: string, why: string) =>
    new CheckpointError(`config.json declares quantization_config.quant_method "fp8" with ${what}, ${why}`, {
      file,
      hint: REFUSE_HINT,
    });
  const scheme = q.activation_scheme ?? 'dynamic';
  if (typeof scheme !== 'string' || scheme.toLowerCase() !== 'dynamic')
    throw refuse(
      `activation_scheme ${shown(scheme)}`,
      'whose static input scales moe does not apply (only "dynamic" is read)',
    );
  const fmt = q.fmt ?? 'e4m3';
  if (!E4M3_NAMES.includes(fmt as string))
    throw refuse(`fmt ${shown(fmt)}`, 'which moe does not decode (only "e4m3" is read)');
  const scaleFmt = q.scale_fmt ?? 'float';
  if (scaleFmt !== 'float' && scaleFmt !== 'ue8m0')
    throw refuse(`scale_fmt ${shown(scaleFmt)}`, 'which moe does not decode ("float" or "ue8m0" are read)');
  const block = q.weight_block_size === undefined ? DEFAULT_BLOCK : q.weight_block_size;
  if (block === null)
    throw refuse('weight_block_size null', 'per-tensor FP8, which moe does not decode (block scales are read)');
  if (!Array.isArray(block) || block.length !== 2 || !block.every((b) => Number.isInteger(b) && b > 0))
    throw refuse(`weight_block_size ${shown(block)}`, 'which is not two positive integers');
  const convert = q.modules_to_convert;
  if (Array.isArray(convert) && convert.length > 0)
    throw refuse(`modules_to_convert ${shown(convert)}`, 'FP8 embeddings, which moe does not decode');
  return { block: [block[0], block[1]], ue8m0: scaleFmt === 'ue8m0', computeDType: computeDType(config) };
}

/** A config without an fp8 quantization_config (for an output whose weights are all written floating). */
export function withoutFp8Config(config: Record<string, unknown>): Record<string, unknown> {
  return withoutQuantMethod(config, FP8_QUANT_METHOD);
}

/**
 * Folds every F8_E4M3 weight and its `weight_scale_inv` into one logical tensor in the place of the weight (see
 * the header); other tensors pass through. Without an fp8 config the tensors are returned as they are (F8 weights
 * are then refused by src/io/quantized.ts).
 */
export function foldFp8(tensors: Map<string, TensorRef>, cfg: Fp8Config | undefined): Map<string, TensorRef> {
  if (!cfg) return tensors;
  const out = new Map<string, TensorRef>();
  const [bm, bn] = cfg.block;
  for (const [name, t] of tensors) {
    if (name.endsWith(SCALE_SUFFIX)) {
      const w = tensors.get(name.slice(0, -SCALE_SUFFIX.length) + '.weight');
      if (w?.dtype === 'F8_E4M3' || w?.dtype === 'F8_E5M2') continue; // folded with (or refused by) its weight
      throw new CheckpointError(`tensor "${name}" is an FP8 block scale without its F8_E4M3 weight`, {
        file: t.file,
        hint: 'the checkpoint is incomplete or was edited; re-download it',
      });
    }
    if (t.dtype === 'F8_E5M2')
      throw new CheckpointError(
        `tensor "${name}" is stored as F8_E5M2, which moe does not decode (FP8 is read as E4M3)`,
        {
          file: t.file,
          hint: REFUSE_HINT,
        },
      );
    if (t.dtype !== 'F8_E4M3') {
      out.set(name, t);
      continue;
    }
    const scale = tensors.get(scaleName(name));
    if (!name.endsWith('.weight') || !scale)
      throw new CheckpointError(`tensor "${name}" is stored as F8_E4M3 without its ${scaleName(name)}`, {
        file: t.file,
        hint: 'the checkpoint is incomplete; re-download it',
      });
    const [rows, cols] = t.shape;
    const want = [Math.ceil(rows / bm), Math.ceil(cols / bn)];
    if (t.shape.length !== 2)
      throw new CheckpointError(`tensor "${name}" is F8_E4M3 [${t.shape}], moe decodes 2-D FP8 weights only`, {
        file: t.file,
        hint: REFUSE_HINT,
      });
    if (!SCALE_DTYPES.includes(scale.dtype) || scale.shape.length !== 2 || scale.shape.some((d, i) => d !== want[i]))
      throw new CheckpointError(
        `${scale.name} is ${scale.dtype} [${scale.shape}], expected F32 or BF16 [${want}] for ${name} [${t.shape}] in blocks of ${bm}×${bn}`,
        {
          file: scale.file,
          hint: 'the scales do not match quantization_config.weight_block_size; moe does not decode it',
        },
      );
    const fp8: Fp8Parts = { weight: t, scale, block: [bm, bn], ue8m0: cfg.ue8m0 };
    out.set(name, { ...t, dtype: cfg.computeDType, fp8 });
  }
  return out;
}

/** How an FP8 tensor is stored, as inspect says it: "F8_E4M3 + F32 block scales 128×128". */
export function fp8Storage(p: Fp8Parts): string {
  return `F8_E4M3 + ${p.scale.dtype} block scales ${p.block[0]}×${p.block[1]}${p.ue8m0 ? ' (ue8m0)' : ''}`;
}

/** Bytes an FP8 tensor takes on disk: codes and scales. */
export function fp8Bytes(p: Fp8Parts): number {
  return p.weight.end - p.weight.begin + (p.scale.end - p.scale.begin);
}

/**
 * Rows [start, start+count) of an FP8 weight [*, cols] dequantized: `codes` are those rows' e4m3 bytes, `scales`
 * the block-scale rows floor(start/bm) .. floor((start+count−1)/bm), [·, ceil(cols/bn)] as float32. The result is
 * rounded to `dtype`.
 */
export function dequantizeFp8(
  codes: Uint8Array,
  scales: Float32Array,
  start: number,
  count: number,
  cols: number,
  block: [number, number],
  dtype: DType,
): Float32Array {
  const [bm, bn] = block;
  const sc = Math.ceil(cols / bn);
  const br0 = Math.floor(start / bm);
  const values = toFloat32(codes.subarray(0, count * cols), 'F8_E4M3');
  for (let r = 0; r < count; r++) {
    const srow = (Math.floor((start + r) / bm) - br0) * sc;
    const row = r * cols;
    for (let c = 0; c < cols; c++) values[row + c] *= scales[srow + Math.floor(c / bn)];
  }
  return roundToDtype(values, dtype);
}

/** Round half to even of a non-negative double. */
function rne(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}

/** float32 → e4m3fn bits: round to nearest even, saturating at ±448 (as transformers clamps before its cast). */
export function floatToE4M3(x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (a >= E4M3_MAX) return sign | 0x7e;
  if (a < 2 ** -6) return sign | rne(a * 512); // subnormals (8 rounds up to the smallest normal, 0x08)
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  let m = rne((a / 2 ** e - 1) * 8);
  if (m === 8) {
    m = 0;
    e++;
  }
  return sign | ((e + 7) << 3) | m;
}

/** The smallest power of two ≥ x (x > 0). */
function powerOfTwoAtLeast(x: number): number {
  let p = 2 ** Math.ceil(Math.log2(x));
  if (p < x) p *= 2;
  else if (p / 2 >= x) p /= 2;
  return p;
}

/**
 * A weight [rows, cols] encoded as FP8 in blocks of `block` (transformers' Fp8Quantize rule, see the header):
 * e4m3 codes and scale_inv [ceil(rows/bm), ceil(cols/bn)] rounded to `scaleDType` (F32 or BF16) before the
 * codes are computed from it, so decoding multiplies by exactly the stored scale.
 */
export function encodeFp8(
  w: Float32Array,
  rows: number,
  cols: number,
  block: [number, number],
  ue8m0: boolean,
  scaleDType: DType = 'F32',
): { codes: Uint8Array; scales: Float32Array } {
  const [bm, bn] = block;
  const sr = Math.ceil(rows / bm);
  const sc = Math.ceil(cols / bn);
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(sr * sc);
  const f = Math.fround;
  for (let i = 0; i < sr; i++) {
    const r1 = Math.min(rows, (i + 1) * bm);
    for (let j = 0; j < sc; j++) {
      const c1 = Math.min(cols, (j + 1) * bn);
      let amax = 0;
      for (let r = i * bm; r < r1; r++)
        for (let c = j * bn; c < c1; c++) amax = Math.max(amax, Math.abs(w[r * cols + c]));
      // The forward scale 448 / amax as torch computes a scalar over a tensor: reciprocal, then product (float32).
      let s = amax > 0 ? f(f(1 / amax) * E4M3_MAX) : 1; // a zero block keeps scale 1
      let inv = f(1 / s);
      if (ue8m0) inv = powerOfTwoAtLeast(Math.max(inv, 2 ** -126));
      else if (scaleDType === 'BF16')
        inv = toFloat32(new Uint8Array(new Uint16Array([floatToBf16Bits(inv)]).buffer), 'BF16')[0];
      if (ue8m0 || scaleDType === 'BF16') s = f(1 / inv);
      scales[i * sc + j] = inv;
      for (let r = i * bm; r < r1; r++)
        for (let c = j * bn; c < c1; c++) codes[r * cols + c] = floatToE4M3(f(w[r * cols + c] * s));
    }
  }
  return { codes, scales };
}
