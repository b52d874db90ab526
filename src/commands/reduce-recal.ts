/**
 * `--recalibrate-router ls|kl` of prune and merge: once the reduced checkpoint is written to its temporary folder,
 * every MoE layer's router is refitted toward the original's routing among what remains, on the calibration tokens
 * of --stats (src/prune/router-recal.ts), and written over the router's bytes in place (same name, dtype, shape).
 */
import type { Backend } from '../backend/backend';
import type { CalibrationStats } from '../calib/stats';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import { loadArchitecture } from '../model/registry';
import { LayerRecalibration, recalibrateRouters, RecalibrationMode, recalScoring } from '../prune/router-recal';
import type { Context } from '../ui/progress';
import { calibrationWindows, overwrite } from './quantize-align';
import type { OptionSpec } from './spec';

export interface RouterRecalibrationReport {
  mode: Exclude<RecalibrationMode, 'off'>;
  /** Calibration tokens the routers were fitted on (and agreement measured on). */
  tokens: number;
  /** Top-k overlap with the original's routing among what remains, mean over MoE layers, before and after. */
  before: number;
  after: number;
  layers: LayerRecalibration[];
}

export const RECALIBRATE_OPTION: OptionSpec = {
  flag: '--recalibrate-router <mode>',
  type: { choices: () => ['off', 'ls', 'kl'] },
  default: 'off',
  description:
    "refit the kept routers on the calibration tokens toward the original's routing: ls (least squares on the logits) or kl",
};

export async function recalibrateWritten(
  dir: string,
  mode: Exclude<RecalibrationMode, 'off'>,
  members: Map<number, number[][]>,
  x: { ckpt: Checkpoint; arch: Architecture; reader: TensorReader; stats: CalibrationStats; be: Backend; ctx: Context },
): Promise<RouterRecalibrationReport> {
  const windows = calibrationWindows(x.stats, x.ckpt, x.arch.vocab, '--recalibrate-router');
  const written = openCheckpoint(dir);
  const reduced = new TensorReader(written);
  try {
    const archR = loadArchitecture(written);
    const { routers, layers } = await recalibrateRouters(
      x.reader,
      x.arch,
      reduced,
      archR,
      members,
      windows,
      x.be,
      x.ctx,
      {
        mode,
      },
    );
    for (const [name, values] of routers) overwrite(written, name, values);
    const mean = (f: (l: LayerRecalibration) => number) => layers.reduce((s, l) => s + f(l), 0) / (layers.length || 1);
    return {
      mode,
      tokens: windows.reduce((s, w) => s + w.length, 0),
      before: mean((l) => l.before),
      after: mean((l) => l.after),
      layers,
    };
  } finally {
    reduced.close();
  }
}

export function formatRecalibration(r: RouterRecalibrationReport): string {
  return `  routers recalibrated (${r.mode}, ${r.tokens} tokens): agreement with the original's routing ${(100 * r.before).toFixed(1)}% → ${(100 * r.after).toFixed(1)}%`;
}

/** Refuses --recalibrate-router where it is not defined (PhiMoE's sparsemixer), before anything is read or written. */
export function checkRecalibration(arch: Architecture, mode: RecalibrationMode | 'off' | undefined): void {
  if (mode && mode !== 'off') recalScoring(arch);
}
