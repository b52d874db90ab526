/**
 * The GGUF side of plan then execute: each weight's ggml type (one for all, or chosen per tensor by the same
 * allocation as moe quantize, src/quant/assign.ts, from each type's importance-weighted error measured on the
 * tensor), then the plan every tensor is written by: its type, bytes, predicted error and fallback.
 * Norms and routers stay F32.
 */
import { assignBits, BitGroup, SolverSummary } from '../quant/assign';
import type { Weighting } from '../quant/weighting';
import type { GgufModel, GgufSource } from './arch';
import type { TypeErrorPool } from './error-pool';
import { bitsPerWeight, blockSize, fileType, GGML_TYPE_ID, GgmlType, quantizeRows, rowBytes } from './quants';
import type { GgufTensorPlan } from './writer';

/**
 * Under the LP, the embeddings and the output head (no imatrix: a lookup, and a product moe calibrate does not
 * record) take llama-quantize's Q4_K_M choices, Q4_K and Q6_K, and their bits count against the budget.
 */
const FIXED: Record<string, GgmlType> = { embed: 'Q4_K', output: 'Q6_K' };

export const rowsOf = (shape: number[]) => shape.slice(0, -1).reduce((a, b) => a * b, 1);
const colsOf = (shape: number[]) => shape[shape.length - 1];

/** The imatrix of part `i` of `t`, its columns in the GGUF tensor's order. */
function importance(t: GgufSource, i: number, weighting: Weighting): Float64Array | undefined {
  const imp = weighting.importance(t.from[i]);
  const cols = t.transform?.cols;
  return imp && cols ? Float64Array.from(cols, (c) => imp[c]) : imp;
}

/** A part of a tensor in llama.cpp's layout (src/gguf/load.ts). */
export type PartLoader = (t: GgufSource, i: number) => Float32Array;

/** A type whose blocks fit rows of `cols` values, falling back as llama-quantize does (to 8-bit, then F16). */
export function fitting(t: GgmlType, cols: number): { type: GgmlType; fallback?: string } {
  if (cols % blockSize(t) === 0) return { type: t };
  const next: GgmlType = cols % blockSize('Q8_0') === 0 ? 'Q8_0' : 'F16';
  return { type: next, fallback: `rows of ${cols} are not a multiple of ${t}'s block of ${blockSize(t)}: ${next}` };
}

/**
 * Importance-weighted squared error of a tensor at each type of the menu (Infinity where its blocks do not fit):
 * Σ over parts of f^α·w^β · Σ imatrix[c]·Δ² (src/gguf/type-error.ts), the types of a part measured on the pool's
 * threads. One part in memory at a time.
 */
export async function typeErrors(
  t: GgufSource,
  menu: GgmlType[],
  load: PartLoader,
  weighting: Weighting,
  pool: TypeErrorPool,
): Promise<number[]> {
  const cols = colsOf(t.shape);
  const total = menu.map((type) => (cols % blockSize(type) === 0 ? 0 : Infinity));
  const types = menu.map((type, k) => (Number.isFinite(total[k]) ? type : null));
  // Parts in flight: a few at a time, so every thread has work (a part's types take unequal times), and the sums
  // are added in part order afterwards (the same sum on any number of threads).
  const parts: Promise<number[]>[] = [];
  for (let i = 0; i < t.from.length; i++) {
    const w = load(t, i);
    const factor = weighting.factor(t.layer, t.from.length === 1 ? undefined : i);
    parts.push(
      pool.errors(w, w.length / cols, cols, types, importance(t, i, weighting)).then((e) => e.map((s) => factor * s)),
    );
    if (i >= pool.width) await parts[i - pool.width];
  }
  for (const p of parts) (await p).forEach((s, k) => (total[k] += s));
  return total;
}

export type TypeChoice =
  { ok: true; types: Map<string, GgmlType>; costs: Map<string, number>; solver: SolverSummary | null } | { ok: false };

/**
 * Every weight's type under the LP: the menu's error table, a budget of `bpw` bits per weight over all weights.
 * `stored`: weights whose type is given (MXFP4 experts kept as stored), counted in the budget at that type.
 */
export async function chooseTypes(
  weights: GgufSource[],
  menu: GgmlType[],
  bpw: number,
  measure: (t: GgufSource) => number[] | Promise<number[]>,
  stored: Map<string, GgmlType> = new Map(),
): Promise<TypeChoice> {
  const groups: BitGroup[] = weights.map((t) => {
    const params = rowsOf(t.shape) * colsOf(t.shape);
    const given = stored.get(t.name);
    if (given) return { key: t.name, params, scope: 0, fixed: bitsPerWeight(given) };
    const fixed = FIXED[t.proj ?? ''];
    if (fixed) return { key: t.name, params, scope: 0, fixed: bitsPerWeight(fitting(fixed, colsOf(t.shape)).type) };
    return { key: t.name, params, scope: 0 };
  });
  for (const g of groups)
    if (g.fixed === undefined)
      g.cost = (await measure(weights.find((t) => t.name === g.key)!)).map((c) => (Number.isFinite(c) ? c : undefined));
  // Bits per weight of a type, blocks' scales included, as the budget counts what the file holds.
  const r = await assignBits(
    menu.map((t) => bitsPerWeight(t)),
    groups,
    bpw,
    false,
  );
  if (!r.ok) return { ok: false };
  const types = new Map<string, GgmlType>();
  const costs = new Map<string, number>();
  weights.forEach((t, i) => {
    const g = groups[i];
    if (stored.has(t.name)) return types.set(t.name, stored.get(t.name)!);
    if (g.fixed !== undefined) return types.set(t.name, fitting(FIXED[t.proj!], colsOf(t.shape)).type);
    const c = r.choice.get(t.name)!;
    types.set(t.name, menu[c]);
    costs.set(t.name, g.cost![c]!);
  });
  return { ok: true, types, costs, solver: r.solver };
}

export interface GgufTensorReport {
  name: string;
  type: GgmlType;
  params: number;
  bytes: number;
  /** Why the type differs from the one asked for (rows that do not fit its blocks). */
  fallback?: string;
  /** Importance-weighted squared error at this type (with --stats). */
  cost?: number;
}

export interface GgufPlan {
  /** Every tensor in file order, with its final type. */
  tensors: GgufTensorReport[];
  /** What the writer lays out. */
  layout: GgufTensorPlan[];
  /** llama.cpp's general.file_type: the type of most weights. */
  fileType: number;
  /** Mean bits per weight over the weights that take a quantization type, and over every tensor. */
  bpw: number;
  bpwAll: number;
}

export function buildGgufPlan(model: GgufModel, types: Map<string, GgmlType>, costs: Map<string, number>): GgufPlan {
  const tensors: GgufTensorReport[] = [];
  const layout: GgufTensorPlan[] = model.tensors.map((t) => {
    const cols = colsOf(t.shape);
    let type: GgmlType = t.kind === 'weight' ? types.get(t.name)! : 'F32';
    let fallback: string | undefined;
    if (t.kind === 'weight') ({ type, fallback } = fitting(type, cols));
    const bytes = rowsOf(t.shape) * rowBytes(type, cols);
    tensors.push({ name: t.name, type, params: rowsOf(t.shape) * cols, bytes, fallback, cost: costs.get(t.name) });
    return { name: t.name, shape: t.shape, type: GGML_TYPE_ID[type], bytes };
  });
  const weights = tensors.filter((r) => types.has(r.name));
  const counts = new Map<GgmlType, number>();
  for (const r of weights) counts.set(r.type, (counts.get(r.type) ?? 0) + r.params);
  const main = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';
  const bits = (rs: GgufTensorReport[]) =>
    (8 * rs.reduce((s, r) => s + r.bytes, 0)) / rs.reduce((s, r) => s + r.params, 0);
  return { tensors, layout, fileType: fileType(main) ?? 7, bpw: bits(weights), bpwAll: bits(tensors) };
}

/** A tensor's bytes at its type: its parts encoded one at a time (F32 as stored), importance-weighted. */
export function encodeTensor(t: GgufSource, type: GgmlType, load: PartLoader, weighting: Weighting): Uint8Array {
  const cols = colsOf(t.shape);
  const parts: Uint8Array[] = [];
  for (let j = 0; j < (t.values ? 1 : t.from.length); j++) {
    const w = load(t, j);
    parts.push(
      type === 'F32'
        ? new Uint8Array(w.buffer, w.byteOffset, w.byteLength)
        : quantizeRows(w, w.length / cols, cols, type, importance(t, j, weighting)),
    );
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}
