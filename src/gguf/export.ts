/**
 * `moe quantize --format gguf`: a llama.cpp-ready GGUF file. Norms and routers stay F32; every other weight takes
 * one ggml type: the same everywhere (`--type q8_0`), or chosen per tensor by the bit-allocation LP under an
 * average bits-per-weight budget (`--allocate lp --bpw 4.5 --stats S`), from the imatrix-weighted error of each
 * type measured on the tensor itself. The calibration imatrix also weights the rounding of every type that
 * supports it. Tensors stream one at a time (a stacked expert tensor, expert by expert).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats, fingerprint, inputStatsName } from '../calib/stats';
import { UsageError } from '../errors';
import { openCheckpoint, TensorReader } from '../io/checkpoint';
import { GGUF_WRITER_KEY, WRITER } from '../io/ownership';
import { checkFileDestination, checkNotInput, checkOutputFolder, createEmptyFile, registerPending, unregisterPending, withOutput } from '../io/output';
import { loadArchitecture } from '../model/registry';
import { allocate } from '../quant/allocate';
import { requireFinite } from '../quant/finite';
import type { Context, Task } from '../ui/progress';
import { GgufSource, ggufModel, permuteRows } from './arch';
import { bitsPerWeight, blockSize, dequantizeRows, GGML_TYPE_ID, GgmlType, quantizeRows, rowBytes } from './quants';
import { vocabMetadata } from './vocab';
import { GgufTensorPlan, GgufWriter } from './writer';

export const GGUF_TYPES: GgmlType[] = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'];
export const DEFAULT_GGUF_MENU: GgmlType[] = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_0'];

/** llama.cpp's general.file_type for a file that is mostly one type (LLAMA_FTYPE_*). */
const FILE_TYPE: Partial<Record<GgmlType, number>> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 7, Q2_K: 10, Q3_K: 12, Q4_K: 15, Q5_K: 17, Q6_K: 18, BF16: 32 };

export function parseGgmlType(s: string): GgmlType | undefined {
  const t = s.toUpperCase() as GgmlType;
  return GGUF_TYPES.includes(t) ? t : undefined;
}

export interface GgufOptions {
  model: string;
  output: string;
  type?: GgmlType;
  allocate?: 'uniform' | 'lp';
  bpw?: number;
  menu?: GgmlType[];
  stats?: string;
  alpha?: number;
  beta?: number;
  force?: boolean;
  dryRun?: boolean;
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

export interface GgufReport {
  model: string;
  output: string;
  arch: string;
  allocate: 'uniform' | 'lp';
  type: GgmlType | null;
  bpw_target: number | null;
  /** Mean bits per weight over the tensors that take a quantization type. */
  bpw: number;
  /** Mean bits per weight over every tensor, norms and routers included. */
  bpw_all: number;
  file_bytes: number;
  tensors: GgufTensorReport[];
  fallbacks: number;
  solver: { status: string; method: string; seconds: number; gap: number } | null;
  dry_run: boolean;
  seconds: number;
}

/** A type whose blocks fit rows of `cols` values, falling back as llama-quantize does (to 8-bit, then F16). */
function fitting(t: GgmlType, cols: number): { type: GgmlType; fallback?: string } {
  if (cols % blockSize(t) === 0) return { type: t };
  const next: GgmlType = cols % blockSize('Q8_0') === 0 ? 'Q8_0' : 'F16';
  return { type: next, fallback: `rows of ${cols} are not a multiple of ${t}'s block of ${blockSize(t)}: ${next}` };
}

const rowsOf = (shape: number[]) => shape.slice(0, -1).reduce((a, b) => a * b, 1);

export async function exportGguf(o: GgufOptions, ctx: Context): Promise<GgufReport> {
  const started = Date.now();
  const ckpt = openCheckpoint(o.model);
  checkNotInput(o.output, [{ flag: 'MODEL', path: ckpt.dir }, { flag: '--stats', path: o.stats }]);
  // The destination is checked again when written; here, before the vocabulary and the plan.
  if (!o.dryRun) {
    if (o.output.toLowerCase().endsWith('.gguf')) checkFileDestination(path.resolve(o.output), !!o.force);
    else checkOutputFolder(o.output, o.force);
  }
  const arch = loadArchitecture(ckpt);
  const model = ggufModel(arch, new Map([...ckpt.tensors.values()].map((t) => [t.name, t.shape])));
  const vocab = vocabMetadata(ckpt.dir, arch.modelType, arch.vocab);
  for (const w of model.warnings) ctx.warn(w);
  const mode = o.allocate ?? 'uniform';
  const stats = o.stats ? new CalibrationStats(o.stats) : undefined;
  const reader = new TensorReader(ckpt);
  let task: Task | undefined;
  try {
    stats?.checkModel(ckpt);
    if (mode === 'lp' && !stats) throw new UsageError('--format gguf --allocate lp needs --stats (the imatrix that measures each type\'s error)', { hint: 'make them with moe calibrate MODEL --data FILE -o STATS' });
    if (mode === 'lp' && !(o.bpw && o.bpw > 0)) throw new UsageError('--format gguf --allocate lp needs --bpw B, the average bits per weight', { hint: 'e.g. --bpw 4.5' });
    const menu = o.menu ?? DEFAULT_GGUF_MENU;
    const weights = model.tensors.filter((t) => t.kind === 'weight');
    // Work in weights: measuring quantizes each weight at every type of the menu, writing each tensor once more.
    const paramsOf = (t: { shape: number[] }) => t.shape.reduce((a, b) => a * b, 1);
    const allParams = model.tensors.reduce((s, t) => s + paramsOf(t), 0);
    const measureWeight = mode === 'lp' ? weights.reduce((s, t) => s + paramsOf(t), 0) * menu.length : 0;
    task = ctx.task(`quantize ${path.basename(ckpt.dir)} to GGUF`, measureWeight + (o.dryRun ? 0 : allParams));
    /** The imatrix of a weight's input as the mean of x² per column (per calibration row that reached it). */
    const importanceOf = (hf: string): Float64Array | undefined => {
      const src = inputStatsName(hf);
      if (!stats?.has(`imatrix/${src}`)) return undefined;
      const rows = stats.f64(`rows/${src}`)[0];
      return stats.f64(`imatrix/${src}`).map((v) => (rows > 0 ? v / rows : 0));
    };
    const tokens = stats?.json.data.tokens ?? 1;
    const expertWeight = (t: GgufSource, e: number): number => {
      if (!stats || t.from.length === 1 || t.layer === undefined) return 1;
      const f = stats.vector(t.layer, 'count')[e] / tokens;
      const w = stats.vector(t.layer, 'weight_sum')[e] / tokens;
      return Math.pow(f, o.alpha ?? 1) * Math.pow(w, o.beta ?? 1.5);
    };
    const loadPart = (t: GgufSource, i: number): Float32Array => {
      const w = reader.f32(t.from[i]);
      requireFinite(w, t.from[i], ckpt.dir);
      if (t.splitKvB) {
        // kv_b_proj [heads·(nope + v), kv_lora] → k_b [heads, kv_lora, nope] (transposed per head) or v_b [heads, v, kv_lora].
        const { part, heads, nope, v } = t.splitKvB;
        const kvl = ckpt.tensors.get(t.from[i])!.shape[1];
        const out = new Float32Array(heads * (part === 'k' ? kvl * nope : v * kvl));
        for (let h = 0; h < heads; h++) {
          const base = h * (nope + v);
          if (part === 'k') for (let c = 0; c < kvl; c++) for (let n = 0; n < nope; n++) out[(h * kvl + c) * nope + n] = w[(base + n) * kvl + c];
          else out.set(w.subarray((base + nope) * kvl, (base + nope + v) * kvl), h * v * kvl);
        }
        return out;
      }
      if (!t.permuteHeads) return w;
      const [rows, cols] = ckpt.tensors.get(t.from[i])!.shape;
      return permuteRows(w, rows, cols, t.permuteHeads);
    };
    /** Importance-weighted squared error of a tensor at a type: Σ over parts of weight · Σ imatrix[c]·Δ². */
    const errorAt = (t: GgufSource, type: GgmlType): number => {
      let total = 0;
      const cols = t.shape[t.shape.length - 1];
      for (let i = 0; i < t.from.length; i++) {
        const w = loadPart(t, i);
        const rows = w.length / cols;
        const imp = importanceOf(t.from[i]);
        const d = dequantizeRows(quantizeRows(w, rows, cols, type, imp), rows, cols, type);
        let s = 0;
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) s += (imp ? imp[c] : 1) * (w[r * cols + c] - d[r * cols + c]) ** 2;
        total += expertWeight(t, i) * s;
      }
      return total;
    };

    // Types: uniform, or per tensor by the LP over the menu.
    const typeOf = new Map<string, GgmlType>();
    const costs = new Map<string, number>();
    let solver: GgufReport['solver'] = null;
    if (mode === 'uniform') {
      const t = o.type ?? 'Q8_0';
      for (const w of weights) typeOf.set(w.name, t);
    } else {
      // The LP chooses for every weight whose error it can measure from the imatrix; the embeddings and the
      // output head (no imatrix: a lookup, and a product moe calibrate does not record) take llama-quantize's
      // Q4_K_M choices, Q4_K and Q6_K, and their bits count against the budget.
      const FIXED: Record<string, GgmlType> = { embed: 'Q4_K', output: 'Q6_K' };
      const free = weights.filter((t) => !FIXED[t.proj ?? '']);
      let fixedBits = 0;
      for (const t of weights) {
        const f = FIXED[t.proj ?? ''];
        if (!f) continue;
        const type = fitting(f, t.shape[t.shape.length - 1]).type;
        typeOf.set(t.name, type);
        fixedBits += bitsPerWeight(type) * rowsOf(t.shape) * t.shape[t.shape.length - 1];
      }
      const bar = ctx.progress(`measure error of ${menu.join('/')}`, free.length, 'tensors', measureWeight);
      const groups = free.map((t) => {
        const cols = t.shape[t.shape.length - 1];
        const cost = menu.map((type) => (cols % blockSize(type) === 0 ? errorAt(t, type) : Infinity));
        bar.tick();
        const params = rowsOf(t.shape) * cols;
        return { params, cost: cost.map((c) => (Number.isFinite(c) ? c : 0)), allowed: cost.map((c) => Number.isFinite(c)) };
      });
      bar.done();
      const total = weights.reduce((s, t) => s + rowsOf(t.shape) * t.shape[t.shape.length - 1], 0);
      // Bits per weight of a type, blocks' scales included, as the budget counts what the file holds.
      const r = await allocate({ choices: menu.map((t) => bitsPerWeight(t)), groups, budgetBits: o.bpw! * total - fixedBits });
      if (r.status === 'infeasible') throw new UsageError(`--bpw ${o.bpw} is below what the type menu allows (${menu.join(', ')}) with the embeddings at Q4_K and the output at Q6_K`, { hint: 'raise --bpw or add smaller types' });
      free.forEach((t, i) => {
        typeOf.set(t.name, menu[r.choice[i]]);
        costs.set(t.name, groups[i].cost[r.choice[i]]);
      });
      solver = { status: r.status, method: r.method, seconds: r.seconds, gap: r.gap };
    }

    // The plan: every tensor with its final type and size.
    const reports: GgufTensorReport[] = [];
    const plan: GgufTensorPlan[] = model.tensors.map((t) => {
      const cols = t.shape[t.shape.length - 1];
      let type: GgmlType = t.kind === 'weight' ? typeOf.get(t.name)! : 'F32';
      let fallback: string | undefined;
      if (t.kind === 'weight') ({ type, fallback } = fitting(type, cols));
      const bytes = rowsOf(t.shape) * rowBytes(type, cols);
      reports.push({ name: t.name, type, params: rowsOf(t.shape) * cols, bytes, fallback, cost: costs.get(t.name) });
      return { name: t.name, shape: t.shape, type: GGML_TYPE_ID[type], bytes };
    });
    const counts = new Map<GgmlType, number>();
    for (const r of reports) if (weights.some((w) => w.name === r.name)) counts.set(r.type, (counts.get(r.type) ?? 0) + r.params);
    const main = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';
    const metadata = [...model.metadata, ['general.name', { type: 'string', value: path.basename(ckpt.dir) }] as const, ['general.file_type', { type: 'u32', value: FILE_TYPE[main] ?? 7 }] as const, [GGUF_WRITER_KEY, { type: 'string', value: WRITER }] as const, ...vocab] as ConstructorParameters<typeof GgufWriter>[1];
    const weightReports = reports.filter((r) => typeOf.has(r.name));
    const report: GgufReport = {
      model: ckpt.dir,
      output: '',
      arch: model.arch,
      allocate: mode,
      type: mode === 'uniform' ? (o.type ?? 'Q8_0') : null,
      bpw_target: mode === 'lp' ? o.bpw! : null,
      bpw: (8 * weightReports.reduce((s, r) => s + r.bytes, 0)) / weightReports.reduce((s, r) => s + r.params, 0),
      bpw_all: (8 * reports.reduce((s, r) => s + r.bytes, 0)) / reports.reduce((s, r) => s + r.params, 0),
      file_bytes: 0,
      tensors: reports,
      fallbacks: reports.filter((r) => r.fallback).length,
      solver,
      dry_run: !!o.dryRun,
      seconds: 0,
    };
    const dest = destination(o.output, ckpt.dir, report.type ?? `lp-${o.bpw}`, !!o.force);
    report.output = path.join(dest.dir, dest.file);
    const record = () => ({ tool: 'moe', operation: 'quantize --format gguf', source: { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: o.stats ? path.resolve(o.stats) : null }, ...report });
    const writeTo = (target: string) => {
      const writer = new GgufWriter(target, metadata, plan);
      const bar = ctx.progress('write gguf', plan.reduce((s, t) => s + t.bytes, 0), 'bytes', allParams);
      try {
        model.tensors.forEach((t, i) => {
          const type = reports[i].type;
          const cols = t.shape[t.shape.length - 1];
          const parts: Uint8Array[] = [];
          for (let j = 0; j < t.from.length; j++) {
            const w = loadPart(t, j);
            parts.push(type === 'F32' ? new Uint8Array(w.buffer, w.byteOffset, w.byteLength) : quantizeRows(w, w.length / cols, cols, type, importanceOf(t.from[j])));
          }
          writer.write(t.name, parts.length === 1 ? parts[0] : Buffer.concat(parts));
          bar.tick(plan[i].bytes);
        });
        writer.finish();
      } catch (e) {
        writer.abort();
        throw e;
      }
      bar.done();
      report.file_bytes = fs.statSync(target).size;
    };
    if (o.dryRun) report.file_bytes = writerSize(metadata, plan);
    else if (dest.folder) {
      // A folder of its own: written beside, renamed into place, with the record.
      await withOutput(dest.dir, { force: o.force, command: 'quantize --format gguf' }, async (out) => {
        writeTo(path.join(out.tmp, dest.file));
        out.writeRecord('moe-gguf.json', record());
      });
    } else {
      // One file in an existing folder: a temporary file beside it, renamed into place when complete.
      const tmp = `${report.output}.tmp-${process.pid}`;
      registerPending(tmp);
      try {
        createEmptyFile(tmp);
        writeTo(tmp);
        fs.renameSync(tmp, report.output);
      } finally {
        fs.rmSync(tmp, { force: true });
        unregisterPending(tmp);
      }
    }
    report.seconds = (Date.now() - started) / 1000;
    return report;
  } finally {
    task?.done();
    reader.close();
    stats?.close();
  }
}

function writerSize(_metadata: unknown, plan: GgufTensorPlan[]): number {
  return plan.reduce((s, t) => s + Math.ceil(t.bytes / 32) * 32, 0);
}

/**
 * OUT is a folder (created, the file named after the model inside) or a path ending in .gguf (one file in an
 * existing folder). An existing destination is refused unless --force.
 */
function destination(output: string, modelDir: string, label: string, force: boolean): { dir: string; file: string; folder: boolean } {
  if (output.toLowerCase().endsWith('.gguf')) {
    const file = path.resolve(output);
    const dir = path.dirname(file);
    if (!fs.existsSync(dir)) throw new UsageError('the folder of the .gguf output does not exist', { file: dir, hint: 'create it first, or give a folder as -o' });
    if (!fs.statSync(dir).isDirectory()) throw new UsageError('the folder of the .gguf output is not a folder', { file: dir, hint: 'choose a destination inside a folder' });
    checkFileDestination(file, force);
    return { dir, file: path.basename(file), folder: false };
  }
  return { dir: path.resolve(output), file: `${path.basename(modelDir)}-${label}.gguf`.replace(/[^A-Za-z0-9._-]/g, '_'), folder: true };
}

export function formatGguf(r: GgufReport): string {
  const byType = new Map<string, number>();
  for (const t of r.tensors) byType.set(t.type, (byType.get(t.type) ?? 0) + t.params);
  const total = r.tensors.reduce((s, t) => s + t.params, 0);
  const lines = [
    `${r.dry_run ? 'dry run: would write' : 'wrote'} ${r.output}: ${r.arch}, ${r.allocate === 'lp' ? `types by LP at ${r.bpw_target} bpw` : r.type}, ${r.bpw.toFixed(3)} bits per quantized weight (${r.bpw_all.toFixed(3)} overall), ${(r.file_bytes / 1e6).toFixed(2)} MB`,
    `  types: ${[...byType].map(([t, n]) => `${t} ${((100 * n) / total).toFixed(1)}%`).join(', ')}`,
  ];
  if (r.solver) lines.push(`  solver: ${r.solver.status} (${r.solver.method}, gap ${(100 * r.solver.gap).toFixed(4)}%, ${r.solver.seconds.toFixed(2)} s)`);
  for (const t of r.tensors) if (t.fallback) lines.push(`  ${t.name}: ${t.fallback}`);
  return lines.join('\n');
}
