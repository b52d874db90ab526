/**
 * Recipes for `moe run`: a YAML file naming a model, an output folder, and steps that run in order, each on the
 * model the previous one produced:
 *
 *   model: ../fixtures/tiny-moe        # paths are relative to the recipe file
 *   output: runs/tiny
 *   steps:
 *     - calibrate: { data: ../fixtures/text/calib.txt, seq_len: 256, max_tokens: 16384, hessians: true }
 *     - prune: { method: reap, keep: 6 }
 *     - calibrate: { data: ../fixtures/text/calib.txt, seq_len: 256, max_tokens: 16384, hessians: true }
 *     - quantize: { bits: 3, allocate: lp }
 *     - eval: { data: ../fixtures/text/eval.txt, seq_len: 256, baseline: original, max_ppl_increase: 40 }
 *
 * A step's options are its command's CLI options in snake_case, with the same defaults and the same parsers (the
 * command specs, src/commands/spec.ts): only what `moe run` supplies is not a key (output, stats, force, json,
 * dry-run; backend and threads come from the top level or moe run's flags). Lists are YAML lists or the CLI's text.
 * prune and merge use the latest calibration, which must have been made on the model they receive (a
 * calibrate step after every step that changes the model); quantize uses it when there is one (`stats: false`:
 * not). Every error names the recipe's line.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { modelNamedIn } from '../io/hf-cache';
import { Document, isMap, isSeq, LineCounter, parseDocument, Scalar, YAMLMap } from 'yaml';
import { UsageError } from '../errors';
import { overlap } from '../io/ownership';
import { calibrateSpec } from './calibrate';
import { evalSpec } from './eval';
import { mergeSpec } from './merge';
import { pruneSpec } from './prune';
import { quantizeSpec } from './quantize';
import {
  anySpec,
  BACKEND,
  choicesOf,
  CommandSpec,
  OptionSpec,
  parseOptions,
  parseText,
  recipeKey,
  Values,
} from './spec';

export type StepKind = 'calibrate' | 'prune' | 'merge' | 'quantize' | 'eval';

/**
 * The commands a recipe step runs. A step's options are its command's options (src/commands/spec.ts) in
 * snake_case, with the CLI's defaults and parsers, except what `moe run` supplies (output, stats, force, json,
 * dry-run, backend, threads: the last two from the recipe's top level or moe run's flags).
 */
export const STEP_SPECS: Record<StepKind, CommandSpec> = {
  calibrate: anySpec(calibrateSpec),
  prune: anySpec(pruneSpec),
  merge: anySpec(mergeSpec),
  quantize: anySpec(quantizeSpec),
  eval: anySpec(evalSpec),
};

/** Recipe keys without a CLI flag: quantize's stats: false quantizes without the latest calibration. */
const RECIPE_ONLY: Partial<Record<StepKind, OptionSpec[]>> = {
  quantize: [
    {
      flag: '--stats',
      type: 'bool',
      description: 'use the latest calibration of the model (default: when there is one)',
    },
  ],
};

/**
 * A recipe names its calibration data (a file, or self_sample: the model writes it), so that a run says what it
 * measured. An eval step needs its data (its report
 * and the run's headline are the perplexity; `tasks` add accuracy beside it), though `moe eval --task` alone does not.
 */
const RECIPE_REQUIRED: Partial<Record<StepKind, string[]>> = { calibrate: ['data|self_sample'], eval: ['data'] };

/** The options a step runs its command with, in the command's order. */
export function stepOptionSpecs(kind: StepKind): OptionSpec[] {
  return STEP_SPECS[kind].options.filter((o) => !o.runner && !o.cliOnly);
}

/** Every recipe key of a step and its option. */
function schema(kind: StepKind): Map<string, OptionSpec> {
  return new Map([...stepOptionSpecs(kind), ...(RECIPE_ONLY[kind] ?? [])].map((o) => [recipeKey(o), o]));
}

function required(kind: StepKind): string[] {
  return [
    ...(RECIPE_REQUIRED[kind] ?? []),
    ...stepOptionSpecs(kind)
      .filter((o) => o.required)
      .map(recipeKey),
  ];
}

/** A value as written in a recipe (after checkValue) as the text the CLI parser takes. */
function recipeText(o: OptionSpec, v: unknown): unknown {
  if (v === undefined || o.type === 'bool') return v;
  if (Array.isArray(v)) return v.join(',');
  if (o.type === 'onoff' && typeof v === 'boolean') return v ? 'on' : 'off';
  return String(v);
}

/** A step's command options (camelCase keys, defaults filled in), from its recipe options. */
export function stepValues(step: Step): Values {
  return parseOptions(
    stepOptionSpecs(step.kind),
    (o) => recipeText(o, step.options[recipeKey(o)]),
    (o) => `${step.kind}.${recipeKey(o)}`,
  );
}

export interface Step {
  kind: StepKind;
  options: Record<string, unknown>;
  /** 1-based line of the step in the recipe. */
  line: number;
}

export interface Recipe {
  file: string;
  model: string;
  output: string;
  backend?: string;
  threads?: number;
  steps: Step[];
}

export function loadRecipe(file: string): Recipe {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs))
    throw new UsageError('the recipe does not exist', { file, hint: 'give the path of a YAML recipe' });
  const lc = new LineCounter();
  const doc: Document = parseDocument(fs.readFileSync(abs, 'utf8'), { lineCounter: lc, prettyErrors: false });
  const at = (node: unknown): number => {
    const r = (node as { range?: [number, number, number] } | null)?.range;
    return r ? lc.linePos(r[0]).line : 1;
  };
  const fail = (line: number, what: string, hint?: string): never => {
    throw new UsageError(`${path.basename(abs)} line ${line}: ${what}`, { file: abs, hint });
  };
  if (doc.errors.length) {
    const e = doc.errors[0];
    fail(lc.linePos(e.pos[0]).line, `not valid YAML (${e.message.split('\n')[0]})`);
  }
  const root = doc.contents;
  if (!isMap(root)) fail(1, 'a recipe is a mapping with model, output and steps');
  const top = root as YAMLMap;
  const known = new Set(['model', 'output', 'steps', 'backend', 'threads']);
  for (const item of top.items) {
    const key = String((item.key as Scalar).value);
    if (!known.has(key)) fail(at(item.key), `unknown key "${key}"`, `the top level takes ${[...known].join(', ')}`);
  }
  const dir = path.dirname(abs);
  const str = (key: string, required: boolean): string | undefined => {
    const node = top.get(key, true) as Scalar | undefined;
    if (node === undefined) {
      if (required) fail(1, `"${key}" is missing`);
      return undefined;
    }
    if (typeof node.value !== 'string') fail(at(node), `"${key}" must be a string`);
    return node.value as string;
  };
  const model = modelNamedIn(str('model', true)!, dir, `${path.basename(abs)} line ${at(top.get('model', true))}`, abs);
  const output = path.resolve(dir, str('output', true)!);
  const backend = str('backend', false);
  const backends = choicesOf(BACKEND)!;
  if (backend !== undefined && !backends.includes(backend))
    fail(
      at(top.get('backend', true)),
      `backend "${backend}" is not ${backends.slice(0, -1).join(', ')} or ${backends[backends.length - 1]}`,
    );
  const threadsNode = top.get('threads', true) as Scalar | undefined;
  if (threadsNode && !(Number.isInteger(threadsNode.value) && (threadsNode.value as number) >= 1))
    fail(at(threadsNode), 'threads must be a positive integer');
  const stepsNode = top.get('steps', true);
  if (!isSeq(stepsNode) || stepsNode.items.length === 0) fail(at(stepsNode ?? top), '"steps" must be a non-empty list');
  const steps: Step[] = [];
  for (const item of (stepsNode as unknown as { items: unknown[] }).items) {
    if (!isMap(item) || item.items.length !== 1)
      fail(at(item), 'each step is one mapping, e.g. "- prune: { method: reap, keep: 4 }"');
    const pair = (item as YAMLMap).items[0];
    const kind = String((pair.key as Scalar).value);
    if (!(kind in STEP_SPECS))
      fail(at(pair.key), `unknown step "${kind}"`, `steps are ${Object.keys(STEP_SPECS).join(', ')}`);
    const keys = schema(kind as StepKind);
    const options: Record<string, unknown> = {};
    const body = pair.value;
    if (body !== null && body !== undefined && !(isMap(body) || (body as Scalar).value === null))
      fail(at(body), `the options of "${kind}" must be a mapping`);
    for (const opt of isMap(body) ? body.items : []) {
      const name = String((opt.key as Scalar).value);
      const spec = keys.get(name);
      const line = at(opt.key);
      if (!spec) fail(line, `"${kind}" has no option "${name}"`, `its options are ${[...keys.keys()].join(', ')}`);
      options[name] = checkValue(opt.value, spec!, `${kind}.${name}`, line, dir, fail, at);
    }
    for (const r of required(kind as StepKind)) {
      const any = r.split('|'); // one of these
      if (!any.some((k) => k in options))
        fail(at(pair.key), `"${kind}" needs the option ${any.map((k) => `"${k}"`).join(' or ')}`);
    }
    const baseline = options.baseline;
    if (kind === 'eval' && typeof baseline === 'string' && baseline !== 'original')
      modelNamedIn(baseline, dir, `${path.basename(abs)} line ${at(pair.key)}: eval.baseline`, abs);
    steps.push({ kind: kind as StepKind, options, line: at(pair.key) });
  }
  checkFlow(steps, fail);
  const recipe = { file: abs, model, output, backend, threads: threadsNode?.value as number | undefined, steps };
  // moe run replaces its step folders: the output never is, holds or lies inside what the steps read.
  for (const input of recipeInputs(recipe)) {
    const rel = overlap(output, input.path);
    if (rel)
      fail(
        input.line ?? at(top.get('output', true)),
        `the output folder ${output} ${rel} ${input.flag} ${input.path}, an input of the recipe`,
        'choose an output folder apart from the model and the data',
      );
  }
  return recipe;
}

/** What a recipe reads from outside its output folder: the model, and each step's data and baseline. */
export function recipeInputs(recipe: Recipe): { flag: string; path: string; line?: number }[] {
  const inputs: { flag: string; path: string; line?: number }[] = [{ flag: 'the model', path: recipe.model }];
  for (const s of recipe.steps) {
    if (typeof s.options.data === 'string')
      inputs.push({ flag: `the data of "${s.kind}"`, path: s.options.data, line: s.line });
    for (const t of (s.options.tasks as string[] | undefined) ?? [])
      inputs.push({ flag: `a task of "${s.kind}"`, path: t, line: s.line });
    const b = s.options.baseline;
    if (typeof b === 'string' && b !== 'original')
      inputs.push({
        flag: `the baseline of "${s.kind}"`,
        path: path.resolve(path.dirname(recipe.file), b),
        line: s.line,
      });
  }
  return inputs;
}

type Fail = (line: number, what: string, hint?: string) => never;

/**
 * A recipe value: its YAML type is checked here (the messages name the recipe key), then its text goes through
 * the CLI's parser for the option, so a recipe refuses what the CLI refuses. Returns the value as written (paths
 * resolved against the recipe's folder): the step key hashes it.
 */
function checkValue(
  node: unknown,
  o: OptionSpec,
  name: string,
  line: number,
  dir: string,
  fail: Fail,
  at: (n: unknown) => number,
): unknown {
  const v = (node as Scalar | null)?.value;
  const l = at(node) || line;
  const written = writtenValue(node, v, o, name, l, dir, fail);
  if (o.type !== 'bool') {
    try {
      parseText(o, String(recipeText(o, written)), name);
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      fail(l, e.message, e.hint);
    }
  }
  return written;
}

function writtenValue(
  node: unknown,
  v: unknown,
  o: OptionSpec,
  name: string,
  l: number,
  dir: string,
  fail: Fail,
): unknown {
  const type = o.type;
  if (typeof type === 'object') {
    const list = type.choices();
    if (typeof v !== 'string' || !list.includes(v))
      fail(l, `${name} is ${JSON.stringify(v)}; expected one of ${list.join(', ')}`);
    return v;
  }
  switch (type) {
    case 'int':
      if (!Number.isInteger(v)) fail(l, `${name} must be an integer, not ${JSON.stringify(v)}`);
      return v;
    case 'number':
      if (typeof v !== 'number' || !Number.isFinite(v)) fail(l, `${name} must be a number, not ${JSON.stringify(v)}`);
      return v;
    case 'bool':
      if (typeof v !== 'boolean') fail(l, `${name} must be true or false, not ${JSON.stringify(v)}`);
      return v;
    case 'onoff':
      if (typeof v !== 'boolean' && v !== 'on' && v !== 'off')
        fail(l, `${name} must be true or false (on or off), not ${JSON.stringify(v)}`);
      return v;
    case 'size':
    case 'range':
      if (typeof v !== 'string' && typeof v !== 'number')
        fail(l, `${name} must be a string or a number, not ${JSON.stringify(v)}`);
      return v;
    case 'list': {
      if (o.listOf === 'path') return pathList(node, v, name, l, dir, fail);
      if (typeof v === 'string') return v;
      const example = o.default ? ` e.g. [${o.default.split(',').join(', ')}]` : '';
      if (!isSeq(node) || !node.items.every((x) => ['string', 'number'].includes(typeof (x as Scalar).value)))
        fail(l, `${name} must be a list,${example}`);
      return (node as { items: Scalar[] }).items.map((x) => x.value);
    }
    case 'path':
    case 'file': {
      if (typeof v !== 'string') fail(l, `${name} must be a path, not ${JSON.stringify(v)}`);
      const p = path.resolve(dir, v as string);
      if (type === 'path' && !fs.existsSync(p)) fail(l, `${name}: ${p} does not exist`);
      return p;
    }
    default:
      if (typeof v !== 'string') fail(l, `${name} must be a string, not ${JSON.stringify(v)}`);
      return v;
  }
}

/** Input paths (a YAML list, or the CLI's comma-separated text), each resolved against the recipe's folder. */
function pathList(node: unknown, v: unknown, name: string, l: number, dir: string, fail: Fail): string[] {
  const items = typeof v === 'string' ? v.split(',') : isSeq(node) ? node.items.map((x) => (x as Scalar).value) : [];
  if (!items.length || items.some((x) => typeof x !== 'string' || !x))
    fail(l, `${name} must be a list of paths, e.g. [../fixtures/tasks/moby-cloze.jsonl]`);
  return (items as string[]).map((x) => {
    const p = path.resolve(dir, x);
    if (!fs.existsSync(p)) fail(l, `${name}: ${p} does not exist`);
    return p;
  });
}

/** An eval step's task options need tasks; its accuracy gate compares them against a baseline: both must be there. */
function checkEvalStep(s: Step, fail: Fail): void {
  if (s.kind !== 'eval') return;
  for (const key of ['limit', 'log_samples'])
    if (s.options[key] !== undefined && s.options.tasks === undefined)
      fail(s.line, `"eval" has ${key} but no tasks`, 'add tasks: [FILE.jsonl]');
  if (s.options.max_acc_drop === undefined) return;
  if (s.options.tasks === undefined) fail(s.line, '"eval" has max_acc_drop but no tasks', 'add tasks: [FILE.jsonl]');
  if (s.options.baseline === undefined)
    fail(s.line, '"eval" has max_acc_drop but no baseline', 'add baseline: original');
  if (!((s.options.max_acc_drop as number) >= 0)) fail(s.line, 'eval.max_acc_drop must be a number ≥ 0');
}

/** Statically checks that every prune and merge has a calibration of the model it receives. */
function checkFlow(steps: Step[], fail: Fail): void {
  let statsFresh = false;
  let gguf: Step | undefined;
  for (const s of steps) {
    checkEvalStep(s, fail);
    // moe reads a GGUF back only to evaluate it (src/gguf/source.ts): an eval may follow, nothing else.
    if (gguf && s.kind !== 'eval')
      fail(
        s.line,
        `"${s.kind}" comes after a GGUF output (line ${gguf.line}), which moe reads only to evaluate`,
        'make the GGUF quantize the last step, or follow it with eval steps only',
      );
    if (s.kind === 'quantize' && s.options.format === 'gguf') gguf = s;
    if (s.kind === 'calibrate') statsFresh = true;
    if (s.kind === 'prune' || s.kind === 'merge') {
      if (!statsFresh)
        fail(
          s.line,
          `"${s.kind}" needs a calibration of the model it receives`,
          'add a calibrate step before it (after any step that changes the model)',
        );
      if ((s.options.keep === undefined) === (s.options.ratio === undefined))
        fail(s.line, `"${s.kind}" takes exactly one of keep or ratio`);
      statsFresh = false;
    }
    if (s.kind === 'quantize') {
      if (s.options.stats === true && !statsFresh)
        fail(s.line, '"quantize" has stats: true but no calibration of the model it receives');
      if (s.options.format !== 'gguf' && s.options.bits === undefined)
        fail(s.line, '"quantize" needs bits (or format: gguf with type or bpw)');
      statsFresh = false;
    }
  }
}
