/**
 * What moe may replace or write into (issue 16, "data loss must never happen"):
 *  - a folder only if it holds moe-output.json, the record every command that writes a folder puts in it (a
 *    downloaded model has config.json too, so no Hugging Face file can tell a folder moe wrote);
 *  - a single file only if it names moe as its writer: a GGUF whose metadata key `moe.writer` starts with "moe"
 *    (the GGUF spec asks community keys to live under their own prefix), or an HTML report whose head carries
 *    `<meta name="generator" content="moe …">`;
 *  - never a path that is, holds, or lies inside an input of the same command (the model, --stats, --data, …).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError, UsageError } from '../errors';
import { readGguf } from './gguf-reader';
import { VERSION } from '../version';

/** The record only moe writes, in every folder it writes. */
export const OUTPUT_MARKER = 'moe-output.json';
/** GGUF metadata key naming the program that wrote the file ("moe 0.1.0"). */
export const GGUF_WRITER_KEY = 'moe.writer';

export const WRITER = `moe ${VERSION}`;
/** The line in a report's <head> that marks it as moe's. */
export const HTML_GENERATOR = `<meta name="generator" content="${WRITER}">`;

/** Files that outputs of moe before moe-output.json hold (a hint only: they never make a folder moe's). */
const LEGACY_RECORDS = [
  'moe-compression.json',
  'moe-quantization.json',
  'moe-gguf.json',
  'moe-partial.json',
  'moe-step.json',
  'stats.json',
  'recipe.json',
];

/** The marker's bytes: no time, no path, so equal runs write equal files. */
export function markerJson(command: string): string {
  return (
    JSON.stringify(
      { tool: 'moe', version: VERSION, command, note: 'written by moe; --force may replace this folder' },
      null,
      2,
    ) + '\n'
  );
}

export function writeMarker(dir: string, command: string): void {
  fs.writeFileSync(path.join(dir, OUTPUT_MARKER), markerJson(command));
}

/** A folder holding moe's marker: a regular file (not a link) whose JSON says tool "moe". */
export function isMoeFolder(dir: string): boolean {
  const file = path.join(dir, OUTPUT_MARKER);
  if (!fs.lstatSync(file, { throwIfNoEntry: false })?.isFile()) return false;
  try {
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { tool?: unknown }).tool === 'moe';
  } catch {
    return false;
  }
}

/** Why a non-empty folder is not replaced, and what the user can do. */
export function notMoeFolder(dir: string): UsageError {
  const legacy = fs.readdirSync(dir).some((f) => LEGACY_RECORDS.includes(f));
  return new UsageError(`--force replaces only a folder moe wrote, and this folder holds no ${OUTPUT_MARKER}`, {
    file: dir,
    hint: legacy
      ? 'it may come from a moe older than the marker: check it and delete it by hand, or choose another -o'
      : 'choose another -o (delete the folder by hand if it is yours to lose)',
  });
}

/** The first bytes of a file that moe reads to decide whether it wrote it. */
const HTML_HEAD_BYTES = 16 * 1024;
const GENERATOR_RE = /<meta\s+name="generator"\s+content="moe[ "]/;
/** A JSON record moe writes (quantize --report) opens with this key. */
const JSON_RECORD_RE = /^\{\s*"tool":\s*"moe"/;

/**
 * A file moe wrote: a GGUF naming moe in `moe.writer`, an HTML page with moe's generator meta near the top, or a JSON
 * record opening with "tool": "moe".
 */
export function isMoeFile(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(HTML_HEAD_BYTES);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    if (n >= 4 && head.toString('latin1', 0, 4) === 'GGUF') return ggufWriter(file).startsWith('moe');
    const text = head.toString('utf8', 0, n);
    return GENERATOR_RE.test(text) || JSON_RECORD_RE.test(text);
  } finally {
    fs.closeSync(fd);
  }
}

/** The GGUF's `moe.writer` value, or '' when it has none or its header does not parse (then it is not moe's). */
function ggufWriter(file: string): string {
  try {
    return String(readGguf(file).metadata.get(GGUF_WRITER_KEY) ?? '');
  } catch (e) {
    if (e instanceof CheckpointError) return '';
    throw e;
  }
}

/** The real path of `p`: symlinks resolved in the part that exists, the rest appended. */
function realOf(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  for (let d = abs; ; d = path.dirname(d)) {
    try {
      return path.join(fs.realpathSync(d), ...rest);
    } catch {
      if (path.dirname(d) === d) return abs;
      rest.unshift(path.basename(d));
    }
  }
}

const within = (inner: string, outer: string) =>
  inner !== outer && inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);

/** How `output` relates to `input` on disk, after resolving links: the same path, holding it, inside it, or apart. */
export function overlap(output: string, input: string): 'is' | 'contains' | 'lies inside' | undefined {
  const o = realOf(output);
  const i = realOf(input);
  if (o === i) return 'is';
  if (within(i, o)) return 'contains';
  if (within(o, i)) return 'lies inside';
  return undefined;
}

export interface NamedInput {
  /** How the user gave it: MODEL, --stats, --data, … */
  flag: string;
  path: string | undefined;
}

/**
 * Refuses an output (`flag`, e.g. -o) that is, holds or lies inside an input of the same command, whatever
 * --force says: replacing it would destroy what the command reads. Call it before any work starts.
 */
export function checkNotInput(output: string | undefined, inputs: NamedInput[], flag = '-o'): void {
  if (output === undefined) return;
  for (const input of inputs) {
    if (input.path === undefined) continue;
    const rel = overlap(output, input.path);
    if (rel) {
      throw new UsageError(`${flag} ${rel} ${input.flag} ${realOf(input.path)}, an input of this command`, {
        file: path.resolve(output),
        hint: `write ${flag} outside every input; --force never replaces an input`,
      });
    }
  }
}
