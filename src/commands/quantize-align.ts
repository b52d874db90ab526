/**
 * `moe quantize --align-router`: after the quantized checkpoint is written to its temporary folder, every MoE
 * layer's router (kept unquantized, as --keep-router-fp keeps it) is refitted to the original's routing on the
 * calibration tokens of --stats (src/quant/router-align.ts) and written over the router's bytes in place: same
 * name, dtype and shape, so the checkpoint's size and layout do not change.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import type { Backend } from '../backend/backend';
import type { CalibrationStats } from '../calib/stats';
import { CheckpointError, InternalError } from '../errors';
import { loadWindows, sampleWindows } from '../eval/data';
import { loadTokenizer } from '../eval/tokenizer';
import { fromFloat32 } from '../io/dtype';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import { alignRouters, LayerAlignment } from '../quant/router-align';
import type { Context } from '../ui/progress';

export interface RouterAlignmentReport {
  /** Calibration tokens the routers were fitted on (and agreement measured on). */
  tokens: number;
  /** Routing agreement with the original (top-k set overlap), mean over MoE layers, before and after the fit. */
  before: number;
  after: number;
  layers: LayerAlignment[];
}

/** The calibration windows the stats were made from, re-read from their text (refused if the text changed). */
export function calibrationWindows(
  stats: CalibrationStats,
  ckpt: Checkpoint,
  vocab: number,
  flag = '--align-router',
): Int32Array[] {
  const d = stats.json.data;
  const problem = !fs.existsSync(d.file)
    ? 'is gone'
    : createHash('sha256').update(fs.readFileSync(d.file)).digest('hex') !== d.sha256
      ? 'has changed since calibration'
      : undefined;
  if (problem)
    throw new CheckpointError(`${flag} refits routers on the calibration text, which ${problem}`, {
      file: d.file,
      hint: `re-run moe calibrate (its stats are in ${stats.dir})`,
    });
  const set = loadWindows(d.file, () => loadTokenizer(ckpt.dir), vocab, {
    seqLen: d.seq_len,
    maxTokens: d.max_tokens ?? undefined,
  });
  return sampleWindows(set.windows, d.windows < set.windows.length ? d.windows : undefined, stats.json.seed);
}

/** Writes `values` over the stored bytes of the plain tensor `name` of a checkpoint. */
export function overwrite(ckpt: Checkpoint, name: string, values: Float32Array): void {
  const ref = ckpt.tensors.get(name);
  if (!ref || ref.packed || ref.intq || ref.fp8 || ref.mxfp4 || ref.view)
    throw new InternalError(`router refit: ${name} is not a plain tensor of the written checkpoint`);
  const bytes = fromFloat32(values, ref.dtype);
  if (bytes.byteLength !== ref.end - ref.begin)
    throw new InternalError(`router refit: ${name} holds ${ref.end - ref.begin} bytes, not ${bytes.byteLength}`);
  const fd = fs.openSync(ref.file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.byteLength, ref.begin);
  } finally {
    fs.closeSync(fd);
  }
}

export async function alignWrittenRouters(
  dir: string,
  x: { ckpt: Checkpoint; arch: Architecture; reader: TensorReader; stats: CalibrationStats; be: Backend; ctx: Context },
): Promise<RouterAlignmentReport> {
  const windows = calibrationWindows(x.stats, x.ckpt, x.arch.vocab);
  const written = openCheckpoint(dir);
  const quantized = new TensorReader(written);
  try {
    const { routers, layers } = await alignRouters(x.reader, quantized, x.arch, windows, x.be, x.ctx);
    for (const [name, values] of routers) overwrite(written, name, values);
    const mean = (f: (l: LayerAlignment) => number) => layers.reduce((s, l) => s + f(l), 0) / (layers.length || 1);
    return {
      tokens: windows.reduce((s, w) => s + w.length, 0),
      before: mean((l) => l.before),
      after: mean((l) => l.after),
      layers,
    };
  } finally {
    quantized.close();
  }
}
