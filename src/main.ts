/** The entry point: the one top-level try/catch, and the only place that sets the exit code. */
import { CommanderError } from 'commander';
import { buildCli } from './cli';
import { EXIT, MoeError } from './errors';
import { removePendingOutputs } from './io/output';
import { stopProgress } from './ui/progress';

function onSignal(signal: NodeJS.Signals): void {
  stopProgress();
  removePendingOutputs();
  process.stderr.write(`moe: interrupted by ${signal}; nothing was written at the destination\n`);
  process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await buildCli().parseAsync(argv, { from: 'user' });
    return EXIT.ok;
  } catch (e) {
    stopProgress(); // the error line goes below the bars, not into them
    removePendingOutputs();
    if (e instanceof CommanderError) {
      // Only help and --version get here (commander printed them); its errors arrive as UsageError (cli.ts).
      return e.exitCode === 0 || e.code === 'commander.helpDisplayed' || e.code === 'commander.version'
        ? EXIT.ok
        : EXIT.usage;
    }
    if (e instanceof MoeError) {
      process.stderr.write(`moe: ${e.line()}\n`);
      if (debug) process.stderr.write(`${e.stack}\n`);
      return e.exitCode;
    }
    const err = e as NodeJS.ErrnoException;
    if (err?.code === 'ENOSPC') {
      process.stderr.write(
        `moe: no space left on the device${err.path ? ` (${err.path})` : ''}; free space or choose another destination\n`,
      );
      return EXIT.badInput;
    }
    // Node ignores SIGXFSZ, so a write past `ulimit -f` fails with EFBIG instead of killing the process.
    if (err?.code === 'EFBIG') {
      process.stderr.write(
        `moe: a file reached the file size limit (ulimit -f)${err.path ? ` (${err.path})` : ''}; raise the limit or choose a smaller output\n`,
      );
      return EXIT.badInput;
    }
    process.stderr.write(
      `moe: internal error: ${err?.message ?? String(e)}; please report this with the command and --debug output\n`,
    );
    if (debug) process.stderr.write(`${err?.stack}\n`);
    return EXIT.internal;
  }
}

/** Called by bin/moe.js. */
export function run(): void {
  // `moe inspect M | head`: a closed pipe ends the output quietly, as for any Unix tool.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
