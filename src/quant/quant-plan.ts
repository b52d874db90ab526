/**
 * Quantization as plan then execute. measure (the cost table: each allocation group's weighted error at each bit
 * choice) → assign (src/quant/assign.ts, a pure function of groups, costs, budget and scope) → a QuantPlan: every
 * quantized weight with its bits, group, predicted error and bytes, every stored tensor in checkpoint order, the
 * totals and the solver's summary. `--dry-run` and `--report` print it; the writers (src/quant/execute.ts) consume it.
 */
import type { DType } from '../io/dtype';
import { tensorBytes } from '../io/safetensors';
import type { PlannedTensor } from '../io/writer';
import { assignBits, BitGroup, SolverSummary } from './assign';
import { packedMatrixBytes, packedPlan } from '../io/packed';
import { metadataEntry } from './format';
import { gptqBytes, gptqPlan } from '../io/gptq';
import { ctParts } from './compressed-tensors';
import type { Granularity, Group, Target, TargetClass } from './plan';

/** Router rows decide everything downstream: 8 bits unless --keep-router-fp keeps them as they are. */
export const ROUTER_BITS = 8;

/** The safetensors layouts of `moe quantize` (GGUF is written by src/gguf). */
export type QuantFormat = 'packed' | 'dequantized' | 'compressed-tensors' | 'gptq';
/**
 * Under --allocate lp, weights every token passes through (attention, shared experts, dense MLPs) take at least
 * this many bits unless fixed by a flag (QuantMoE-Bench).
 */
export const ALWAYS_ACTIVE_MIN_BITS = 4;

export interface BitRules {
  bits: number;
  choices: number[];
  attnBits?: number;
  sharedExpertBits?: number;
}

/** Bits a group takes whatever the budget: the router's, or those a flag fixes. */
export function fixedBits(g: Group, r: BitRules): number | undefined {
  if (g.cls === 'router') return ROUTER_BITS;
  if (g.cls === 'attn') return r.attnBits;
  if (g.cls === 'shared') return r.sharedExpertBits;
  return undefined;
}

/** The bit choices a group may take under --allocate lp. */
export function allowedBits(g: Group, r: BitRules): number[] {
  const fixed = fixedBits(g, r);
  if (fixed !== undefined) return [fixed];
  if (g.cls === 'attn' || g.cls === 'shared' || g.cls === 'dense') {
    const high = r.choices.filter((b) => b >= ALWAYS_ACTIVE_MIN_BITS);
    return high.length ? high : [r.choices[r.choices.length - 1]];
  }
  return r.choices;
}

/** Each group's weighted error at each allowed bit-width (groups with one choice are not measured). */
export type CostTable = Map<string, Record<string, number>>;

/**
 * The cost table, one weight at a time in checkpoint order: `errors(t, bits)` measures weight t at each of
 * `bits`; a group's cost is the sum over its weights.
 */
export async function measureCosts(
  targets: Target[],
  groups: Group[],
  rules: BitRules,
  errors: (t: Target, bits: number[]) => Promise<Map<number, number>>,
  tick: () => void = () => undefined,
): Promise<{ costs: CostTable; byTarget: Map<string, Map<number, number>> }> {
  const groupOf = new Map(groups.map((g) => [g.key, g]));
  const byTarget = new Map<string, Map<number, number>>();
  for (const t of targets) {
    const allowed = allowedBits(groupOf.get(t.group)!, rules);
    byTarget.set(t.name, allowed.length > 1 ? await errors(t, allowed) : new Map());
    tick();
  }
  const costs: CostTable = new Map();
  for (const g of groups) {
    const allowed = allowedBits(g, rules);
    if (allowed.length === 1) continue;
    const c: Record<string, number> = {};
    for (const b of allowed) c[b] = g.targets.reduce((s, t) => s + byTarget.get(t.name)!.get(b)!, 0);
    costs.set(g.key, c);
  }
  return { costs, byTarget };
}

export type BitsChoice =
  { ok: true; bits: Map<string, number>; solver: SolverSummary | null } | { ok: false; scope: Group[]; least: number };

/** Bits per group: --bits everywhere (fixed groups aside), or the LP over the cost table, per scope. */
export async function chooseBits(
  groups: Group[],
  rules: BitRules,
  costs: CostTable | undefined,
  scope: 'global' | 'layer',
): Promise<BitsChoice> {
  const bits = new Map<string, number>();
  if (!costs) {
    for (const g of groups) bits.set(g.key, fixedBits(g, rules) ?? rules.bits);
    return { ok: true, bits, solver: null };
  }
  const { choices } = rules;
  const problem: BitGroup[] = groups.map((g) => {
    const c = costs.get(g.key);
    return {
      key: g.key,
      params: g.params,
      scope: g.layer,
      fixed: c ? undefined : allowedBits(g, rules)[0],
      cost: c && choices.map((b) => c[b]),
    };
  });
  const r = await assignBits(choices, problem, rules.bits, scope === 'layer');
  if (!r.ok) return { ok: false, scope: groups.filter((g) => r.scope.some((s) => s.key === g.key)), least: r.least };
  problem.forEach((g) => bits.set(g.key, g.fixed ?? choices[r.choice.get(g.key)!]));
  return { ok: true, bits, solver: r.solver };
}

/** A quantized weight in the plan. */
export interface PlannedWeight extends Target {
  bits: number;
  /** Bytes stored: packed parts, or the dequantized weight in its dtype. */
  bytes: number;
  /** The measured weighted error at its bits (null when not measured). */
  predicted: number | null;
}

export interface QuantPlan {
  format: QuantFormat;
  /** compressed-tensors: symmetric grids. */
  symmetric: boolean;
  method: 'rtn' | 'gptq';
  groupSize: number;
  granularity: Granularity;
  groups: Group[];
  /** Group key → bits. */
  bits: Map<string, number>;
  /** The measured cost table (--allocate lp), and each group's cost at its bits. */
  costs: CostTable;
  predicted: Map<string, number>;
  solver: SolverSummary | null;
  weights: PlannedWeight[];
  /** Every stored tensor, in checkpoint order: quantized weights as packed parts or in their dtype. */
  tensors: PlannedTensor[];
  /** Shard metadata of the packed weights, by the name of their first part. */
  tensorMetadata: Map<string, Record<string, string>>;
  quantizedParams: number;
  /** Mean code bits over the quantized weights. */
  averageBits: number;
  /** Mean stored bits over the quantized weights, scales and zero points included (packed layout). */
  storedBitsPerWeight: number;
  bitsHistogram: Record<string, number>;
  byClass: Record<string, { params: number; average_bits: number }>;
  /** Bytes of the stored tensors (headers not included). */
  tensorBytes: number;
}

export interface PlanInput {
  format: QuantFormat;
  method: 'rtn' | 'gptq';
  groupSize: number;
  /** compressed-tensors: symmetric grids (no zero points stored). */
  symmetric?: boolean;
  granularity: Granularity;
  /** The tensors this run writes, in checkpoint order. */
  tensors: { name: string; dtype: DType; shape: number[] }[];
  targets: Target[];
  groups: Group[];
  bits: Map<string, number>;
  costs?: CostTable;
  byTarget?: Map<string, Map<number, number>>;
  solver: SolverSummary | null;
}

export function buildPlan(p: PlanInput): QuantPlan {
  const gs = p.groupSize;
  const costs = p.costs ?? new Map();
  const weights: PlannedWeight[] = p.targets.map((t) => {
    const bits = p.bits.get(t.group)!;
    return {
      ...t,
      bits,
      bytes: packedMatrixBytes(t.rows, t.cols, bits, gs),
      predicted: p.byTarget?.get(t.name)?.get(bits) ?? null,
    };
  });
  const weightOf = new Map(weights.map((w) => [w.name, w]));
  const tensors: PlannedTensor[] = [];
  const tensorMetadata = new Map<string, Record<string, string>>();
  for (const ref of p.tensors) {
    const w = weightOf.get(ref.name);
    if (w && p.format === 'packed') {
      const parts = packedPlan(ref.name, w.rows, w.cols, w.bits, gs);
      tensors.push(...parts);
      const [k, v] = metadataEntry(ref.name, {
        bits: w.bits,
        group_size: gs,
        shape: [w.rows, w.cols],
        dtype: ref.dtype,
        method: p.method,
      });
      tensorMetadata.set(parts[0].name, { [k]: v });
    } else if (w && p.format === 'gptq') {
      tensors.push(...gptqPlan(ref.name, w.rows, w.cols, w.bits, gs));
      w.bytes = gptqBytes(w.rows, w.cols, w.bits, gs);
    } else if (w && p.format === 'compressed-tensors') {
      const parts = ctParts(ref.name, w.rows, w.cols, w.bits, gs, ref.dtype, !!p.symmetric);
      w.bytes = parts.reduce((s, t) => s + tensorBytes(t), 0);
      tensors.push(...parts);
    } else {
      const t = { name: ref.name, dtype: ref.dtype, shape: ref.shape };
      if (w) w.bytes = tensorBytes(t);
      tensors.push(t);
    }
  }
  const predicted = new Map<string, number>();
  for (const g of p.groups) {
    const c = costs.get(g.key);
    if (c) predicted.set(g.key, c[p.bits.get(g.key)!]);
  }
  return {
    format: p.format,
    symmetric: !!p.symmetric,
    method: p.method,
    groupSize: gs,
    granularity: p.granularity,
    groups: p.groups,
    bits: p.bits,
    costs,
    predicted,
    solver: p.solver,
    weights,
    tensors,
    tensorMetadata,
    ...totals(weights, gs),
    tensorBytes: tensors.reduce((s, t) => s + tensorBytes(t), 0),
  };
}

function totals(
  weights: PlannedWeight[],
  gs: number,
): Pick<QuantPlan, 'quantizedParams' | 'averageBits' | 'storedBitsPerWeight' | 'bitsHistogram' | 'byClass'> {
  const quantizedParams = weights.reduce((s, t) => s + t.rows * t.cols, 0);
  const codeBits = weights.reduce((s, t) => s + t.bits * t.rows * t.cols, 0);
  const storedBits = weights.reduce((s, t) => s + 8 * packedMatrixBytes(t.rows, t.cols, t.bits, gs), 0);
  const bitsHistogram: Record<string, number> = {};
  const byClass: Record<string, { params: number; average_bits: number }> = {};
  for (const t of weights) {
    const n = t.rows * t.cols;
    bitsHistogram[t.bits] = (bitsHistogram[t.bits] ?? 0) + n;
    const c = (byClass[t.cls as TargetClass] ??= { params: 0, average_bits: 0 });
    c.average_bits = (c.average_bits * c.params + t.bits * n) / (c.params + n);
    c.params += n;
  }
  return {
    quantizedParams,
    averageBits: quantizedParams ? codeBits / quantizedParams : 0,
    storedBitsPerWeight: quantizedParams ? storedBits / quantizedParams : 0,
    bitsHistogram,
    byClass,
  };
}
