/**
 * `moe assemble PART... -o OUT`: joins the partial outputs of `moe quantize --layers A-B` (run on several machines
 * or jobs, one layer range each) into the checkpoint a single run would have written, byte for byte: the same
 * tensors in the source order, the same shards, metadata and config.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError, UsageError } from '../errors';
import {
  Checkpoint,
  Nested,
  nestedConfig,
  openTensorFile,
  storedName,
  storedTensorMetadata,
  TensorReader,
} from '../io/checkpoint';
import { formatMB, weightBytes } from '../io/size';
import { checkNotInput, OutputFolder, withOutput } from '../io/output';
import { PlannedTensor } from '../io/writer';
import { tensorBytes } from '../io/safetensors';
import { COMPRESSION_FILE } from '../model/reduce';
import { verifyWritten } from '../model/verify';
import { METADATA_PREFIX, partNames } from '../io/packed';
import { withoutFp8Config } from '../io/fp8';
import { withoutIntQuantConfig } from '../io/intquant';
import { withoutMxfp4Config } from '../io/mxfp4';
import { plainWriter } from '../model/fused';
import { architectureFor } from '../model/registry';
import { quantizationConfig } from '../quant/format';
import type { Context } from '../ui/progress';
import { PART_FILE, PART_FORMAT, PART_RECORD, PartRecord, QUANT_RECORD_FILE } from '../quant/records';
import { writeConfig } from '../io/config-text';
import { CommandSpec, dryRun, FORCE, JSON_OUTPUT, output } from './spec';

const COPY_CHUNK_BYTES = 16 * 1024 * 1024;

export interface AssembleReport {
  output: string;
  parts: number;
  layers: number;
  tensors: number;
  bytes: number;
  /** The written weight files' bytes (src/io/size.ts); absent in a dry run. */
  size_bytes?: number;
  seconds: number;
  /** --dry-run: the parts and their layer ranges, in layer order; nothing was written. */
  dry_run: boolean;
  plan: { dir: string; layers: [number, number] }[];
}

function readPart(dir: string): PartRecord {
  const file = path.join(dir, PART_RECORD);
  if (!fs.existsSync(file))
    throw new CheckpointError(`not a partial output (no ${PART_RECORD})`, {
      file: dir,
      hint: 'give the outputs of moe quantize --layers A-B',
    });
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as PartRecord;
  if (r.format !== PART_FORMAT)
    throw new CheckpointError(`partial output format ${JSON.stringify(r.format)} is not ${PART_FORMAT}`, { file });
  return r;
}

/** Every part comes from the same model and options as the first, and their layer ranges cover 0..L−1 once. */
function checkParts(parts: string[], records: PartRecord[]): void {
  const first = records[0];
  const same = (r: PartRecord) =>
    JSON.stringify([r.fingerprint, r.options, r.num_layers, r.order]) ===
    JSON.stringify([first.fingerprint, first.options, first.num_layers, first.order]);
  records.forEach((r, i) => {
    if (!same(r))
      throw new CheckpointError('this part was made from another model or with other options than the first part', {
        file: parts[i],
        hint: 'quantize every part from the same model with the same options',
      });
  });
  // The layer ranges must cover 0..L−1 once.
  const cover = new Array(first.num_layers).fill(-1);
  records.forEach((r, i) => {
    for (let l = r.layers[0]; l <= r.layers[1]; l++) {
      if (cover[l] >= 0) throw new UsageError(`layer ${l} is in two parts (${parts[cover[l]]} and ${parts[i]})`);
      cover[l] = i;
    }
  });
  const missing = cover.findIndex((c) => c < 0);
  if (missing >= 0)
    throw new UsageError(`no part holds layer ${missing}`, {
      hint: `quantize the missing range with --layers and pass it too`,
    });
}

/** The tensors to write in the source order, the part each is read from, and the packed tensors' metadata and bits. */
interface AssemblePlan {
  plan: PlannedTensor[];
  from: number[];
  tensorMetadata: Map<string, Record<string, string>>;
  codeBits: number;
  params: number;
}

function planTensors(parts: string[], first: PartRecord, files: Checkpoint[]): AssemblePlan {
  const holder = new Map<string, number>();
  files.forEach((f, i) => f.tensors.forEach((_, name) => holder.set(name, i)));
  const p: AssemblePlan = { plan: [], from: [], tensorMetadata: new Map(), codeBits: 0, params: 0 };
  for (const name of first.order) {
    const key = METADATA_PREFIX + name;
    const packedIn = files.findIndex((f) => key in f.metadata);
    const names = packedIn >= 0 ? Object.values(partNames(name)) : [name];
    if (packedIn >= 0) {
      p.tensorMetadata.set(names[0], { [key]: files[packedIn].metadata[key] });
      const info = JSON.parse(files[packedIn].metadata[key]) as { bits: number; shape: [number, number] };
      p.codeBits += info.bits * info.shape[0] * info.shape[1];
      p.params += info.shape[0] * info.shape[1];
    }
    for (const n of names) {
      const i = holder.get(n);
      if (i === undefined)
        throw new CheckpointError(`no part holds tensor ${n}`, {
          file: parts[0],
          hint: 'the parts are incomplete: re-run the part of its layer',
        });
      const t = files[i].tensors.get(n)!;
      p.plan.push({ name: n, dtype: t.dtype, shape: t.shape });
      p.from.push(i);
    }
  }
  return p;
}

/** What the write step needs: the parts, their records and readers, and the plan. */
interface AssembleWrite {
  parts: string[];
  records: PartRecord[];
  readers: TensorReader[];
  p: AssemblePlan;
  ctx: Context;
}

/** Copies the tensors into the shards, then writes config.json, the tokenizer files and the quantization record. */
function writeAssembled(out: OutputFolder, w: AssembleWrite): number {
  const { parts, records, readers, p, ctx } = w;
  const first = records[0];
  // Parts name tensors as moe shows them; a nested language model is stored back under its prefix.
  const nest: Nested = { nesting: first.nesting && { ...first.nesting, beside: new Set(first.nesting.beside) } };
  const options = {
    maxShardBytes: first.options.max_shard_bytes,
    metadata: { ...first.source_metadata, format: 'pt' },
    tensorMetadata: storedTensorMetadata(nest, p.tensorMetadata),
    storedName: storedName(nest),
  };
  // Parts hold one tensor per expert; a dequantized model whose family stores its experts fused is written fused.
  const arch = architectureFor(first.config, first.model);
  const writer = plainWriter(out.tmp, arch, p.plan, options, first.options.format !== 'dequantized');
  const bar = ctx.progress('assemble', p.plan.length, 'tensors');
  let bytes = 0;
  p.plan.forEach((t, k) => {
    writer.writeChunks(
      t.name,
      (function* () {
        for (const piece of readers[p.from[k]].chunks(t.name, COPY_CHUNK_BYTES)) {
          bytes += piece.byteLength;
          yield piece;
        }
      })(),
    );
    bar.tick();
  });
  writer.finish();
  bar.done();
  const config = withoutIntQuantConfig(withoutFp8Config(withoutMxfp4Config({ ...first.config })));
  if (first.options.format === 'packed')
    config.quantization_config = quantizationConfig(
      p.params ? p.codeBits / p.params : 0,
      first.options.group_size,
      first.options.method,
      first.options.allocate,
    );
  writeConfig(out, nestedConfig(nest, config), fs.existsSync(first.model) ? first.model : undefined);
  if (fs.existsSync(first.model)) {
    out.copyAuxFiles(first.model);
    const prior = path.join(first.model, COMPRESSION_FILE);
    if (fs.existsSync(prior)) fs.copyFileSync(prior, path.join(out.tmp, COMPRESSION_FILE));
  } else ctx.warn(`the source model ${first.model} is not here: tokenizer files not copied`);
  const bits: Record<string, number> = {};
  for (const r of records) Object.assign(bits, r.bits);
  out.writeRecord(QUANT_RECORD_FILE, {
    tool: 'moe',
    operation: 'quantize (assembled)',
    source: { model: first.model, fingerprint: first.fingerprint },
    parts: records.map((r, i) => ({ dir: path.resolve(parts[i]), layers: r.layers, report: r.report })),
    average_bits: p.params ? p.codeBits / p.params : null,
    tensors: bits,
  });
  return bytes;
}

export async function assemble(
  parts: string[],
  o: { output: string; force?: boolean; dryRun?: boolean },
  ctx: Context,
): Promise<AssembleReport> {
  const started = Date.now();
  if (parts.length === 0) throw new UsageError('give the partial outputs to join');
  const records = parts.map(readPart);
  const first = records[0];
  // The parts, and the source model whose tokenizer files are copied.
  checkNotInput(o.output, [
    ...parts.map((p) => ({ flag: 'PART', path: p })),
    { flag: 'the source model', path: fs.existsSync(first.model) ? first.model : undefined },
  ]);
  checkParts(parts, records);

  const files: Checkpoint[] = parts.map((p) => openTensorFile(path.join(p, PART_FILE)));
  const p = planTensors(parts, first, files);
  const partPlan = records
    .map((r, i) => ({ dir: path.resolve(parts[i]), layers: r.layers }))
    .sort((a, b) => a.layers[0] - b.layers[0]);
  const summary = {
    output: path.resolve(o.output),
    parts: parts.length,
    layers: first.num_layers,
    tensors: p.plan.length,
    plan: partPlan,
  };
  if (o.dryRun)
    return {
      ...summary,
      bytes: p.plan.reduce((s, t) => s + tensorBytes(t), 0),
      seconds: (Date.now() - started) / 1000,
      dry_run: true,
    };
  const readers = files.map((f) => new TensorReader(f));
  try {
    const written = await withOutput(
      o.output,
      { force: o.force, command: 'assemble', verify: verifyWritten },
      async (out) => writeAssembled(out, { parts, records, readers, p, ctx }),
    );
    return {
      ...summary,
      bytes: written,
      size_bytes: weightBytes(o.output),
      seconds: (Date.now() - started) / 1000,
      dry_run: false,
    };
  } finally {
    readers.forEach((r) => r.close());
  }
}

export function formatAssemble(r: AssembleReport): string {
  const head = `${r.parts} parts, ${r.layers} layers, ${r.tensors} tensors, ${formatMB(r.size_bytes ?? r.bytes)}`;
  if (!r.dry_run) return `wrote ${r.output}: ${head}`;
  return [
    `dry run: would write ${r.output}: ${head} (nothing written)`,
    ...r.plan.map((p) => `  layers ${p.layers[0]}-${p.layers[1]}  ${p.dir}`),
  ].join('\n');
}

export const assembleSpec: CommandSpec<AssembleReport> = {
  name: 'assemble',
  summary: 'join the parts written by moe quantize --layers A-B into one checkpoint, identical to a single run',
  args: [{ name: '<parts...>', description: 'the part folders, in any order' }],
  options: [
    output('destination folder'),
    FORCE,
    dryRun('print the parts, layers and output it would write, and write nothing'),
    JSON_OUTPUT,
  ],
  examples: [
    'moe quantize ./model --bits 4 --layers 0-15 -o part-a   # on one machine',
    'moe quantize ./model --bits 4 --layers 16-31 -o part-b  # on another',
    'moe assemble part-a part-b -o ./model-int4',
  ],
  run: (parts, o, ctx) => assemble(parts, o as { output: string; force?: boolean; dryRun?: boolean }, ctx),
  format: formatAssemble,
};
