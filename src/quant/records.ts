/**
 * The records `moe quantize` writes beside its output, read by `moe assemble` and the run report: the
 * quantization record, and for a partial output of `--layers A-B` its tensors in one file and its part record.
 */
import type { fingerprint } from '../calib/stats';

export const QUANT_RECORD_FILE = 'moe-quantization.json';
/** A partial output of `--layers` (moe assemble joins them): its tensors in one file, and its record. */
export const PART_FILE = 'part.safetensors';
export const PART_RECORD = 'moe-partial.json';
export const PART_FORMAT = 'moe-partial/1';

export interface PartRecord {
  format: string;
  model: string;
  fingerprint: ReturnType<typeof fingerprint>;
  layers: [number, number];
  num_layers: number;
  /** The source checkpoint's tensor names in order: the single run's output order. */
  order: string[];
  config: Record<string, unknown>;
  source_metadata: Record<string, string>;
  options: {
    format: string;
    bits: number;
    group_size: number;
    method: string;
    allocate: string;
    budget_scope: string;
    granularity: string;
    max_shard_bytes: number;
  };
  /**
   * A language model nested beside other towers (io/checkpoint.ts Nesting, `beside` as a list): the names and config
   * the assembled checkpoint stores. Absent for a plain checkpoint.
   */
  nesting?: { outer: Record<string, unknown>; prefix: string; head?: string; beside: string[] };
  /** Bits of every weight this part quantized. */
  bits: Record<string, number>;
  report: object;
}
