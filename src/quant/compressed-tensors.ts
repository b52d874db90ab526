/**
 * Writing `--format compressed-tensors`: the `pack-quantized` layout of the compressed-tensors library (verified
 * against its release 0.18.0 by scripts/check_compressed_tensors.py), so transformers, vLLM and SGLang load it.
 *
 * Per quantized weight P [out, in] at b bits with groups of G along the input dimension:
 *   P.weight_packed     I32 [out, ceil(in·b/32)]  the signed value v = code − 2^(b−1) stored as v + 2^(b−1) (that is,
 *                        moe's unsigned code), element i of a row at bits i·b .. i·b+b−1 of the row's little-endian
 *                        word stream (dense: a value may straddle two words), every row starting on a word
 *   P.weight_scale      the model's dtype [out, ceil(in/G)]
 *   P.weight_zero_point I32 [ceil(out·b/32), ceil(in/G)] (asymmetric only): zero − 2^(b−1) offset back to the zero,
 *                        packed the same way along dim 0 (each column of zero points is one word stream)
 *   P.weight_shape      I64 [2] = [out, in]
 * The library decodes w = (v − zp) · scale in the scale's dtype: (code − zero) · scale, exactly moe's dequantized
 * weight rounded once to the model's dtype. Symmetric weights have zero = 2^(b−1) (signed zero point 0, not stored).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError, UsageError } from '../errors';
import { DType, fromFloat32, toFloat32 } from '../io/dtype';
import { groupCount } from '../io/packed';
import { readHeader } from '../io/safetensors';
import type { PlannedTensor } from '../io/writer';
import type { QuantizedMatrix } from './rtn';
import { writeField } from '../util/bitfield';
import { modulePatterns } from '../util/regexp';

/** The compressed-tensors release whose packing this writes (scripts/check_compressed_tensors.py installs it). */
export const CT_VERSION = '0.18.0';
export const CT_FORMAT = 'pack-quantized';

export function packedWords(n: number, bits: number): number {
  return Math.ceil((n * bits) / 32);
}

/** The stored tensors of one weight, in write order. */
export function ctParts(
  weight: string,
  rows: number,
  cols: number,
  bits: number,
  groupSize: number,
  dtype: DType,
  symmetric: boolean,
): PlannedTensor[] {
  const base = weight.replace(/\.weight$/, '');
  const ng = groupCount(cols, groupSize);
  const parts: PlannedTensor[] = [
    { name: `${base}.weight_packed`, dtype: 'I32', shape: [rows, packedWords(cols, bits)] },
    { name: `${base}.weight_scale`, dtype, shape: [rows, ng] },
  ];
  if (!symmetric) parts.push({ name: `${base}.weight_zero_point`, dtype: 'I32', shape: [packedWords(rows, bits), ng] });
  parts.push({ name: `${base}.weight_shape`, dtype: 'I64', shape: [2] });
  return parts;
}

/** A weight compressed-tensors can describe: whole groups along the input (or one group shorter than G). */
export function checkCtWeight(name: string, cols: number, groupSize: number, dir: string): void {
  if (cols > groupSize && cols % groupSize !== 0)
    throw new UsageError(
      `--format compressed-tensors: ${name} has ${cols} inputs, not a multiple of --group-size ${groupSize}`,
      {
        file: dir,
        hint: 'choose a --group-size that divides it',
      },
    );
}

/** The stored tensors' bytes of one quantized weight (the order of ctParts). */
export function ctTensors(q: QuantizedMatrix, dtype: DType, symmetric: boolean): Uint8Array[] {
  const { rows, cols, bits } = q;
  const ng = q.scales.length / rows;
  const wpr = packedWords(cols, bits);
  const packed = new Uint32Array(rows * wpr);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let i = 0; i < cols; i++) writeField(packed, 1, r * wpr, i, bits, q.codes[row + i]);
  }
  const scales = fromFloat32(q.scales, dtype);
  const back = toFloat32(scales, dtype);
  for (let i = 0; i < back.length; i++)
    if (back[i] !== q.scales[i])
      throw new UsageError(
        `--format compressed-tensors: scale ${q.scales[i]} is not exact in ${dtype}, the model's dtype`,
        {
          hint: 'use --format packed or --format gguf',
        },
      );
  const out = [new Uint8Array(packed.buffer), scales];
  if (!symmetric) {
    const zp = new Uint32Array(packedWords(rows, bits) * ng);
    for (let g = 0; g < ng; g++) for (let r = 0; r < rows; r++) writeField(zp, ng, g, r, bits, q.zeros[r * ng + g]);
    out.push(new Uint8Array(zp.buffer));
  }
  out.push(new Uint8Array(new BigInt64Array([BigInt(rows), BigInt(cols)]).buffer));
  return out;
}

/**
 * Module-name regexes ("re:…", matched from the start) covering exactly `names`: the experts of one layer and
 * projection collapse to `\d+` when all of them (all of `every`) are in `names`.
 */
export function targetsOf(names: string[], every: string[]): string[] {
  return modulePatterns(names, every).map((p) => `re:^${p}$`);
}

/**
 * The config's `quantization_config`: one config group per bit width (targets: the module names quantized at it),
 * `ignore`: the linear-shaped weights left unquantized (router, lm_head, embeddings).
 */
export function ctQuantizationConfig(
  bitsOf: Map<string, number>,
  unquantized: string[],
  groupSize: number,
  symmetric: boolean,
): Record<string, unknown> {
  const modules = [...bitsOf.keys()].map((n) => n.replace(/\.weight$/, ''));
  const widths = [...new Set(bitsOf.values())].sort((a, b) => b - a);
  const groups: Record<string, unknown> = {};
  widths.forEach((bits, i) => {
    const names = [...bitsOf].filter(([, b]) => b === bits).map(([n]) => n.replace(/\.weight$/, ''));
    groups[`group_${i}`] = {
      // One scheme: llm-compressor's "Linear" (every linear module not in `ignore`); several: the module names.
      targets: widths.length === 1 ? ['Linear'] : targetsOf(names, modules),
      weights: {
        num_bits: bits,
        type: 'int',
        symmetric,
        strategy: 'group',
        group_size: groupSize,
        dynamic: false,
        actorder: null,
        observer: 'minmax',
      },
      input_activations: null,
      output_activations: null,
      format: CT_FORMAT,
    };
  });
  return {
    quant_method: 'compressed-tensors',
    format: CT_FORMAT,
    quantization_status: 'compressed',
    config_groups: groups,
    ignore: unquantized.map((n) => n.replace(/\.weight$/, '')),
    kv_cache_scheme: null,
    version: CT_VERSION,
  };
}

/**
 * What compressed-tensors output refuses: --layers parts. Experts stored fused (gpt_oss) are written as
 * llm-compressor writes them: linearized, one Linear module per expert and projection
 * (`mlp.experts.E.{gate,up,down}_proj`, weights [out, in], biases beside them; its modeling/moe/gpt_oss.py).
 */
export function checkCtRun(layers: boolean, dir: string): void {
  if (layers)
    throw new UsageError('--format compressed-tensors writes a whole model; --layers writes parts for moe assemble', {
      file: dir,
      hint: 'quantize without --layers',
    });
}

/**
 * The structural check of a written compressed-tensors folder: its config parses and its shards hold exactly the
 * planned tensors, with their dtypes and shapes (quantize then re-opens it with src/io/ct-read.ts).
 */
export function verifyCtWritten(dir: string, planned: PlannedTensor[]): void {
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  if (config.quantization_config?.quant_method !== 'compressed-tensors')
    throw new CheckpointError('config.json has no compressed-tensors quantization_config', { file: dir });
  const stored = new Map<string, { dtype: string; shape: number[] }>();
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.safetensors')))
    for (const t of readHeader(path.join(dir, f)).tensors) stored.set(t.name, t);
  for (const t of planned) {
    const s = stored.get(t.name);
    if (!s || s.dtype !== t.dtype || s.shape.join(',') !== t.shape.join(','))
      throw new CheckpointError(`tensor ${t.name} is missing or not ${t.dtype} [${t.shape.join(', ')}]`, { file: dir });
  }
  if (stored.size !== planned.length)
    throw new CheckpointError(`${stored.size} tensors stored, ${planned.length} planned`, { file: dir });
}
