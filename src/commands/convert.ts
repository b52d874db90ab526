/** `moe convert MODEL -o OUT`: re-shard a checkpoint and optionally cast its floating tensors, tensor by tensor. */
import * as path from 'node:path';
import { UsageError } from '../errors';
import { CAST_CHOICES, CAST_TARGETS, DType, fromFloat32, isFloatDType, toFloat32, TORCH_NAMES } from '../io/dtype';
import { nestedConfig, openCheckpoint, storedName, TensorReader } from '../io/checkpoint';
import { formatMB, weightBytes } from '../io/size';
import { checkNotInput, checkOutputFolder, withOutput } from '../io/output';
import { tensorBytes } from '../io/safetensors';
import { DEFAULT_MAX_SHARD_BYTES, PlannedTensor, planShards } from '../io/writer';
import { loadArchitecture } from '../model/registry';
import { plainWriter } from '../model/fused';
import { verifyWritten } from '../model/verify';
import { withoutPackedConfig } from '../io/packed';
import { withoutMxfp4Config } from '../io/mxfp4';
import { withoutFp8Config } from '../io/fp8';
import { withoutIntQuantConfig } from '../io/intquant';
import type { Context } from '../ui/progress';
import { formatBytes } from '../ui/progress';
import { writeConfig } from '../io/config-text';
import { CommandSpec, dryRun, FORCE, JSON_OUTPUT, MAX_SHARD_SIZE, MODEL_ARG, output } from './spec';

/** Tensors are copied and cast in pieces of this size: memory stays flat whatever the largest tensor. */
const CHUNK_BYTES = 16 * 1024 * 1024;

function* mapPieces(pieces: Iterable<Uint8Array>, f: (p: Uint8Array) => Uint8Array): Generator<Uint8Array> {
  for (const p of pieces) yield f(p);
}

export interface ConvertOptions {
  model: string;
  output: string;
  /** bf16, f16 or f32; floating tensors only. Default: keep each tensor's dtype. */
  dtype?: string;
  maxShardBytes?: number;
  force?: boolean;
  dryRun?: boolean;
}

export interface ConvertReport {
  model: string;
  output: string;
  dry_run: boolean;
  tensors: number;
  cast: number;
  shards: number;
  bytes_in: number;
  bytes_out: number;
  dtype: string | null;
  seconds: number;
  /** The written weight files' bytes (src/io/size.ts); absent in a dry run. */
  size_bytes?: number;
}

function targetDType(opt: string | undefined): DType | undefined {
  if (opt === undefined) return undefined;
  const d = CAST_TARGETS[opt.toLowerCase()];
  if (!d) throw new UsageError(`--dtype ${JSON.stringify(opt)} is not one of bf16, f16, f32`);
  return d;
}

export async function convert(opts: ConvertOptions, ctx: Context): Promise<ConvertReport> {
  const started = Date.now();
  const cast = targetDType(opts.dtype);
  const maxShardBytes = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  // Validate everything before the output folder exists.
  const ckpt = openCheckpoint(opts.model);
  checkNotInput(opts.output, [{ flag: 'MODEL', path: ckpt.dir }]);
  if (!opts.dryRun) checkOutputFolder(opts.output, opts.force);
  const arch = loadArchitecture(ckpt);
  const sources = [...ckpt.tensors.values()];
  const plan: PlannedTensor[] = sources.map((t) => ({
    name: t.name,
    shape: t.shape,
    dtype: cast && isFloatDType(t.dtype) ? cast : t.dtype,
  }));
  const casts = plan.filter((p, i) => p.dtype !== sources[i].dtype).length;
  const bytesIn = sources.reduce((s, t) => s + tensorBytes(t), 0);
  const bytesOut = plan.reduce((s, t) => s + tensorBytes(t), 0);
  const report: ConvertReport = {
    model: ckpt.dir,
    output: path.resolve(opts.output),
    dry_run: !!opts.dryRun,
    tensors: plan.length,
    cast: casts,
    shards: planShards(plan, maxShardBytes).length,
    bytes_in: bytesIn,
    bytes_out: bytesOut,
    dtype: cast ?? null,
    seconds: 0,
  };
  if (opts.dryRun) {
    ctx.log(
      `dry run: would write ${plan.length} tensors (${casts} cast to ${cast ?? '-'}) as ${report.shards} shard(s), ${formatBytes(bytesOut)}`,
    );
    return report;
  }
  await withOutput(opts.output, { force: opts.force, command: 'convert', verify: verifyWritten }, (out) => {
    const options = { maxShardBytes, metadata: { ...ckpt.metadata, format: 'pt' }, storedName: storedName(ckpt) };
    const writer = plainWriter(out.tmp, arch, plan, options);
    const reader = new TensorReader(ckpt);
    const progress = ctx.progress('convert', bytesIn, 'bytes');
    try {
      for (let i = 0; i < plan.length; i++) {
        const src = sources[i];
        const to = plan[i].dtype;
        const pieces = reader.chunks(src.name, CHUNK_BYTES);
        writer.writeChunks(
          src.name,
          mapPieces(pieces, (raw) => {
            progress.tick(raw.byteLength);
            return to === src.dtype ? raw : fromFloat32(toFloat32(raw, src.dtype), to);
          }),
        );
      }
      writer.finish();
    } finally {
      progress.done();
      reader.close();
    }
    // A packed, FP8, MXFP4, compressed-tensors or GPTQ model is read dequantized: its output is a plain checkpoint.
    const config = withoutIntQuantConfig(withoutFp8Config(withoutMxfp4Config(withoutPackedConfig(ckpt.config))));
    // The dtype key lives in the outer config of a nested model (its text_config gets one only if it had one).
    const nested = nestedConfig(ckpt, cast ? withDType(config, cast, !ckpt.nesting) : config);
    writeConfig(out, cast && ckpt.nesting ? withDType(nested, cast) : nested, ckpt.dir);
    out.copyAuxFiles(ckpt.dir);
  });
  report.size_bytes = weightBytes(opts.output);
  report.seconds = (Date.now() - started) / 1000;
  return report;
}

/** The config with its dtype keys (`torch_dtype`, transformers 5's `dtype`) naming the new dtype. */
function withDType(config: Record<string, unknown>, d: DType, add = true): Record<string, unknown> {
  const name = TORCH_NAMES[d]!;
  const out = { ...config };
  let found = false;
  for (const k of ['torch_dtype', 'dtype']) {
    if (k in out) {
      out[k] = name;
      found = true;
    }
  }
  if (!found && add) out.torch_dtype = name;
  return out;
}

export function formatConvert(r: ConvertReport): string {
  if (r.dry_run)
    return `dry run: ${r.tensors} tensors → ${r.shards} shard(s), ${formatBytes(r.bytes_out)} (nothing written)`;
  return `wrote ${r.output}: ${r.tensors} tensors (${r.cast} cast${r.dtype ? ` to ${r.dtype}` : ''}) in ${r.shards} shard(s), ${formatMB(r.size_bytes ?? r.bytes_out)}, ${r.seconds.toFixed(1)} s`;
}

export const convertSpec: CommandSpec<ConvertReport> = {
  name: 'convert',
  summary: 're-shard a checkpoint and optionally cast its floating tensors, streaming tensor by tensor',
  args: [MODEL_ARG],
  options: [
    output('destination folder (must not exist unless --force)'),
    { flag: '--dtype <dtype>', type: { choices: () => CAST_CHOICES }, description: 'cast floating tensors' },
    { ...MAX_SHARD_SIZE, description: 'largest shard, e.g. 5GB, 500MB, 2GiB' },
    FORCE,
    dryRun('print what would be written and write nothing'),
    JSON_OUTPUT,
  ],
  examples: [
    'moe convert ./model -o ./model-f32 --dtype f32',
    'moe convert ./model -o ./model-resharded --max-shard-size 2GB',
  ],
  run: ([model], o, ctx) => convert({ ...(o as Omit<ConvertOptions, 'model'>), model }, ctx),
  format: formatConvert,
};
