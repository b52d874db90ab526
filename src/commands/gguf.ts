/**
 * `moe quantize --format gguf`: a llama.cpp-ready GGUF file. Norms and routers stay F32; every other weight takes
 * one ggml type: the same everywhere (`--type q8_0`), or chosen per tensor by the bit-allocation LP under an
 * average bits-per-weight budget (`--allocate lp --bpw 4.5 --stats S`), from the imatrix-weighted error of each
 * type measured on the tensor itself. The calibration imatrix also weights the rounding of every type that
 * supports it. Weights stored as MXFP4 (gpt-oss's experts) stay MXFP4: their blocks and scales are repacked into
 * ggml's MXFP4 bit-exactly (src/gguf/stored.ts), whatever --type says; the LP's budget counts them at MXFP4's bits.
 * Tensors stream one at a time (a stacked expert tensor, expert by expert).
 * This file checks options and the destination and orchestrates; the plan is src/gguf/plan.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats, fingerprint } from '../calib/stats';
import { UsageError } from '../errors';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import { GGUF_WRITER_KEY, WRITER } from '../io/ownership';
import {
  checkFileDestination,
  checkNotInput,
  checkOutputFolder,
  createEmptyFile,
  registerPending,
  unregisterPending,
  withOutput,
} from '../io/output';
import { loadArchitecture } from '../model/registry';
import { Weighting } from '../quant/weighting';
import type { Context, Task } from '../ui/progress';
import { GgufModel, ggufModel } from '../gguf/arch';
import { loadPart } from '../gguf/load';
import {
  buildGgufPlan,
  chooseTypes,
  encodeTensor,
  GgufPlan,
  GgufTensorReport,
  PartLoader,
  typeErrors,
} from '../gguf/plan';
import { DEFAULT_GGUF_MENU, GgmlType } from '../gguf/quants';
import { isStoredMxfp4, repackStoredMxfp4 } from '../gguf/stored';
import { vocabMetadata } from '../gguf/vocab';
import { TypeErrorPool } from '../gguf/error-pool';
import { defaultThreads } from '../backend/threads';
import { chatTemplateOf } from '../eval/chat';
import { GgufTensorPlan, GgufWriter } from '../gguf/writer';

export { DEFAULT_GGUF_MENU, GGUF_TYPES, parseGgmlType } from '../gguf/quants';
export type { GgufTensorReport } from '../gguf/plan';

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
  /** Threads measuring the LP's errors (default: $MOE_THREADS, else every core); the result does not depend on it. */
  threads?: number;
}

export interface GgufReport {
  model: string;
  output: string;
  arch: string;
  allocate: 'uniform' | 'lp';
  /** One type per GGUF tensor: each layer's routed experts per projection (ffn_{gate,up,down}_exps). */
  granularity: 'layer-projection';
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

const paramsOf = (t: { shape: number[] }) => t.shape.reduce((a, b) => a * b, 1);

/** What --allocate lp needs besides the menu: the stats (the imatrix) and a positive --bpw. */
function checkLpOptions(o: GgufOptions, mode: 'uniform' | 'lp', stats: CalibrationStats | undefined): void {
  if (mode === 'lp' && !stats)
    throw new UsageError("--format gguf --allocate lp needs --stats (the imatrix that measures each type's error)", {
      hint: 'make them with moe calibrate MODEL --data FILE -o STATS',
    });
  if (mode === 'lp' && !(o.bpw && o.bpw > 0))
    throw new UsageError('--format gguf --allocate lp needs --bpw B, the average bits per weight', {
      hint: 'e.g. --bpw 4.5',
    });
}

/** The modules beside a nested language model: under model. (Qwen3.5's visual) or at the top (Llama 4's). */
function towerModules(ckpt: Checkpoint): string[] {
  const beside = ckpt.nesting!.beside;
  const parts = [...ckpt.tensors.keys()].map((n) => n.split('.'));
  const tower = parts.filter((p) => (p[0] === 'model' ? beside.has(p[1]) : p[0] !== 'lm_head'));
  return [...new Set(tower.map((p) => (p[0] === 'model' ? `model.${p[1]}.*` : `${p[0]}.*`)))];
}

/** --allocate lp: every weight's error measured at each type of the menu, then the type of each by the LP. */
async function lpTypes(
  weights: GgufModel['tensors'],
  menu: GgmlType[],
  bpw: number,
  x: {
    ctx: Context;
    weighting: Weighting;
    load: PartLoader;
    measureWeight: number;
    stored: Set<string>;
    threads?: number;
  },
): Promise<{ types: Map<string, GgmlType>; costs: Map<string, number>; solver: GgufReport['solver'] }> {
  const bar = x.ctx.progress(
    `measure error of ${menu.join('/')}`,
    weights.filter((t) => t.proj !== 'embed' && t.proj !== 'output' && !x.stored.has(t.name)).length,
    'tensors',
    x.measureWeight,
  );
  const stored = new Map([...x.stored].map((n) => [n, 'MXFP4' as GgmlType]));
  const pool = new TypeErrorPool(x.threads ?? defaultThreads());
  const measure = async (t: GgufModel['tensors'][number]) => {
    const errors = await typeErrors(t, menu, x.load, x.weighting, pool);
    bar.tick();
    return errors;
  };
  let chosen: Awaited<ReturnType<typeof chooseTypes>>;
  try {
    chosen = await chooseTypes(weights, menu, bpw, measure, stored);
  } finally {
    await pool.close();
  }
  bar.done();
  if (!chosen.ok)
    throw new UsageError(
      `--bpw ${bpw} is below what the type menu allows (${menu.join(', ')}) with the embeddings at Q4_K and the output at Q6_K`,
      { hint: 'raise --bpw or add smaller types' },
    );
  const solver = chosen.solver
    ? {
        status: chosen.solver.status,
        method: chosen.solver.method,
        seconds: chosen.solver.seconds,
        gap: chosen.solver.gap,
      }
    : null;
  return { types: chosen.types, costs: chosen.costs, solver };
}

export async function exportGguf(o: GgufOptions, ctx: Context): Promise<GgufReport> {
  const started = Date.now();
  const ckpt = openCheckpoint(o.model);
  checkNotInput(o.output, [
    { flag: 'MODEL', path: ckpt.dir },
    { flag: '--stats', path: o.stats },
  ]);
  // The destination is checked again when written; here, before the vocabulary and the plan (a dry run refuses an
  // existing destination too, so it says so before the LP's long cost measurement, not after).
  if (o.output.toLowerCase().endsWith('.gguf')) checkFileDestination(path.resolve(o.output), !!o.force);
  else checkOutputFolder(o.output, o.force);
  const arch = loadArchitecture(ckpt);
  const model = ggufModel(arch, new Map([...ckpt.tensors.values()].map((t) => [t.name, t.shape])));
  const vocab = vocabMetadata(ckpt.dir, arch.modelType, arch.vocab);
  // The chat template as llama.cpp's converter stores it (llama.cpp and `moe generate FILE.gguf --chat` use it).
  const chatTemplate = chatTemplateOf(ckpt.dir);
  if (chatTemplate !== undefined) vocab.push(['tokenizer.chat_template', { type: 'string', value: chatTemplate }]);
  for (const w of model.warnings) ctx.warn(w);
  if (ckpt.nesting)
    ctx.warn(
      `the vision tower (${towerModules(ckpt).join(', ')}) is not written: ` +
        'the GGUF file holds the text model (llama.cpp reads a vision tower from a separate mmproj file)',
    );
  const mode = o.allocate ?? 'uniform';
  const stats = o.stats ? new CalibrationStats(o.stats) : undefined;
  const reader = new TensorReader(ckpt);
  let task: Task | undefined;
  try {
    stats?.checkModel(ckpt);
    checkLpOptions(o, mode, stats);
    const menu = o.menu ?? DEFAULT_GGUF_MENU;
    // Weights stored as MXFP4 (gpt-oss's experts) stay MXFP4, repacked bit-exactly; the others take the type(s).
    const stored = new Set(model.tensors.filter((t) => isStoredMxfp4(ckpt, t)).map((t) => t.name));
    const weights = model.tensors.filter((t) => t.kind === 'weight');
    // Work in weights: measuring quantizes each weight at every type of the menu, writing each tensor once more.
    const allParams = model.tensors.reduce((s, t) => s + paramsOf(t), 0);
    const measured = weights.filter((t) => !stored.has(t.name));
    const measureWeight = mode === 'lp' ? measured.reduce((s, t) => s + paramsOf(t), 0) * menu.length : 0;
    task = ctx.task(`quantize ${path.basename(ckpt.dir)} to GGUF`, measureWeight + (o.dryRun ? 0 : allParams));
    const weighting = new Weighting(stats, o.alpha ?? 1, o.beta ?? 1.5);
    const load: PartLoader = (t, i) => loadPart(ckpt, reader, t, i);

    // Types: uniform, or per tensor by the LP over the menu.
    const { types, costs, solver } =
      mode === 'lp'
        ? await lpTypes(weights, menu, o.bpw!, { ctx, weighting, load, measureWeight, stored, threads: o.threads })
        : {
            types: new Map(weights.map((w) => [w.name, o.type ?? 'Q8_0'])),
            costs: new Map<string, number>(),
            solver: null,
          };
    for (const name of stored) types.set(name, 'MXFP4');
    const plan = buildGgufPlan(model, types, costs);
    const report: GgufReport = {
      model: ckpt.dir,
      output: '',
      arch: model.arch,
      allocate: mode,
      granularity: 'layer-projection',
      type: mode === 'uniform' ? (o.type ?? 'Q8_0') : null,
      bpw_target: mode === 'lp' ? o.bpw! : null,
      bpw: plan.bpw,
      bpw_all: plan.bpwAll,
      file_bytes: 0,
      tensors: plan.tensors,
      fallbacks: plan.tensors.filter((r) => r.fallback).length,
      solver,
      dry_run: !!o.dryRun,
      seconds: 0,
    };
    const dest = destination(o.output, ckpt.dir, report.type ?? `lp-${o.bpw}`, !!o.force);
    report.output = path.join(dest.dir, dest.file);
    const metadata = fileMetadata(model, plan, ckpt, vocab);
    const writeTo = (target: string) => {
      const encode = (t: GgufModel['tensors'][number], type: GgmlType) =>
        stored.has(t.name) ? repackStoredMxfp4(ckpt, reader, t) : encodeTensor(t, type, load, weighting);
      writeFile(target, metadata, model, plan, { ctx, encode, allParams });
      report.file_bytes = fs.statSync(target).size;
    };
    if (o.dryRun) report.file_bytes = writerSize(plan.layout);
    else if (dest.folder) {
      // A folder of its own: written beside, renamed into place, with the record.
      const record = () => ({
        tool: 'moe',
        operation: 'quantize --format gguf',
        source: { model: ckpt.dir, fingerprint: fingerprint(ckpt), stats: o.stats ? path.resolve(o.stats) : null },
        ...report,
      });
      await withOutput(dest.dir, { force: o.force, command: 'quantize --format gguf' }, async (out) => {
        writeTo(path.join(out.tmp, dest.file));
        out.writeRecord('moe-gguf.json', record());
      });
    } else writeBeside(report.output, writeTo);
    report.seconds = (Date.now() - started) / 1000;
    return report;
  } finally {
    task?.done();
    reader.close();
    stats?.close();
  }
}

type Metadata = ConstructorParameters<typeof GgufWriter>[1];

function fileMetadata(model: GgufModel, plan: GgufPlan, ckpt: Checkpoint, vocab: Metadata): Metadata {
  return [
    ...model.metadata,
    ['general.name', { type: 'string', value: path.basename(ckpt.dir) }] as const,
    ['general.file_type', { type: 'u32', value: plan.fileType }] as const,
    [GGUF_WRITER_KEY, { type: 'string', value: WRITER }] as const,
    ...vocab,
  ] as Metadata;
}

/** Every tensor of the plan into a GGUF file at `target` (removed by the writer if anything fails). */
function writeFile(
  target: string,
  metadata: Metadata,
  model: GgufModel,
  plan: GgufPlan,
  x: { ctx: Context; encode: (t: GgufModel['tensors'][number], type: GgmlType) => Uint8Array; allParams: number },
): void {
  const writer = new GgufWriter(target, metadata, plan.layout);
  const bar = x.ctx.progress(
    'write gguf',
    plan.layout.reduce((s, t) => s + t.bytes, 0),
    'bytes',
    x.allParams,
  );
  try {
    model.tensors.forEach((t, i) => {
      writer.write(t.name, x.encode(t, plan.tensors[i].type));
      bar.tick(plan.layout[i].bytes);
    });
    writer.finish();
  } catch (e) {
    writer.abort();
    throw e;
  }
  bar.done();
}

/** One file in an existing folder: a temporary file beside it, renamed into place when complete. */
function writeBeside(output: string, writeTo: (target: string) => void): void {
  const tmp = `${output}.tmp-${process.pid}`;
  registerPending(tmp);
  try {
    createEmptyFile(tmp);
    writeTo(tmp);
    fs.renameSync(tmp, output);
  } finally {
    fs.rmSync(tmp, { force: true });
    unregisterPending(tmp);
  }
}

function writerSize(plan: GgufTensorPlan[]): number {
  return plan.reduce((s, t) => s + Math.ceil(t.bytes / 32) * 32, 0);
}

/**
 * OUT is a folder (created, the file named after the model inside) or a path ending in .gguf (one file in an
 * existing folder). An existing destination is refused unless --force.
 */
function destination(
  output: string,
  modelDir: string,
  label: string,
  force: boolean,
): { dir: string; file: string; folder: boolean } {
  if (output.toLowerCase().endsWith('.gguf')) {
    const file = path.resolve(output);
    const dir = path.dirname(file);
    if (!fs.existsSync(dir))
      throw new UsageError('the folder of the .gguf output does not exist', {
        file: dir,
        hint: 'create it first, or give a folder as -o',
      });
    if (!fs.statSync(dir).isDirectory())
      throw new UsageError('the folder of the .gguf output is not a folder', {
        file: dir,
        hint: 'choose a destination inside a folder',
      });
    checkFileDestination(file, force);
    return { dir, file: path.basename(file), folder: false };
  }
  return {
    dir: path.resolve(output),
    file: `${path.basename(modelDir)}-${label}.gguf`.replace(/[^A-Za-z0-9._-]/g, '_'),
    folder: true,
  };
}

export function formatGguf(r: GgufReport): string {
  const byType = new Map<string, number>();
  for (const t of r.tensors) byType.set(t.type, (byType.get(t.type) ?? 0) + t.params);
  const total = r.tensors.reduce((s, t) => s + t.params, 0);
  const lines = [
    `${r.dry_run ? 'dry run: would write' : 'wrote'} ${r.output}: ${r.arch}, ${r.allocate === 'lp' ? `types by LP at ${r.bpw_target} bpw (one per tensor: layer-projection groups)` : r.type}, ${r.bpw.toFixed(3)} bits per quantized weight (${r.bpw_all.toFixed(3)} overall), ${(r.file_bytes / 1e6).toFixed(2)} MB`,
    `  types: ${[...byType].map(([t, n]) => `${t} ${((100 * n) / total).toFixed(1)}%`).join(', ')}`,
  ];
  if (r.solver)
    lines.push(
      `  solver: ${r.solver.status} (${r.solver.method}, gap ${(100 * r.solver.gap).toFixed(4)}%, ${r.solver.seconds.toFixed(2)} s)`,
    );
  for (const t of r.tensors) if (t.fallback) lines.push(`  ${t.name}: ${t.fallback}`);
  return lines.join('\n');
}
