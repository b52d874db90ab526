/**
 * The calibration statistics file (like llama.cpp's imatrix, but for every moe method): a folder holding
 * `stats.safetensors` and `stats.json`. Tensor names:
 *   layers.L.moe.{count, soft_freq, weight_sum, reap, out_abs_mean, out_abs_max, act_abs_max}  [E]   F64
 *   layers.L.moe.out_mean [E, hidden] F32        layers.L.moe.{router_cos, coact} [E, E] F64
 *   layers.L.moe.naee_in / naee_out [n, hidden] F32  (a seeded subsample of MoE-block inputs and outputs)
 *   imatrix/<weight> [in] F64: Σ x² per input column       rows/<weight> [1] F64: input rows seen
 *   hessian/<weight> [in, in] F32: XᵀX (with --hessians; Σ c·x xᵀ with --hessian-weighting gate, calib/affinity.ts)
 * Routed experts' statistics cover the tokens routed to them; with --all-experts their linear inputs (imatrix, rows,
 * hessian) cover every token, while count, soft_freq, weight_sum, reap, out_*, act_abs_max, router_cos, coact and
 * the NAEE sample stay exactly those of the routed pass.
 * Routed experts' up_proj shares gate_proj's input, so only gate_proj's input statistics are stored.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { Checkpoint, openTensorFile, TensorReader } from '../io/checkpoint';
import type { PlannedTensor } from '../io/writer';
import type { Architecture } from '../model/arch';
import type { HessianWeighting } from './affinity';

export const STATS_TENSORS = 'stats.safetensors';
export const STATS_JSON = 'stats.json';
export const STATS_FORMAT = 'moe-calibration-stats/1';

export const EXPERT_VECTORS = [
  'count',
  'soft_freq',
  'weight_sum',
  'reap',
  'out_abs_mean',
  'out_abs_max',
  'act_abs_max',
] as const;
export type ExpertVector = (typeof EXPERT_VECTORS)[number];

export interface StatsJson {
  format: string;
  fingerprint: Fingerprint;
  model: string;
  data: { file: string; sha256: string; windows: number; tokens: number; seq_len: number; max_tokens: number | null };
  hessians: boolean;
  /** calibrate --all-experts (absent in older files: false). */
  all_experts?: boolean;
  /** calibrate --hessian-weighting (absent in older files: 'none'). */
  hessian_weighting?: HessianWeighting;
  naee_tokens: number;
  seed: number;
  moe_layers: number[];
  experts: number;
  top_k: number;
  /** Linear weights with input statistics, in file order. */
  linears: string[];
}

export interface Fingerprint {
  model_type: string;
  /** sha256 of config.json's canonical JSON. */
  config_sha256: string;
  /**
   * sha256 of the sorted tensor names with their shapes (dtype excluded: a bf16 and an f32 copy are the same model).
   */
  tensors_sha256: string;
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Config keys that change with a dtype conversion and do not change the model. */
const VOLATILE_CONFIG_KEYS = ['torch_dtype', 'dtype', 'transformers_version', '_name_or_path'];

export function fingerprint(ckpt: Checkpoint): Fingerprint {
  const config = { ...ckpt.config };
  for (const k of VOLATILE_CONFIG_KEYS) delete config[k];
  const names = [...ckpt.tensors.values()].map((t) => `${t.name}:${t.shape.join('x')}`).sort();
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');
  return {
    model_type: String(ckpt.config.model_type),
    config_sha256: sha(canonical(config)),
    tensors_sha256: sha(names.join('\n')),
  };
}

/** Linear weights whose inputs calibration records, per layer, in forward order. */
export function observedLinears(arch: Architecture, layer: number): string[] {
  const out: string[] = [];
  for (const s of arch.schema()) {
    const r = s.role;
    if (!('layer' in r) || r.layer !== layer) continue;
    // attention projections only: gpt-oss's sinks [heads] are attention tensors but no linear
    if (r.kind === 'attn' && !r.bias && s.shape.length === 2) out.push(s.name);
    else if (r.kind === 'router' || r.kind === 'shared_gate') out.push(s.name);
    else if (
      (r.kind === 'expert' || r.kind === 'shared' || r.kind === 'dense_mlp') &&
      r.proj !== 'up' &&
      !('bias' in r && r.bias)
    )
      out.push(s.name);
  }
  return out;
}

/** The name whose input statistics describe `weight` (up_proj reads gate_proj's). */
export function inputStatsName(weight: string): string {
  return weight.replace(/\.up_proj\.weight$/, '.gate_proj.weight').replace(/\.w3\.weight$/, '.w1.weight');
}

/** Every tensor of the stats file for one layer, in write order. */
export function layerPlan(
  arch: Architecture,
  layer: number,
  naee: number,
  hessians: boolean,
  inDims: Map<string, number>,
): PlannedTensor[] {
  const plan: PlannedTensor[] = [];
  if (arch.isMoeLayer(layer)) {
    const E = arch.numExperts;
    const h = arch.hidden;
    const p = `layers.${layer}.moe`;
    for (const v of EXPERT_VECTORS) plan.push({ name: `${p}.${v}`, dtype: 'F64', shape: [E] });
    plan.push({ name: `${p}.out_mean`, dtype: 'F32', shape: [E, h] });
    plan.push({ name: `${p}.router_cos`, dtype: 'F64', shape: [E, E] });
    plan.push({ name: `${p}.coact`, dtype: 'F64', shape: [E, E] });
    plan.push({ name: `${p}.naee_in`, dtype: 'F32', shape: [naee, h] });
    plan.push({ name: `${p}.naee_out`, dtype: 'F32', shape: [naee, h] });
  }
  for (const w of observedLinears(arch, layer)) {
    const d = inDims.get(w)!;
    plan.push({ name: `rows/${w}`, dtype: 'F64', shape: [1] });
    plan.push({ name: `imatrix/${w}`, dtype: 'F64', shape: [d] });
    if (hessians) plan.push({ name: `hessian/${w}`, dtype: 'F32', shape: [d, d] });
  }
  return plan;
}

/** Reads a stats folder, refusing one made from another model. */
export class CalibrationStats {
  readonly json: StatsJson;
  readonly reader: TensorReader;

  constructor(readonly dir: string) {
    const jsonFile = path.join(dir, STATS_JSON);
    if (!fs.existsSync(jsonFile))
      throw new CheckpointError('not a moe stats folder (no stats.json)', {
        file: dir,
        hint: 'make one with moe calibrate MODEL -o STATS',
      });
    try {
      this.json = JSON.parse(fs.readFileSync(jsonFile, 'utf8'));
    } catch (e) {
      throw new CheckpointError(`stats.json is not valid JSON (${(e as Error).message})`, {
        file: jsonFile,
        hint: 're-run moe calibrate',
      });
    }
    if (this.json.format !== STATS_FORMAT)
      throw new CheckpointError(`stats format ${JSON.stringify(this.json.format)} is not ${STATS_FORMAT}`, {
        file: jsonFile,
        hint: 're-run moe calibrate with this version of moe',
      });
    this.reader = new TensorReader(openTensorFile(path.join(dir, STATS_TENSORS)));
  }

  /** Throws unless these stats were made from this model (same config and tensor layout). */
  checkModel(ckpt: Checkpoint): void {
    const mine = fingerprint(ckpt);
    const theirs = this.json.fingerprint;
    if (mine.config_sha256 !== theirs.config_sha256 || mine.tensors_sha256 !== theirs.tensors_sha256) {
      throw new CheckpointError(`the stats were made from another model (${theirs.model_type} at ${this.json.model})`, {
        file: this.dir,
        hint: `re-run moe calibrate on ${ckpt.dir}`,
      });
    }
  }

  vector(layer: number, name: ExpertVector): Float64Array {
    const bytes = this.reader.bytes(`layers.${layer}.moe.${name}`);
    return new Float64Array(bytes.slice().buffer);
  }

  f64(name: string): Float64Array {
    return new Float64Array(this.reader.bytes(name).slice().buffer);
  }

  f32(name: string): Float32Array {
    return this.reader.f32(name);
  }

  has(name: string): boolean {
    return this.reader.has(name);
  }

  /** Frequency: share of the layer's tokens that chose each expert among their top-k. */
  frequency(layer: number): Float64Array {
    return this.vector(layer, 'count').map((c) => c / this.json.data.tokens);
  }

  close(): void {
    this.reader.close();
  }
}
