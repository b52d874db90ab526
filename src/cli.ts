/** The command line, built from the command specs (src/commands/spec.ts): no option is declared here. */
import { Command, CommanderError, Option } from 'commander';
import { assembleSpec } from './commands/assemble';
import { calibrateSpec } from './commands/calibrate';
import { convertSpec } from './commands/convert';
import { demoSpec } from './commands/demo';
import { evalSpec } from './commands/eval';
import { generateSpec } from './commands/generate';
import { inspectSpec } from './commands/inspect';
import { mergeSpec } from './commands/merge';
import { pruneSpec } from './commands/prune';
import { quantizeSpec } from './commands/quantize';
import { reportSpec } from './commands/report';
import { runSpec } from './commands/run';
import { anySpec, attributeName, CommandSpec, describe, longName, OptionSpec, parseOptions } from './commands/spec';
import { synthSpec } from './commands/synth';
import { verifySpec } from './commands/verify';
import { UsageError } from './errors';
import { createContext, Context } from './ui/progress';
import { VERSION } from './version';

/** Every command, in the order of `moe --help`. */
export const COMMANDS: CommandSpec[] = [
  inspectSpec,
  convertSpec,
  calibrateSpec,
  pruneSpec,
  mergeSpec,
  quantizeSpec,
  runSpec,
  reportSpec,
  assembleSpec,
  verifySpec,
  evalSpec,
  generateSpec,
  synthSpec,
  demoSpec,
].map((s) => anySpec(s as CommandSpec<object>));

const EXAMPLES = [
  'moe demo                                   # the whole job on the bundled tiny model',
  'moe inspect ./Qwen3-30B-A3B',
  'moe calibrate ./model --data calib.txt -o ./stats',
  'moe prune ./model --stats ./stats --method reap --ratio 0.5 -o ./model-reap50',
  'moe quantize ./model-reap50 --bits 4 -o ./model-int4',
  'moe eval ./model-int4 --baseline ./model --data eval.txt',
  'moe run recipes/demo.yaml --dry-run',
];

function context(cmd: Command, json: boolean): Context {
  const g = cmd.optsWithGlobals() as { debug?: boolean };
  return createContext({ debug: g.debug, quiet: false, tty: json ? false : undefined });
}

/** Prints a report: one JSON object on stdout with --json, else the human text. */
function emit(report: object, json: boolean, human: () => string): void {
  if (json) {
    process.stdout.write(JSON.stringify({ ...report, peak_rss_bytes: process.resourceUsage().maxRSS * 1024 }) + '\n');
  } else {
    process.stdout.write(human() + '\n');
  }
}

const examples = (lines: string[]): string => `\nExamples:\n${lines.map((l) => `  ${l}`).join('\n')}`;

/** A commander option from its spec; the choices are read from the registries now. */
export function commanderOption(o: OptionSpec): Option {
  const opt = new Option(o.flag, describe(o));
  if (o.type === 'onoff') opt.choices(['on', 'off']);
  else if (typeof o.type === 'object' && o.type.shown !== false) opt.choices(o.type.choices());
  if (o.default !== undefined) opt.default(o.default);
  if (o.required) opt.makeOptionMandatory();
  return opt;
}

/** The options of a command as its spec's run takes them (the flag's text through the option's parser). */
export function commandOptions(spec: CommandSpec, opts: Record<string, unknown>): Record<string, unknown> {
  return parseOptions(
    spec.options,
    (o) => opts[attributeName(o)],
    (o) => `--${longName(o)}`,
  );
}

function addCommand(program: Command, spec: CommandSpec): void {
  const cmd = program.command(spec.name).description(spec.summary);
  for (const a of spec.args) cmd.argument(a.name, a.description);
  for (const o of spec.options) cmd.addOption(commanderOption(o));
  cmd.addHelpText('after', examples(spec.examples) + (spec.epilog ?? ''));
  cmd.action(async (...params: unknown[]) => {
    const c = params[params.length - 1] as Command;
    const opts = c.opts();
    const values = commandOptions(spec, opts);
    const args = (c.processedArgs as (string | string[])[]).flat();
    const report = await spec.run(args, values, context(c, !!opts.json));
    emit(spec.json ? spec.json(report) : report, !!opts.json, () => spec.format(report));
    spec.check?.(report);
  });
}

export function buildCli(): Command {
  const program = new Command();
  program
    .name('moe')
    .description(
      'Make Mixture-of-Experts models smaller: inspect, convert, calibrate, prune, merge, quantize and evaluate Hugging Face MoE checkpoints.',
    )
    .version(VERSION, '-V, --version', "print moe's version")
    .option('--debug', 'print stack traces on errors')
    // commander's own errors are thrown as UsageError (below) and printed by main.ts in moe's one-line style.
    .configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: () => {} })
    .exitOverride(usageExit('moe'))
    .addHelpText('after', examples(EXAMPLES) + "\n\nRun moe <command> --help for a command's options and examples.");
  for (const spec of COMMANDS) addCommand(program, spec);
  for (const c of program.commands) c.exitOverride(usageExit(`moe ${c.name()}`));
  return program;
}

/** commander's exits that are not errors: help, version, and `moe` alone (help on stderr, exit 2 in main.ts). */
const NOT_ERRORS = new Set([
  'commander.helpDisplayed',
  'commander.help',
  'commander.version',
  'commander.executeSubCommandAsync',
]);

/** Turns commander's own errors (unknown option, missing argument, invalid choice...) into one-line usage errors. */
function usageExit(name: string): (e: CommanderError) => never {
  return (e) => {
    if (NOT_ERRORS.has(e.code)) throw e;
    const message = e.message
      .replace(/^error: /, '')
      .replace(/\s*\n\s*\(Did you mean/, ' (did you mean')
      .replace(/\s*\n\s*/g, ' ')
      .replace(/\.$/, '');
    throw new UsageError(message, { hint: `run ${name} --help` });
  };
}
