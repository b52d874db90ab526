/**
 * One spec per command: its name, summary, arguments, options (type, default, validation), examples, run and the
 * format of its text output. Each src/commands/<verb>.ts exports its spec; the CLI (src/cli.ts), the recipe schema
 * and recipe validation (src/commands/recipe.ts) and recipe execution (src/commands/run.ts) are derived from them,
 * so an option is declared once. Nothing here imports commander: only src/cli.ts does.
 *
 * Values arrive as text (a CLI flag, or a recipe value turned into text) and go through the same parser, so the CLI
 * and a recipe accept and refuse the same values. Defaults are written as the CLI shows them ("2048", "5GB").
 */
import { BACKEND_NAMES } from '../backend';
import { UsageError } from '../errors';
import { parseIntArg, parseSize } from '../ui/parse';
import type { Context } from '../ui/progress';

/** A closed list of values. The list is read when the CLI is built, so a method registered at run time appears. */
export interface Choices {
  choices: () => readonly string[];
  /** false: not shown by commander (no "choices:" in the help); moe's own message names the valid values. */
  shown?: false;
}

/**
 * int, number, size (5GB, 2GiB), range (A-B), list (comma-separated; a YAML list in recipes), onoff (on|off on the
 * CLI, also true|false in recipes), path (an input that must exist, in recipes), file (a file moe writes).
 */
export type OptionType =
  'int' | 'number' | 'bool' | 'string' | 'path' | 'file' | 'size' | 'range' | 'list' | 'onoff' | Choices;

export interface OptionSpec {
  /** As commander takes it: '--seq-len <n>', '-o, --output <dir>', '--hessians'. */
  flag: string;
  /** The key of the command's options object; default: the camelCase long flag (--seq-len → seqLen). */
  key?: string;
  type: OptionType;
  /** The default as the CLI shows it; parsed like a given value. */
  default?: string;
  /** int: the smallest value accepted. */
  min?: number;
  /** A parser of the option's text (replaces the type's); throws UsageError naming `name`. */
  parse?: (text: string, name: string) => unknown;
  description: string | (() => string);
  required?: true;
  /** Supplied by `moe run` itself (output, stats, force, json, dry-run, backend, threads): not a recipe key. */
  runner?: true;
  /** A command line's own (calibrate --data-shard, --combine: one machine's part of a run): not a recipe key. */
  cliOnly?: true;
  /** The recipe key when it is not the long flag in snake_case (eval's --task FILE... is `tasks: [FILE, ...]`). */
  recipeName?: string;
  /** list: its items are input paths (in recipes: resolved against the recipe's folder, and must exist). */
  listOf?: 'path';
}

export interface ArgSpec {
  /** '<model>' or '<parts...>'. */
  name: string;
  description: string;
}

export type Values = Record<string, unknown>;

export interface CommandSpec<R extends object = object> {
  name: string;
  summary: string;
  args: ArgSpec[];
  options: OptionSpec[];
  /** Example command lines for --help. */
  examples: string[];
  /** Text after the examples in --help. */
  epilog?: string;
  run(args: string[], options: Values, ctx: Context): Promise<R> | R;
  format(report: R): string;
  /** The object --json prints (default: the report). */
  json?(report: R): object;
  /** Runs after the report is printed: exit-status checks (eval's perplexity gate, verify --nan). */
  check?(report: R): void;
}

/** Erases a spec's report type, for lists of specs. */
export const anySpec = <R extends object>(s: CommandSpec<R>): CommandSpec => s as unknown as CommandSpec;

/** 'seq-len' from '--seq-len <n>' or 'output' from '-o, --output <dir>'. */
export function longName(o: OptionSpec): string {
  const m = /--([a-z0-9-]+)/.exec(o.flag);
  if (!m) throw new Error(`option ${o.flag} has no long name`);
  return m[1];
}

/** commander's attribute name of an option: seqLen. */
export const attributeName = (o: OptionSpec): string =>
  longName(o).replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
/** The key in the command's options object. */
export const optionKey = (o: OptionSpec): string => o.key ?? attributeName(o);
/** The recipe key: seq_len. */
export const recipeKey = (o: OptionSpec): string => o.recipeName ?? longName(o).replace(/-/g, '_');
export const describe = (o: OptionSpec): string =>
  typeof o.description === 'function' ? o.description() : o.description;
export const isBool = (o: OptionSpec): boolean => o.type === 'bool';
export const choicesOf = (o: OptionSpec): readonly string[] | undefined =>
  o.type === 'onoff' ? ['on', 'off'] : typeof o.type === 'object' ? o.type.choices() : undefined;

/** A real number. */
export function parseNumber(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isFinite(n)) throw new UsageError(`${name} ${JSON.stringify(text)} is not a number`);
  return n;
}

/** "A-B" (or "A") as an inclusive layer range. */
export function parseRange(text: string, name: string): [number, number] {
  const m = /^(\d+)(?:-(\d+))?$/.exec(text.trim());
  if (!m) throw new UsageError(`${name} ${JSON.stringify(text)} is not a range like 0-15`);
  return [Number(m[1]), Number(m[2] ?? m[1])];
}

/** An option's value from its text; `name` is what messages call it (--seq-len, or calibrate.seq_len in a recipe). */
export function parseText(o: OptionSpec, text: string, name: string): unknown {
  if (o.parse) return o.parse(text, name);
  const t = o.type;
  if (typeof t === 'object') {
    const list = t.choices();
    if (!list.includes(text)) throw new UsageError(`${name} ${JSON.stringify(text)} is not one of ${list.join(', ')}`);
    return text;
  }
  switch (t) {
    case 'int':
      return parseIntArg(text, name, o.min ?? 0);
    case 'number':
      return parseNumber(text, name);
    case 'size':
      return parseSize(text, name);
    case 'range':
      return parseRange(text, name);
    case 'onoff':
      return text === 'on';
    default:
      return text;
  }
}

/**
 * Every option's value, in the order of the spec: `raw(o)` is the given text (a string, true for a flag, a string
 * array for a variadic option) or undefined; then the default applies. A flag not given is false.
 */
export function parseOptions(
  options: OptionSpec[],
  raw: (o: OptionSpec) => unknown,
  name: (o: OptionSpec) => string,
): Values {
  const values: Values = {};
  for (const o of options) {
    const v = raw(o) ?? o.default;
    if (isBool(o)) values[optionKey(o)] = !!v;
    else if (v === undefined || Array.isArray(v)) values[optionKey(o)] = v;
    else values[optionKey(o)] = parseText(o, String(v), name(o));
  }
  return values;
}

// Options several commands share, declared once.

export const BACKEND: OptionSpec = {
  flag: '--backend <name>',
  type: { choices: () => [...BACKEND_NAMES].sort() },
  default: 'onnx',
  description: 'matmul backend',
  runner: true,
};
export const THREADS: OptionSpec = {
  flag: '--threads <n>',
  type: 'int',
  min: 1,
  description: 'compute threads (default: $MOE_THREADS, else all cores)',
  runner: true,
};
/** What every command that computes takes. */
export const COMPUTE: OptionSpec[] = [BACKEND, THREADS];
export const JSON_OUTPUT: OptionSpec = {
  flag: '--json',
  type: 'bool',
  description: 'print one JSON object on stdout',
  runner: true,
};
export const FORCE: OptionSpec = {
  flag: '--force',
  type: 'bool',
  description: 'replace an existing model folder at the destination',
  runner: true,
};
export const MAX_SHARD_SIZE: OptionSpec = {
  flag: '--max-shard-size <size>',
  key: 'maxShardBytes',
  type: 'size',
  default: '5GB',
  description: 'largest shard',
};
export const dryRun = (description: string): OptionSpec => ({
  flag: '--dry-run',
  type: 'bool',
  description,
  runner: true,
});
export const output = (description: string, required = true): OptionSpec => ({
  flag: '-o, --output <dir>',
  type: 'string',
  description,
  runner: true,
  ...(required ? { required: true } : {}),
});
export const MODEL_ARG: ArgSpec = {
  name: '<model>',
  description: 'model folder, or ORG/NAME[@REV] in the local Hugging Face cache',
};

/** The options prune and merge share, after their own: stats, how many experts, the destination, compute, output. */
export function reductionOptions(dryRunText: string): OptionSpec[] {
  return [
    {
      flag: '--stats <dir>',
      type: 'string',
      required: true,
      description: 'calibration stats from moe calibrate on this model',
      runner: true,
    },
    { flag: '--keep <k>', type: 'int', min: 1, description: 'experts per MoE layer afterwards' },
    { flag: '--ratio <r>', type: 'number', description: 'share of experts kept per MoE layer, e.g. 0.5' },
    output('destination folder'),
    ...COMPUTE,
    MAX_SHARD_SIZE,
    FORCE,
    dryRun(dryRunText),
    JSON_OUTPUT,
  ];
}
