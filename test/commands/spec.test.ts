/**
 * One spec per command (src/commands/spec.ts): the CLI and the recipes are derived from it. For every option of
 * every command a recipe step runs, a recipe accepts it under its snake_case key with the value the CLI gives the
 * command, has the CLI's default (read back from the built commander command), and refuses what the CLI refuses.
 * All in-process: commander's parser and loadRecipe on temporary YAML files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { BACKEND_NAMES } from '../../src/backend';
import { buildCli, commandOptions, COMMANDS } from '../../src/cli';
import { choicesOf, CommandSpec, longName, OptionSpec, optionKey, recipeKey } from '../../src/commands/spec';
import { UsageError } from '../../src/errors';
import { mergeMethodNames } from '../../src/merge/methods';
import { pruneMethod, pruneMethodNames, registerPruneMethod } from '../../src/prune/methods';
import { loadRecipe, STEP_SPECS, StepKind, stepOptionSpecs, stepValues } from '../../src/commands/recipe';
import { PRESETS } from '../../src/synth/presets';
import { ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const CALIB = path.join(ROOT, 'fixtures', 'text', 'calib.txt');
const EVAL = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
const TASK = path.join(ROOT, 'fixtures', 'tasks', 'moby-cloze.jsonl');
const KINDS = Object.keys(STEP_SPECS) as StepKind[];
const work = tmpDir('moe-spec-');

/** A value each option accepts, as CLI text. */
function goodText(o: OptionSpec): string {
  if (o.default !== undefined) return o.default;
  const choices = choicesOf(o);
  if (choices) return choices[choices.length - 1];
  const byType: Record<string, string> = {
    int: String((o.min ?? 0) + 3),
    number: '0.5',
    size: '1GB',
    range: '0-1',
    path: EVAL,
    list: EVAL, // eval --task (a list of files; one here)
    file: path.join(work, 'x.json'),
    string: 'original',
  };
  return byType[o.type as string];
}

/** Values the CLI refuses, by type (and for the options with their own parser). */
function badTexts(o: OptionSpec): string[] {
  const own: Record<string, string[]> = { 'bit-choices': ['2,9', 'x'], 'type-menu': ['q2_k,q9_k'], type: ['q9_k'] };
  if (own[longName(o)]) return own[longName(o)];
  if (choicesOf(o)) return ['bogus'];
  if (o.type === 'int') return ['1.5', 'x', String((o.min ?? 0) - 1)];
  if (o.type === 'number') return ['abc'];
  if (o.type === 'size') return ['5XB', '0'];
  if (o.type === 'range') return ['a-b'];
  return [];
}

/** The text as a YAML value: numbers and booleans bare, strings quoted, lists as lists. */
const yaml = (o: OptionSpec, text: string): string =>
  o.type === 'bool'
    ? 'true'
    : o.type === 'list' && /^[\w,]+$/.test(text) && !text.includes('9')
      ? `[${text}]`
      : /^-?\d+(\.\d+)?$/.test(text)
        ? text
        : JSON.stringify(text);

/** What each step needs in a valid recipe. */
const BASE: Record<StepKind, Record<string, string>> = {
  calibrate: { data: JSON.stringify(CALIB) },
  prune: { method: 'reap', keep: '4' },
  merge: { method: 'msmoe', keep: '4' },
  quantize: { bits: '4' },
  eval: { data: JSON.stringify(EVAL) },
};

/** A recipe whose last step is `kind` with `extra` options (the steps before it make the flow valid). */
function recipeFile(kind: StepKind, extra: Record<string, string>): { file: string; line: number } {
  const opts = { ...BASE[kind] };
  if ('ratio' in extra) delete opts.keep;
  // Task options need tasks, an accuracy gate also a baseline (checked when the recipe is loaded).
  if (kind === 'eval' && ['max_acc_drop', 'limit', 'log_samples'].some((k) => k in extra))
    Object.assign(opts, { tasks: `[${JSON.stringify(TASK)}]`, baseline: 'original' });
  Object.assign(opts, extra);
  const steps = [
    ...(kind === 'prune' || kind === 'merge' ? [`  - calibrate: { data: ${JSON.stringify(CALIB)} }`] : []),
    `  - ${kind}: { ${Object.entries(opts)
      .map(([k, v]) => `${k}: ${v}`)
      .join(', ')} }`,
  ];
  const file = path.join(work, `r${Math.random().toString(36).slice(2)}.yaml`);
  fs.writeFileSync(file, `model: ${MODEL}\noutput: ${path.join(work, 'out')}\nsteps:\n${steps.join('\n')}\n`);
  return { file, line: 3 + steps.length };
}

/** The command line the CLI needs besides `o`: its mandatory options. */
function requiredArgs(spec: CommandSpec, except: OptionSpec): string[] {
  return spec.options
    .filter((r) => r.required && r !== except)
    .flatMap((r) => [`--${longName(r)}`, choicesOf(r)?.[0] ?? (r.type === 'path' ? EVAL : 'x')]);
}

/** The options the CLI gives the command for this command line (parsed, not run). */
function cliValues(kind: StepKind, argv: string[]): Record<string, unknown> {
  const cmd = buildCli().commands.find((c) => c.name() === kind)!;
  cmd.parseOptions(argv);
  return commandOptions(STEP_SPECS[kind], cmd.opts());
}

const cases = KINDS.flatMap((kind) => stepOptionSpecs(kind).map((o) => [kind, recipeKey(o), o] as const));

describe('every option of a recipe-able command is a recipe key with the CLI default and validation', () => {
  test('the recipe-able commands have their options (none forgotten)', () => {
    expect(cases.length).toBeGreaterThan(50);
    expect(cases.map(([k, key]) => `${k}.${key}`)).toEqual(
      expect.arrayContaining([
        'calibrate.batch_tokens',
        'calibrate.activation_memory',
        'prune.naee_limit',
        'prune.max_shard_size',
        'quantize.type_menu',
        'quantize.damp',
        'eval.device',
        'eval.batch_tokens',
      ]),
    );
  });

  test.each(cases)('%s.%s: accepted, same value as the CLI gives', (kind, key, o) => {
    const text = goodText(o);
    const { file } = recipeFile(kind, { [key]: yaml(o, text) });
    const step = loadRecipe(file).steps.at(-1)!;
    const argv = [...requiredArgs(STEP_SPECS[kind], o), `--${longName(o)}`, ...(o.type === 'bool' ? [] : [text])];
    const cli = cliValues(kind, argv);
    expect(stepValues(step)[optionKey(o)]).toEqual(o.type === 'bool' ? true : cli[optionKey(o)]);
    expect(cli[optionKey(o)]).not.toBeUndefined();
  });

  test.each(cases.filter(([kind, key, o]) => !o.required && !(key in BASE[kind])))(
    '%s.%s: the recipe default is the CLI default',
    (kind, key, o) => {
      const cmd = buildCli().commands.find((c) => c.name() === kind)!;
      const flag = cmd.options.find((x) => x.long === `--${longName(o)}`)!;
      expect(flag.defaultValue).toBe(o.default);
      const step = loadRecipe(recipeFile(kind, {}).file).steps.at(-1)!;
      const cli = cliValues(kind, requiredArgs(STEP_SPECS[kind], o));
      expect(stepValues(step)[optionKey(o)]).toEqual(cli[optionKey(o)]);
      if (o.type === 'bool') expect(cli[optionKey(o)]).toBe(false);
    },
  );

  const rejects = cases.flatMap(([kind, key, o]) => badTexts(o).map((bad) => [kind, key, bad, o] as const));
  test.each(rejects)('%s.%s = %s: refused by the CLI and by the recipe', async (kind, key, bad, o) => {
    const argv = ['node', 'moe', kind, MODEL, ...requiredArgs(STEP_SPECS[kind], o), `--${longName(o)}=${bad}`];
    const cli = buildCli().parseAsync(argv);
    await expect(cli).rejects.toThrow(UsageError);
    await expect(cli).rejects.toThrow(new RegExp(`--${longName(o)}`));
    const { file, line } = recipeFile(kind, { [key]: yaml(o, bad) });
    expect(() => loadRecipe(file)).toThrow(UsageError);
    expect(() => loadRecipe(file)).toThrow(new RegExp(`line ${line}: ${kind}\\.${key}`));
  });

  test('a GGUF type the CLI refuses is refused at recipe load, with the line', () => {
    const { file, line } = recipeFile('quantize', { format: 'gguf', type: 'q9_k' });
    expect(() => loadRecipe(file)).toThrow(`line ${line}: quantize.type "q9_k" is not a GGUF type moe writes`);
  });
});

describe('choices come from the registries', () => {
  const option = (cmd: Command | undefined, flag: string) => cmd?.options.find((o) => o.long === flag);
  const command = (cli: Command, name: string) => cli.commands.find((c) => c.name() === name);

  test('--method of prune and merge, --backend everywhere, --arch of synth', () => {
    const cli = buildCli();
    expect(option(command(cli, 'prune'), '--method')!.argChoices).toEqual(pruneMethodNames());
    expect(option(command(cli, 'merge'), '--method')!.argChoices).toEqual(mergeMethodNames());
    const withBackend = cli.commands.filter((c) => option(c, '--backend'));
    expect(withBackend.map((c) => c.name()).sort()).toEqual([
      'calibrate',
      'demo',
      'eval',
      'generate',
      'merge',
      'prune',
      'quantize',
      'run',
    ]);
    for (const c of withBackend)
      expect([...option(c, '--backend')!.argChoices!].sort()).toEqual([...BACKEND_NAMES].sort());
    for (const c of withBackend) expect(option(c, '--threads')).toBeDefined();
    const synth = COMMANDS.find((s) => s.name === 'synth')!;
    const arch = synth.options.find((o) => longName(o) === '--arch'.slice(2))!;
    expect(choicesOf(arch)).toEqual(Object.keys(PRESETS));
    expect(option(command(cli, 'synth'), '--arch')!.description).toBe(
      Object.keys(PRESETS).slice(0, -1).join(', ') + ' or ' + Object.keys(PRESETS).at(-1),
    );
  });

  test('a method registered at run time is a choice of the CLI and of recipes', () => {
    // Registered for the rest of this file (jest gives each test file its own modules).
    registerPruneMethod({ ...pruneMethod('frequency')!, name: 'test-method' });
    expect(option(command(buildCli(), 'prune'), '--method')!.argChoices).toContain('test-method');
    expect(loadRecipe(recipeFile('prune', { method: 'test-method' }).file).steps[1].options.method).toBe('test-method');
  });
});

describe('moe run --backend / --threads', () => {
  test("refused like the other commands' flags", async () => {
    await expect(buildCli().parseAsync(['node', 'moe', 'run', 'r.yaml', '--threads', '0'])).rejects.toThrow(
      '--threads "0" is not an integer ≥ 1',
    );
    await expect(buildCli().parseAsync(['node', 'moe', 'run', 'r.yaml', '--backend', 'gpu'])).rejects.toThrow(
      /option '--backend <name>' argument 'gpu' is invalid/,
    );
  });
});
