/**
 * What a merge method is (after mergekit's merge_methods): a name, a summary, the parameters it declares (type,
 * default, choices) and its own steps for one MoE layer: the similarity it groups by, the groups, each member's
 * weight, the merge of a group into one expert and the router row of that expert. The command only resolves the
 * options against the declared parameters, loops over the layers and writes (src/commands/merge.ts). The registry,
 * with the built-in methods, is src/merge/methods.ts.
 */
import type { Backend } from '../backend/backend';
import type { CalibrationStats } from '../calib/stats';
import { UsageError } from '../errors';
import type { TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import type { ExpertWeights } from '../model/experts';
import type { MergeGroup } from './grouping';

/** The similarities of similarity.ts (router-logits is read from the stats; the others read every expert). */
export const SIMILARITIES = ['router-logits', 'expert-output', 'weights'] as const;
export type Similarity = (typeof SIMILARITIES)[number];

/** What a merge method may read about one MoE layer while it groups that layer's experts. */
export interface LayerInput {
  layer: number;
  stats: CalibrationStats;
  reader: TensorReader;
  arch: Architecture;
  be: Backend;
}

export interface MergeParamDef {
  /** The option's name: `--<name>` on the command line, the recipe key, the key in moe-compression.json params. */
  name: string;
  type: 'choice' | 'boolean' | 'number';
  /** For type choice: the accepted values. */
  choices?: readonly string[];
  /** For type number: the accepted range (inclusive). */
  min?: number;
  max?: number;
  default: string | boolean | number;
  description: string;
}

/** A method's parameters, resolved: every declared parameter has its value (given, or its default). */
export type MergeParams = Readonly<Record<string, string | boolean | number>>;

export interface AlignmentRecord {
  member: number;
  method: 'exact' | 'approximate';
  score_before: number;
  score_after: number;
}

export interface MergedGroup extends MergeGroup {
  /** Each member's weight in the merge, in the order of `members`. */
  weights: number[];
  /** Per aligned member: the matching used and the mean neuron-feature cosine before and after. */
  alignment?: AlignmentRecord[];
}

/** What a method may read while it merges one group: the layer, plus the seed of any random step. */
export interface GroupInput extends LayerInput {
  seed: number;
}

export interface MergeResult {
  /** The merged expert in float32 (the command writes it in the dominant expert's dtype). */
  expert: ExpertWeights;
  /** The alignment of each member, when the method aligned them (recorded as is). */
  alignment?: AlignmentRecord[];
}

/** A refined layer: its experts, and the relative output error on the calibration samples before and after. */
export interface RefineResult {
  experts: ExpertWeights[];
  errorBefore: number;
  errorAfter: number;
}

/** The merged layer's router as it will be written (float32): rows [K, hidden] and the correction bias [K]. */
export interface LayerRouter {
  rows: Float32Array;
  bias?: Float32Array;
}

/** The grouping step's input for one layer. */
export interface GroupingInput {
  /** Each expert's routing frequency (the calibration's share of tokens). */
  freq: ArrayLike<number>;
  /** Each expert's REAP saliency (mean over its tokens of gate weight × output norm; stats vector reap). */
  reap: ArrayLike<number>;
  /** The method's similarity [E, E]. */
  sim: Float64Array;
  /** Experts before and after. */
  E: number;
  keep: number;
  /** DeepSeek routing groups (1 otherwise): merges stay inside a group, and each keeps keep / routingGroups. */
  routingGroups: number;
}

export interface MergeMethod {
  name: string;
  summary: string;
  paper?: string;
  parameters: readonly MergeParamDef[];
  /** Pairwise similarity [E, E] of the layer's experts, the input of `groups`. */
  similarity(input: LayerInput, params: MergeParams): Promise<Float64Array>;
  /** Whether `similarity` reads every expert's weights (progress accounting only); true when absent. */
  readsExperts?(params: MergeParams): boolean;
  /** `keep` groups of the layer's experts. */
  groups(input: GroupingInput, params: MergeParams): MergeGroup[];
  /** Each member's weight in the merge (summing to 1), in the order of `group.members`. */
  weights(freq: ArrayLike<number>, group: MergeGroup, params: MergeParams, input: GroupingInput): number[];
  /** The group's experts merged into one (only called for groups of two or more; a single expert is copied). */
  merge(group: MergedGroup, input: GroupInput, params: MergeParams): Promise<MergeResult>;
  /**
   * A step over the whole layer after every group is merged (e.g. refit.ts's least-squares refit of the down
   * projections against the layer's calibrated output); absent, the merged experts are written as merged.
   */
  refineLayer?(
    experts: ExpertWeights[],
    router: LayerRouter,
    input: GroupInput,
    params: MergeParams,
  ): Promise<RefineResult>;
  /** Whether refineLayer applies with these parameters (then every expert of the layer is recomputed). */
  refines?(params: MergeParams): boolean;
  /**
   * Weights of the members' router rows (and correction biases) in the merged expert's row, or undefined to keep
   * the dominant expert's row.
   */
  routerWeights(group: MergedGroup, params: MergeParams): number[] | undefined;
}

/**
 * The method's parameters from the given options: each declared parameter takes its given value (checked against
 * its type and choices) or its default. Options the method does not declare are left out (they do not apply).
 */
export function resolveMergeParams(method: MergeMethod, given: Readonly<Record<string, unknown>>): MergeParams {
  const out: Record<string, string | boolean | number> = {};
  for (const p of method.parameters) {
    const v = given[p.name];
    if (v === undefined) {
      out[p.name] = p.default;
    } else if (p.type === 'boolean') {
      const on = [true, 'on', 'true'].includes(v as string);
      if (!on && ![false, 'off', 'false'].includes(v as string)) {
        throw new UsageError(`--${p.name} ${JSON.stringify(v)} is not on or off`, { hint: 'use on or off' });
      }
      out[p.name] = on;
    } else if (p.type === 'number') {
      const x = typeof v === 'number' ? v : Number(v);
      if (typeof v === 'boolean' || !Number.isFinite(x) || x < (p.min ?? -Infinity) || x > (p.max ?? Infinity)) {
        const hint = `use a number from ${p.min ?? '-∞'} to ${p.max ?? '∞'}`;
        throw new UsageError(`--${p.name} ${JSON.stringify(v)} is out of range for --method ${method.name}`, { hint });
      }
      out[p.name] = x;
    } else {
      if (typeof v !== 'string' || !(p.choices ?? []).includes(v)) {
        const hint = `use one of ${(p.choices ?? []).join(', ')}`;
        throw new UsageError(`--${p.name} ${JSON.stringify(v)} is not a choice of --method ${method.name}`, { hint });
      }
      out[p.name] = v;
    }
  }
  return out;
}
