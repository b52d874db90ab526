/**
 * Atomic output folders: everything is written into a temporary folder beside the destination and renamed
 * into place only when complete, so an interrupted or failed run never leaves a half-written model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CheckpointError, InternalError, UsageError } from '../errors';
import { besideWeights } from './checkpoint';
import { crashPoint } from './crash';
import { isMoeFile, isMoeFolder, notMoeFolder, writeMarker } from './ownership';
import { escapeRegExp } from '../util/regexp';

export { checkNotInput } from './ownership';

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

/**
 * Keys that hold wall-clock measurements. They belong in the report a command returns (stdout, --json), not in
 * the files it writes: the same command twice must write byte-identical outputs (issue 11).
 */
const TIMING_KEYS = new Set(['seconds', 'tokens_per_second', 'forward_seconds', 'forward_tokens_per_second']);

/** A copy of a JSON value with every timing key removed, at any depth. */
export function withoutTimings<T>(value: T): T {
  if (Array.isArray(value)) return value.map(withoutTimings) as T;
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([k]) => !TIMING_KEYS.has(k))
      .map(([k, v]) => [k, withoutTimings(v)]),
  ) as T;
}

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

/**
 * Creates a folder moe writes into over several runs (moe run's output) and its missing parents, one at a time:
 * Node 20's recursive mkdirSync spins forever on a path under /proc. An existing folder must be empty or hold
 * moe's marker (moe run writes step folders into it and replaces them); the marker is written for `command`.
 */
export function createFolder(dir: string, command: string): void {
  const missing: string[] = [];
  for (let d = path.resolve(dir); !fs.existsSync(d); d = path.dirname(d)) missing.unshift(d);
  for (const d of missing) {
    try {
      fs.mkdirSync(d);
    } catch (e) {
      throw new UsageError(
        `cannot create the output folder: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
        { file: d, hint: 'choose a writable destination' },
      );
    }
  }
  if (!fs.statSync(dir).isDirectory())
    throw new UsageError('the output exists and is not a folder', { file: dir, hint: 'choose another output' });
  const abs = path.resolve(dir);
  if (fs.readdirSync(abs).length > 0 && !isMoeFolder(abs)) throw notMoeFolder(abs);
  if (!isMoeFolder(abs)) writeMarker(abs, command);
}

/**
 * A single-file destination (a .gguf path, a report): an existing one is replaced only with `force`, only if a
 * file, and only if moe wrote it (a GGUF naming moe in its metadata, a report carrying moe's generator meta).
 */
export function checkFileDestination(file: string, force: boolean): void {
  if (!fs.existsSync(file)) return;
  if (!force)
    throw new UsageError('the output already exists', {
      file,
      hint: 'choose another -o or pass --force to replace it',
    });
  if (!fs.statSync(file).isFile())
    throw new UsageError('the output exists and is not a file', { file, hint: 'choose another -o' });
  if (!isMoeFile(file)) {
    throw new UsageError(
      "--force replaces only a file moe wrote, and this file does not name moe as its writer (GGUF key moe.writer, or the report's generator meta)",
      { file, hint: 'choose another -o (delete the file by hand if it is yours to lose)' },
    );
  }
}

/** Creates the empty temporary file a single-file output is written to, so an unwritable folder is a usage error. */
export function createEmptyFile(tmp: string): void {
  try {
    fs.closeSync(fs.openSync(tmp, 'wx'));
  } catch (e) {
    throw new UsageError(
      `cannot create the output file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      { file: path.dirname(tmp), hint: 'choose a writable destination' },
    );
  }
}

export interface OutputOptions {
  force?: boolean;
  /** The command writing (moe-output.json names it). */
  command: string;
  /**
   * Re-opens a checkpoint written to the temporary folder and throws if it is not whole (src/model/verify.ts
   * `verifyWritten`: checking the config against the tensors needs the architecture, a layer above io).
   * Required when the folder holds a config.json.
   */
  verify?: (dir: string) => void;
}

export class OutputFolder {
  private state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(
    readonly dest: string,
    readonly tmp: string,
    readonly command: string,
  ) {}

  /** Checks the destination and creates the temporary folder. Call only after the inputs are validated. */
  static create(dest: string, opts: OutputOptions): OutputFolder {
    const abs = path.resolve(dest);
    checkOutputFolder(abs, opts.force);
    removeStaleTemps(abs);
    const tmp = path.join(
      path.dirname(abs),
      `.${path.basename(abs)}.moe-tmp-${process.pid}-${randomBytes(4).toString('hex')}`,
    );
    try {
      fs.mkdirSync(tmp);
    } catch (e) {
      throw new UsageError(
        `cannot create the output folder: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
        { file: path.dirname(abs), hint: 'choose a writable destination' },
      );
    }
    pending.add(tmp);
    crashPoint('after-create');
    return new OutputFolder(abs, tmp, opts.command);
  }

  file(name: string): string {
    if (this.state !== 'open') throw new Error(`OutputFolder: file() after ${this.state}`);
    return path.join(this.tmp, name);
  }

  writeJson(name: string, value: unknown): void {
    fs.writeFileSync(this.file(name), JSON.stringify(value, null, 2) + '\n');
  }

  /**
   * A record of what a command did (moe-*.json, stats.json): no wall-clock timings, so equal runs write equal bytes.
   */
  writeRecord(name: string, value: unknown): void {
    this.writeJson(name, withoutTimings(value));
  }

  /** Copies the tokenizer and generation files that exist in `srcDir`. */
  copyAuxFiles(srcDir: string): string[] {
    const copied: string[] = [];
    for (const name of AUX_FILES) {
      const src = besideWeights(srcDir, name);
      if (src) {
        fs.copyFileSync(src, this.file(name));
        copied.push(name);
      }
    }
    return copied;
  }

  /**
   * Writes moe's marker and renames the finished folder into place (replacing a folder moe wrote only with --force).
   */
  commit(): void {
    if (this.state !== 'open') throw new Error(`OutputFolder: commit() after ${this.state}`);
    writeMarker(this.tmp, this.command);
    crashPoint('before-rename');
    let old: string | undefined;
    if (fs.existsSync(this.dest)) {
      old = `${this.tmp}-old`;
      fs.renameSync(this.dest, old);
      crashPoint('between-renames');
    }
    fs.renameSync(this.tmp, this.dest);
    pending.delete(this.tmp);
    this.state = 'committed';
    if (old) {
      crashPoint('before-remove-old');
      fs.rmSync(old, { recursive: true, force: true });
    }
  }

  abort(): void {
    if (this.state !== 'open') return;
    fs.rmSync(this.tmp, { recursive: true, force: true });
    pending.delete(this.tmp);
    this.state = 'aborted';
  }
}

/**
 * Checks a folder destination: its parent exists; an existing one is replaced only with `force`, and only if moe
 * wrote it or it is empty. Commands call it early (before long work) and OutputFolder.create again when writing.
 */
export function checkOutputFolder(dest: string, force: boolean | undefined): void {
  const abs = path.resolve(dest);
  const parent = path.dirname(abs);
  if (!fs.existsSync(parent))
    throw new UsageError("the output folder's parent does not exist", { file: parent, hint: 'create it first' });
  if (!fs.statSync(parent).isDirectory())
    throw new UsageError("the output folder's parent is not a folder", {
      file: parent,
      hint: 'choose a destination inside a folder',
    });
  if (!fs.existsSync(abs)) return;
  if (!force)
    throw new UsageError('the output already exists', {
      file: abs,
      hint: 'choose another -o or pass --force to replace it',
    });
  const st = fs.statSync(abs);
  if (!st.isDirectory())
    throw new UsageError('the output exists and is not a folder', { file: abs, hint: 'choose another -o' });
  // --force replaces a folder moe wrote (it holds moe-output.json) or an empty one, never a folder the user may care
  // about: a downloaded model has config.json too. Outputs of a moe older than the marker are refused as well.
  if (fs.readdirSync(abs).length > 0 && !isMoeFolder(abs)) throw notMoeFolder(abs);
}

/**
 * A run killed with SIGKILL (or a power cut) cannot remove its temporary folder. The next write to the same
 * destination removes the ones moe made for it: named `.NAME.moe-tmp-PID-HEX` (or `…-old`, a model being replaced
 * at commit) whose process is gone. Anything else beside the destination is left alone: moe never deletes a folder
 * it did not create, and a folder whose process still runs belongs to a concurrent write.
 */
export function removeStaleTemps(dest: string): string[] {
  const parent = path.dirname(dest);
  const escaped = escapeRegExp(path.basename(dest));
  const pattern = new RegExp(`^\\.${escaped}\\.moe-tmp-(\\d+)-[0-9a-f]{8}(-old)?$`);
  const removed: string[] = [];
  for (const name of fs.readdirSync(parent)) {
    const m = pattern.exec(name);
    if (!m || Number(m[1]) === process.pid || processAlive(Number(m[1]))) continue;
    const full = path.join(parent, name);
    // A concurrent run may remove it first; a symlink or file with that name is not moe's.
    if (!fs.lstatSync(full, { throwIfNoEntry: false })?.isDirectory()) continue;
    fs.rmSync(full, { recursive: true, force: true });
    removed.push(full);
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to another user.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Wraps a write: aborts the folder on any error so nothing is left at the destination. */
export async function withOutput<T>(
  dest: string,
  opts: OutputOptions,
  body: (out: OutputFolder) => Promise<T> | T,
): Promise<T> {
  const out = OutputFolder.create(dest, opts);
  try {
    const result = await body(out);
    crashPoint('before-verify');
    // A checkpoint is re-opened and checked whole before it is renamed into place.
    if (fs.existsSync(path.join(out.tmp, 'config.json'))) {
      if (!opts.verify) {
        throw new InternalError(`${opts.command} wrote a checkpoint to ${out.tmp} without a verify function`);
      }
      try {
        opts.verify(out.tmp);
      } catch (e) {
        throw new InternalError(`the checkpoint written to ${out.tmp} does not re-open: ${(e as Error).message}`);
      }
    }
    out.commit();
    return result;
  } catch (e) {
    out.abort();
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') {
      throw new CheckpointError('no space left on the device while writing', {
        file: path.dirname(out.dest),
        hint: 'free space or choose another destination',
      });
    }
    if ((e as NodeJS.ErrnoException).code === 'EFBIG') {
      throw new CheckpointError('a file reached the file size limit (ulimit -f) while writing', {
        file: path.dirname(out.dest),
        hint: 'raise the limit or choose a smaller output',
      });
    }
    throw e;
  }
}
