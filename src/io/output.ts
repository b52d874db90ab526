/**
 * Atomic output folders: everything is written into a temporary folder beside the destination and renamed
 * into place only when complete, so an interrupted or failed run never leaves a half-written model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CheckpointError, InternalError, UsageError } from '../errors';

/** Files beside the weights that a written checkpoint keeps: the tokenizer, generation and chat settings. */
export const AUX_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'tokenizer.model',
  'generation_config.json',
  'chat_template.jinja',
  'chat_template.json',
];

/** Temporary folders (and files) not yet renamed into place; removed if the process is interrupted. */
const pending = new Set<string>();

/** A temporary file or folder to remove if the process is interrupted before it is renamed into place. */
export function registerPending(p: string): void {
  pending.add(p);
}

export function unregisterPending(p: string): void {
  pending.delete(p);
}

export function removePendingOutputs(): void {
  for (const dir of pending) fs.rmSync(dir, { recursive: true, force: true });
  pending.clear();
}

export interface OutputOptions {
  force?: boolean;
}

export class OutputFolder {
  private state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(
    readonly dest: string,
    readonly tmp: string,
  ) {}

  /** Checks the destination and creates the temporary folder. Call only after the inputs are validated. */
  static create(dest: string, opts: OutputOptions = {}): OutputFolder {
    const abs = path.resolve(dest);
    checkDestination(abs, opts);
    const tmp = path.join(path.dirname(abs), `.${path.basename(abs)}.moe-tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      fs.mkdirSync(tmp);
    } catch (e) {
      throw new UsageError(`cannot create the output folder: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { file: path.dirname(abs), hint: 'choose a writable destination' });
    }
    pending.add(tmp);
    return new OutputFolder(abs, tmp);
  }

  file(name: string): string {
    if (this.state !== 'open') throw new Error(`OutputFolder: file() after ${this.state}`);
    return path.join(this.tmp, name);
  }

  writeJson(name: string, value: unknown): void {
    fs.writeFileSync(this.file(name), JSON.stringify(value, null, 2) + '\n');
  }

  /** Copies the tokenizer and generation files that exist in `srcDir`. */
  copyAuxFiles(srcDir: string): string[] {
    const copied: string[] = [];
    for (const name of AUX_FILES) {
      const src = path.join(srcDir, name);
      if (fs.existsSync(src)) {
        fs.copyFileSync(src, this.file(name));
        copied.push(name);
      }
    }
    return copied;
  }

  /** Renames the finished folder into place (replacing a previous model folder only with --force). */
  commit(): void {
    if (this.state !== 'open') throw new Error(`OutputFolder: commit() after ${this.state}`);
    let old: string | undefined;
    if (fs.existsSync(this.dest)) {
      old = `${this.tmp}-old`;
      fs.renameSync(this.dest, old);
    }
    fs.renameSync(this.tmp, this.dest);
    pending.delete(this.tmp);
    this.state = 'committed';
    if (old) fs.rmSync(old, { recursive: true, force: true });
  }

  abort(): void {
    if (this.state !== 'open') return;
    fs.rmSync(this.tmp, { recursive: true, force: true });
    pending.delete(this.tmp);
    this.state = 'aborted';
  }
}

function checkDestination(abs: string, opts: OutputOptions): void {
  const parent = path.dirname(abs);
  if (!fs.existsSync(parent)) throw new UsageError('the output folder\'s parent does not exist', { file: parent, hint: 'create it first' });
  if (!fs.existsSync(abs)) return;
  if (!opts.force) throw new UsageError('the output already exists', { file: abs, hint: 'choose another -o or pass --force to replace it' });
  const st = fs.statSync(abs);
  if (!st.isDirectory()) throw new UsageError('the output exists and is not a folder', { file: abs, hint: 'choose another -o' });
  // --force replaces a model folder or an empty one, never an arbitrary folder the user may care about.
  const entries = fs.readdirSync(abs);
  // A folder moe wrote: a checkpoint (config.json), a GGUF export (moe-gguf.json) or a --layers part (moe-partial.json).
  if (entries.length > 0 && !['config.json', 'moe-gguf.json', 'moe-partial.json'].some((f) => entries.includes(f))) {
    throw new UsageError('--force replaces only a model folder, and this folder holds no config.json', { file: abs, hint: 'choose another -o' });
  }
}

/** Wraps a write: aborts the folder on any error so nothing is left at the destination. */
export async function withOutput<T>(dest: string, opts: OutputOptions, body: (out: OutputFolder) => Promise<T> | T): Promise<T> {
  const out = OutputFolder.create(dest, opts);
  try {
    const result = await body(out);
    // A checkpoint is re-opened and checked whole before it is renamed into place.
    if (fs.existsSync(path.join(out.tmp, 'config.json'))) {
      const { verifyCheckpoint } = await import('./verify');
      try {
        verifyCheckpoint(out.tmp);
      } catch (e) {
        throw new InternalError(`the checkpoint written to ${out.tmp} does not re-open: ${(e as Error).message}`);
      }
    }
    out.commit();
    return result;
  } catch (e) {
    out.abort();
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') {
      throw new CheckpointError('no space left on the device while writing', { file: path.dirname(out.dest), hint: 'free space or choose another destination' });
    }
    throw e;
  }
}
