/**
 * Evaluation and calibration data: plain text (.txt), JSON lines with a "text" field (.jsonl), or pre-tokenized
 * windows (.json: an array of arrays of token ids). Text is tokenized whole, with no special tokens, and cut into
 * consecutive non-overlapping windows (the perplexity rule in the README).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError, UsageError } from '../errors';
import { mulberry32 } from '../util/random';
import type { TextTokenizer } from './tokenizer';

export interface WindowSet {
  /** Each window's token ids. Text gives windows of exactly seqLen; pre-tokenized input keeps its own lengths. */
  windows: Int32Array[];
  /** Tokens in the source before any cut. */
  sourceTokens: number;
  kind: 'text' | 'pretokenized';
}

export interface DataOptions {
  seqLen: number;
  maxTokens?: number;
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CheckpointError(
      `cannot read the data file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      { file, hint: 'check the --data path' },
    );
  }
}

function jsonlText(file: string): string {
  const texts: string[] = [];
  readText(file)
    .split('\n')
    .forEach((line, i) => {
      if (!line.trim()) return;
      let rec: unknown;
      try {
        rec = JSON.parse(line);
      } catch {
        throw new CheckpointError(`line ${i + 1} is not valid JSON`, {
          file,
          hint: 'each line must be an object with a "text" field',
        });
      }
      const t = (rec as { text?: unknown })?.text;
      if (typeof t !== 'string')
        throw new CheckpointError(`line ${i + 1} has no string "text" field`, {
          file,
          hint: 'each line must be an object with a "text" field',
        });
      texts.push(t);
    });
  // Records are joined by a blank line, then tokenized as one text.
  return texts.join('\n\n');
}

function pretokenized(file: string, vocab: number, opts: DataOptions): WindowSet {
  let json: unknown;
  try {
    json = JSON.parse(readText(file));
  } catch (e) {
    throw new CheckpointError(`not valid JSON (${(e as Error).message})`, {
      file,
      hint: 'pre-tokenized data is a JSON array of arrays of token ids',
    });
  }
  if (!Array.isArray(json))
    throw new CheckpointError('not a JSON array', {
      file,
      hint: 'pre-tokenized data is a JSON array of arrays of token ids',
    });
  const windows: Int32Array[] = [];
  let total = 0;
  let source = 0;
  let usable = Infinity; // the shortest window with something to predict
  json.forEach((w, i) => {
    if (!Array.isArray(w) || !w.every((id) => Number.isInteger(id) && id >= 0 && id < vocab)) {
      throw new CheckpointError(`window ${i} is not an array of token ids below the vocabulary size ${vocab}`, {
        file,
        hint: "tokenize with this model's tokenizer",
      });
    }
    source += w.length;
    if (w.length < 2) return; // nothing to predict
    usable = Math.min(usable, w.length);
    if (opts.maxTokens !== undefined && total + w.length > opts.maxTokens) return;
    total += w.length;
    windows.push(Int32Array.from(w));
  });
  if (windows.length === 0) {
    if (usable === Infinity)
      throw new UsageError(
        `the data gives ${source} tokens, ${source < 2 ? 'fewer than one window of 2 tokens' : 'but no window of at least 2 tokens'}`,
        { file, hint: 'each pre-tokenized window needs at least 2 tokens; give longer windows' },
      );
    throw new UsageError(
      `--max-tokens ${opts.maxTokens} keeps fewer tokens than one window (the shortest holds ${usable})`,
      { file, hint: 'raise --max-tokens' },
    );
  }
  return { windows, sourceTokens: source, kind: 'pretokenized' };
}

/** Cuts ids into consecutive windows of seqLen, after keeping the first maxTokens; a last partial window is dropped. */
export function cutWindows(ids: ArrayLike<number>, opts: DataOptions): Int32Array[] {
  const n = Math.min(ids.length, opts.maxTokens ?? Infinity);
  const windows: Int32Array[] = [];
  for (let s = 0; s + opts.seqLen <= n; s += opts.seqLen)
    windows.push(Int32Array.from(Array.prototype.slice.call(ids, s, s + opts.seqLen)));
  return windows;
}

export function loadWindows(file: string, tokenizer: () => TextTokenizer, vocab: number, opts: DataOptions): WindowSet {
  if (!fs.existsSync(file))
    throw new CheckpointError('the data file does not exist', { file, hint: 'check the --data path' });
  if (opts.seqLen < 2) throw new UsageError(`--seq-len ${opts.seqLen} is too short; it must be at least 2`);
  const ext = path.extname(file).toLowerCase();
  if (ext === '.json') return pretokenized(file, vocab, opts);
  const text = ext === '.jsonl' ? jsonlText(file) : readText(file);
  const ids = tokenizer().encode(text);
  const windows = cutWindows(ids, opts);
  if (
    windows.length === 0 &&
    opts.maxTokens !== undefined &&
    opts.maxTokens < opts.seqLen &&
    ids.length >= opts.seqLen
  ) {
    throw new UsageError(
      `--max-tokens ${opts.maxTokens} keeps fewer tokens than one window of --seq-len ${opts.seqLen}`,
      { file, hint: 'lower --seq-len or raise --max-tokens' },
    );
  }
  if (windows.length === 0) {
    throw new UsageError(`the data gives ${ids.length} tokens, fewer than one window of --seq-len ${opts.seqLen}`, {
      file,
      hint: 'use a shorter --seq-len or more text',
    });
  }
  return { windows, sourceTokens: ids.length, kind: 'text' };
}

/**
 * Windows longer than the model's max_position_embeddings still run (RoPE has no hard end), but positions past it
 * were never trained: the warning to give, if any.
 */
export function positionsWarning(set: WindowSet, seqLen: number, config: Record<string, unknown>): string | undefined {
  const max = Number(config.max_position_embeddings);
  if (!Number.isFinite(max) || max <= 0) return undefined;
  const longest = set.windows.reduce((m, w) => Math.max(m, w.length), 0);
  if (longest <= max) return undefined;
  const what = set.kind === 'text' ? `--seq-len ${seqLen}` : `a pre-tokenized window of ${longest} tokens`;
  return `${what} is above the model's max_position_embeddings (${max}): positions past ${max} were never trained, so the figures will not reflect the model; use windows of at most ${max} tokens`;
}

/** Picks `samples` windows at random (seeded), keeping their order in the text (calibrate --samples). */
export function sampleWindows(windows: Int32Array[], samples: number | undefined, seed: number): Int32Array[] {
  if (samples === undefined || samples >= windows.length) return windows;
  const rand = mulberry32(seed);
  const idx = windows.map((_, i) => i);
  for (let i = idx.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx
    .slice(0, samples)
    .sort((a, b) => a - b)
    .map((i) => windows[i]);
}
