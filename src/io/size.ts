/**
 * The size of a model, one definition everywhere (inspect, eval, demo, run, report): the bytes of the weight files
 * on disk (every safetensors shard the folder holds, headers included, or the one .gguf file), in decimal MB
 * with two decimals. Tensor-data sums leave out the headers and differ by a few kB; they are breakdowns, not the size.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { openCheckpoint } from './checkpoint';

/**
 * The weight files of a model: a .gguf file itself; in a folder, the shards its checkpoint reads, else its .gguf.
 */
export function weightFiles(model: string): string[] {
  if (fs.statSync(model).isFile()) return [model];
  const names = fs.readdirSync(model).sort();
  if (names.some((n) => n.endsWith('.safetensors'))) return openCheckpoint(model).shards;
  const gguf = names.filter((n) => n.toLowerCase().endsWith('.gguf'));
  if (gguf.length === 1) return [path.join(model, gguf[0])];
  throw new CheckpointError(
    gguf.length ? `${gguf.length} .gguf files, expected one` : 'no .safetensors or .gguf weight file',
    { file: model, hint: 'give a model folder or a .gguf file' },
  );
}

/** Total bytes of the weight files (symlinks, as in a Hugging Face cache snapshot, are followed). */
export function weightBytes(model: string): number {
  return fileBytes(weightFiles(model));
}

export function fileBytes(files: string[]): number {
  return files.reduce((s, f) => s + fs.statSync(f).size, 0);
}

/** `14.84 MB`: decimal megabytes, two decimals. */
export function formatMB(bytes: number): string {
  return `${(bytes / 1e6).toFixed(2)} MB`;
}
