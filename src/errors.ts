/**
 * The few error classes moe throws. Library code throws; only main.ts turns them into an exit code and
 * one line on stderr: `moe: <what> (<file>): <why>; <what to do>`.
 */

export const EXIT = {
  ok: 0,
  gateFailed: 1,
  usage: 2,
  badInput: 3,
  internal: 70,
} as const;

export interface ErrorDetail {
  /** The file or folder the problem is in. */
  file?: string;
  /** What the user can do about it. */
  hint?: string;
}

export abstract class MoeError extends Error {
  abstract readonly exitCode: number;
  readonly file?: string;
  readonly hint?: string;

  constructor(message: string, detail: ErrorDetail = {}) {
    super(message);
    this.name = new.target.name;
    this.file = detail.file;
    this.hint = detail.hint;
  }

  /** The one line main.ts prints. */
  line(): string {
    const where = this.file ? ` (${this.file})` : '';
    const hint = this.hint ? `; ${this.hint}` : '';
    return `${this.message}${where}${hint}`;
  }
}

/** The command line asks for something impossible or malformed (exit 2). */
export class UsageError extends MoeError {
  readonly exitCode = EXIT.usage;
}

/** The input checkpoint, stats file or data is bad or unsupported (exit 3). */
export class CheckpointError extends MoeError {
  readonly exitCode = EXIT.badInput;
}

/** A CI gate such as `--max-ppl-increase` failed (exit 1). */
export class GateError extends MoeError {
  readonly exitCode = EXIT.gateFailed;
}

/** A bug in moe (exit 70). */
export class InternalError extends MoeError {
  readonly exitCode = EXIT.internal;
}

/**
 * A value from an input file, as JSON for a message: at most `max` characters, and never throwing. A hostile header
 * can hold a value nested deeper than JSON.stringify's stack, or megabytes long.
 */
export function shown(value: unknown, max = 80): string {
  let s: string;
  try {
    s = JSON.stringify(value) ?? String(value);
  } catch {
    s = Array.isArray(value) ? '[…nested too deep…]' : typeof value;
  }
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}
