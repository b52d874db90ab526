/**
 * `moe verify MODEL [--nan]`: re-opens a checkpoint the way every command does and checks it whole: every shard's
 * header and data range, the index against the shards, the config against the tensors (names, shapes, dtypes of
 * the architecture), packed weights against their metadata, and with --nan every floating value is finite.
 * Every command that writes a checkpoint runs the structural part on its temporary folder before renaming it
 * into place (it passes `verifyWritten` to withOutput, src/io/output.ts). It lives in the model layer because
 * checking the config against the tensors needs the architecture; io only opens the stored format.
 */
import * as fs from 'node:fs';
import { CheckpointError } from '../errors';
import { openCheckpoint, TensorReader } from '../io/checkpoint';
import { isFloatDType, toFloat32 } from '../io/dtype';
import { loadArchitecture } from './registry';

const CHUNK_BYTES = 16 * 1024 * 1024;

export interface VerifyReport {
  model: string;
  model_type: string;
  tensors: number;
  shards: number;
  indexed: boolean;
  bytes: number;
  /** With --nan: values checked, and tensors holding NaN or ±Inf. */
  values_checked: number | null;
  nonfinite: { tensor: string; count: number }[];
  ok: boolean;
}

export function verifyCheckpoint(dir: string, opts: { nan?: boolean } = {}): VerifyReport {
  const ckpt = openCheckpoint(dir);
  const arch = loadArchitecture(ckpt);
  const bytes = ckpt.shards.reduce((n, s) => n + fs.statSync(s).size, 0);
  const report: VerifyReport = {
    model: ckpt.dir,
    model_type: arch.modelType,
    tensors: ckpt.tensors.size,
    shards: ckpt.shards.length,
    indexed: ckpt.indexed,
    bytes,
    values_checked: null,
    nonfinite: [],
    ok: true,
  };
  if (opts.nan) {
    const reader = new TensorReader(ckpt);
    let checked = 0;
    try {
      for (const t of ckpt.tensors.values()) {
        if (!t.packed && !isFloatDType(t.dtype)) continue;
        let bad = 0;
        // A packed weight is checked as it decodes (codes × finite scales), in its original dtype.
        const pieces = t.packed ? [reader.bytes(t.name)] : reader.chunks(t.name, CHUNK_BYTES);
        for (const piece of pieces) {
          const v = toFloat32(piece, t.dtype);
          for (let i = 0; i < v.length; i++) if (v[i] - v[i] !== 0) bad++; // NaN for NaN and ±Inf, 0 otherwise
          checked += v.length;
        }
        if (bad) report.nonfinite.push({ tensor: t.name, count: bad });
      }
    } finally {
      reader.close();
    }
    report.values_checked = checked;
    report.ok = report.nonfinite.length === 0;
  }
  return report;
}

/** Throws when the report found values that are not finite (the CLI's exit 3). */
export function checkFinite(r: VerifyReport): void {
  if (r.nonfinite.length) {
    const first = r.nonfinite[0];
    throw new CheckpointError(
      `${r.nonfinite.length} tensor(s) hold NaN or Inf values, first ${first.tensor} (${first.count} values)`,
      { file: r.model, hint: 'the checkpoint is corrupt or diverged; do not compress it' },
    );
  }
}

/** The structural check of a checkpoint just written to `dir` (withOutput's `verify`). */
export function verifyWritten(dir: string): void {
  verifyCheckpoint(dir);
}
