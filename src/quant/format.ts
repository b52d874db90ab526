/**
 * Writing moe's packed checkpoint layout ("moe-packed/1", described and read in src/io/packed.ts): its shard
 * metadata entry and the config's `quantization_config` (the stored parts of a weight: packedPlan in io/packed.ts).
 */
import { METADATA_PREFIX, PACKED_FORMAT, QUANT_METHOD } from '../io/packed';
import type { PackedInfo } from '../io/safetensors';

/** The `quantization_config` of a packed checkpoint's config.json. */
export function quantizationConfig(
  averageBits: number,
  groupSize: number,
  method: string,
  allocate: string,
): Record<string, unknown> {
  return {
    quant_method: QUANT_METHOD,
    format: PACKED_FORMAT,
    bits: averageBits,
    group_size: groupSize,
    method,
    allocate,
    layout:
      'per weight P: P.qweight U8 [out, ceil(in*bits/8)] codes LSB-first per row; P.scales BF16 [out, groups]; P.qzeros U8 [out, groups]; w = (code - zero) * scale; bits per weight in the shard metadata key moe.quant.P.weight',
  };
}

export function metadataEntry(weight: string, info: PackedInfo): [string, string] {
  return [METADATA_PREFIX + weight, JSON.stringify(info)];
}
