/**
 * Checkpoints stored quantized in a format moe does not decode are refused before any number is computed: read
 * as plain tensors, FP8 values without their block scales (or GPTQ codes without their scales) give a model that
 * runs and is silently wrong. Two signs are checked, each enough on its own:
 *   - config.json declares a `quantization_config` (also inside `text_config` and other sub-configs) or a
 *     `compression_config` (older compressed-tensors), other than moe's own packed format;
 *   - a tensor is a scale, zero point or packed-code side tensor, or a weight stored as F8/I8/U8, that is not a
 *     part of moe's packed format (those parts are folded into logical tensors before this check).
 */
import { CheckpointError, shown } from '../errors';
import type { TensorRef } from './safetensors';
import { QUANT_METHOD } from './packed';
import { MXFP4_METHOD } from './mxfp4';
import { FP8_QUANT_METHOD } from './fp8';
import { CT_METHOD, GPTQ_METHOD } from './intquant';

const SUPPORTED =
  'moe reads bf16, f16 and f32 safetensors, block-scaled FP8, gpt-oss MXFP4 experts, compressed-tensors int weights, GPTQ and its own packed format: dequantize the checkpoint first, or use the unquantized original';

/** Stored formats moe plans to decode (DESIGN.md: readers for them belong to src/io); the others it never will. */
const PLANNED = new Set(['fp8', 'fbgemm_fp8', 'mxfp4', 'compressed-tensors']);

const notDecoded = (method: string) => `which moe does not decode${PLANNED.has(method) ? ' yet' : ''}`;

/** Tensor names that only quantized checkpoints have, and the format they come from. */
const SIDE_TENSORS: [RegExp, string][] = [
  [/\.weight_scale_inv$/, 'an FP8 block scale'],
  [
    /\.(weight_scale|input_scale|output_scale|weight_global_scale|input_global_scale|weight_zero_point|input_zero_point|k_scale|v_scale)$/,
    'a quantization scale or zero point (FP8, compressed-tensors)',
  ],
  [/\.(weight_packed|weight_shape|weight_g_idx)$/, 'a part of a compressed-tensors packed weight'],
  [
    /\.(qweight|qzeros|scales|g_idx)$/,
    'a part of a GPTQ/AWQ packed weight (or of a moe-packed one whose shard metadata is missing)',
  ],
  [/_blocks$|_scales$/, 'MXFP4 blocks or scales'],
  [
    /\.(absmax|quant_map|nested_absmax|nested_quant_map|SCB|weight_format)$|\.quant_state\./,
    'bitsandbytes quantization state',
  ],
];

/** Dtypes that hold quantized codes, never the weights of a bf16/f16/f32 checkpoint. */
const QUANTIZED_DTYPES = new Set(['F8_E4M3', 'F8_E5M2', 'I8', 'U8']);

function methodOf(q: unknown, fallback: string): string {
  const m = typeof q === 'object' && q !== null ? (q as { quant_method?: unknown }).quant_method : undefined;
  return typeof m === 'string' ? m : fallback;
}

/** Refuses a config that declares a quantization moe does not decode (moe's own packed format passes). */
export function checkConfigNotQuantized(config: Record<string, unknown>, file: string): void {
  const places: [string, Record<string, unknown>][] = [['', config]];
  for (const [k, v] of Object.entries(config)) {
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) places.push([`${k}.`, v as Record<string, unknown>]);
  }
  for (const [prefix, c] of places) {
    const q = c.quantization_config;
    if (q !== undefined && q !== null) {
      const method = methodOf(q, '');
      if (prefix === '' && [QUANT_METHOD, FP8_QUANT_METHOD, MXFP4_METHOD, CT_METHOD, GPTQ_METHOD].includes(method))
        continue; // decoded
      const what = method
        ? `${prefix}quantization_config.quant_method ${shown(method)}`
        : `${prefix}quantization_config (no quant_method: ${shown(q)})`;
      throw new CheckpointError(`config.json declares ${what}, ${notDecoded(method)}`, { file, hint: SUPPORTED });
    }
    const cc = c.compression_config;
    if (cc !== undefined && cc !== null) {
      const method = methodOf(cc, 'compressed-tensors');
      throw new CheckpointError(
        `config.json declares ${prefix}compression_config (quant_method ${shown(method)}), ${notDecoded(method)}`,
        { file, hint: SUPPORTED },
      );
    }
  }
}

/** Refuses scale / zero-point / packed-code side tensors and F8/I8/U8 weights outside moe's packed format. */
export function checkTensorsNotQuantized(tensors: Map<string, TensorRef>): void {
  const found: { t: TensorRef; why: string }[] = [];
  for (const t of tensors.values()) {
    if (t.packed || t.fp8 || t.mxfp4 || t.intq) continue;
    const side = SIDE_TENSORS.find(([re]) => re.test(t.name));
    if (side) found.push({ t, why: `is ${side[1]}` });
    else if (QUANTIZED_DTYPES.has(t.dtype)) found.push({ t, why: `is stored as ${t.dtype}, a quantized weight` });
  }
  if (found.length === 0) return;
  const { t, why } = found[0];
  const more = found.length > 1 ? ` (and ${found.length - 1} more such tensor${found.length > 2 ? 's' : ''})` : '';
  // FP8 weights and scales are decoded when config.json says how (src/io/fp8.ts): here it does not.
  if (found.some((f) => f.t.dtype === 'F8_E4M3' || f.t.name.endsWith('.weight_scale_inv')))
    throw new CheckpointError(
      `tensor "${t.name}" ${why}${more}, but config.json declares no quantization_config with quant_method "fp8"`,
      { file: t.file, hint: 'add the quantization_config the checkpoint was published with, or dequantize it first' },
    );
  throw new CheckpointError(`tensor "${t.name}" ${why}${more}, which moe does not decode`, {
    file: t.file,
    hint: SUPPORTED,
  });
}
