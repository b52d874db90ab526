/**
 * Writing moe's packed checkpoint layout ("moe-packed/1", described and read in src/io/packed.ts): the stored parts
 * of a quantized weight in write order, its shard metadata entry and the config's `quantization_config`.
 */
import {
  groupCount, METADATA_PREFIX, PACKED_FORMAT, packedRowBytes, partNames, QUANT_METHOD,
} from '../io/packed';
import type { PackedInfo } from '../io/safetensors';
import type { PlannedTensor } from '../io/writer';

/** The three stored tensors of a weight [rows, cols] at `bits` with groups of `groupSize`, in write order. */
export function packedPlan(weight: string, rows: number, cols: number, bits: number, groupSize: number): PlannedTensor[] {
  const n = partNames(weight);
  const groups = groupCount(cols, groupSize);
  return [
    { name: n.qweight, dtype: 'U8', shape: [rows, packedRowBytes(cols, bits)] },
    { name: n.scales, dtype: 'BF16', shape: [rows, groups] },
    { name: n.zeros, dtype: 'U8', shape: [rows, groups] },
  ];
}

/** The `quantization_config` of a packed checkpoint's config.json. */
export function quantizationConfig(averageBits: number, groupSize: number, method: string, allocate: string): Record<string, unknown> {
  return {
    quant_method: QUANT_METHOD,
    format: PACKED_FORMAT,
    bits: averageBits,
    group_size: groupSize,
    method,
    allocate,
    layout: 'per weight P: P.qweight U8 [out, ceil(in*bits/8)] codes LSB-first per row; P.scales BF16 [out, groups]; P.qzeros U8 [out, groups]; w = (code - zero) * scale; bits per weight in the shard metadata key moe.quant.P.weight',
  };
}

export function metadataEntry(weight: string, info: PackedInfo): [string, string] {
  return [METADATA_PREFIX + weight, JSON.stringify(info)];
}
