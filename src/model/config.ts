/**
 * Reading config.json values that come under several names (aliases), and rewriting them.
 * transformers 5 writes `num_local_experts` for qwen3_moe and mixtral and `num_experts` for qwen2_moe and
 * olmoe; hub checkpoints of Qwen3 carry `num_experts`; DeepSeek uses `n_routed_experts`.
 */
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';

export const EXPERT_COUNT_KEYS = ['num_experts', 'num_local_experts', 'n_routed_experts', 'moe_num_experts'] as const;

export class ConfigReader {
  readonly file: string;

  constructor(
    readonly config: Config,
    dir: string,
  ) {
    this.file = path.join(dir, 'config.json');
  }

  has(key: string): boolean {
    return this.config[key] !== undefined && this.config[key] !== null;
  }

  /** The first alias present, as a finite number. */
  num(keys: string | readonly string[], fallback?: number): number {
    const list = typeof keys === 'string' ? [keys] : keys;
    for (const k of list) {
      const v = this.config[k];
      if (v === undefined || v === null) continue;
      if (typeof v !== 'number' || !Number.isFinite(v))
        throw this.error(`"${k}" is ${JSON.stringify(v)}, expected a number`);
      return v;
    }
    if (fallback !== undefined) return fallback;
    throw this.error(`missing "${list.join('" or "')}"`);
  }

  /** A positive integer (counts and sizes). */
  int(keys: string | readonly string[], fallback?: number): number {
    const v = this.num(keys, fallback);
    if (!Number.isInteger(v) || v < 0)
      throw this.error(`"${typeof keys === 'string' ? keys : keys[0]}" is ${v}, expected a non-negative integer`);
    return v;
  }

  optInt(key: string): number | undefined {
    return this.has(key) ? this.int(key) : undefined;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.config[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') throw this.error(`"${key}" is ${JSON.stringify(v)}, expected true or false`);
    return v;
  }

  str(key: string, fallback: string): string {
    const v = this.config[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string') throw this.error(`"${key}" is ${JSON.stringify(v)}, expected a string`);
    return v;
  }

  /** num_attention_heads, and num_key_value_heads (default: as many). */
  heads(): { heads: number; kvHeads: number } {
    const heads = this.int('num_attention_heads');
    return { heads, kvHeads: this.int('num_key_value_heads', heads) };
  }

  /** head_dim, else hidden / num_attention_heads. */
  headDim(hidden: number): number {
    return this.int('head_dim', Math.floor(hidden / this.int('num_attention_heads')));
  }

  /** Refuses a `hidden_act` other than SiLU, the gate activation moe's MLPs and experts compute. */
  requireSilu(): void {
    const act = this.str('hidden_act', 'silu');
    if (act !== 'silu') throw this.error(`hidden_act "${act}" is not silu`);
  }

  intList(key: string): number[] {
    const v = this.config[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x)))
      throw this.error(`"${key}" is ${JSON.stringify(v)}, expected a list of integers`);
    return v as number[];
  }

  /** rope_theta, or rope_parameters.rope_theta (transformers 5). */
  ropeTheta(fallback = 10000): number {
    const rp = this.config.rope_parameters as Record<string, unknown> | undefined;
    if (rp && typeof rp.rope_theta === 'number') return rp.rope_theta;
    return this.num('rope_theta', fallback);
  }

  error(why: string): CheckpointError {
    return new CheckpointError(`bad config: ${why}`, {
      file: this.file,
      hint: 'fix config.json or re-save the model with transformers',
    });
  }
}

/** The routed-expert count under whichever alias the config uses. */
export function expertCount(r: ConfigReader): number {
  return r.int(EXPERT_COUNT_KEYS);
}

/** A copy of the config with every expert-count alias present set to `n` (at least one is set). */
export function withExpertCount(config: Config, n: number, defaultKey: string): Config {
  const out: Config = { ...config };
  let found = false;
  for (const k of EXPERT_COUNT_KEYS) {
    if (out[k] !== undefined && out[k] !== null) {
      out[k] = n;
      found = true;
    }
  }
  if (!found) out[defaultKey] = n;
  return out;
}
