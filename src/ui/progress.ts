/**
 * Progress and logs, always on stderr so `--json` keeps stdout clean. On a TTY a cli-progress bar; otherwise
 * (CI logs) one plain line per step, at most every `PLAIN_EVERY_MS` plus the last one.
 */
import { SingleBar, Presets } from 'cli-progress';

const PLAIN_EVERY_MS = 2000;

export interface Progress {
  /** Advances by `n` units (bytes, tensors, tokens...). */
  tick(n?: number): void;
  done(): void;
}

export interface Context {
  log(msg: string): void;
  warn(msg: string): void;
  progress(label: string, total: number, unit?: 'bytes' | 'items'): Progress;
  debug: boolean;
}

export interface ContextOptions {
  debug?: boolean;
  quiet?: boolean;
  tty?: boolean;
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2)} ${units[i]}`;
}

export function createContext(opts: ContextOptions = {}): Context {
  const stream = opts.stream ?? process.stderr;
  const tty = opts.tty ?? !!stream.isTTY;
  const write = (s: string) => {
    if (!opts.quiet) stream.write(s + '\n');
  };
  return {
    debug: !!opts.debug,
    log: write,
    warn: (m) => stream.write(`moe: warning: ${m}\n`),
    progress(label, total, unit = 'items') {
      if (opts.quiet) return { tick() {}, done() {} };
      return tty ? barProgress(stream, label, total, unit) : plainProgress(write, label, total, unit);
    },
  };
}

function barProgress(stream: NodeJS.WritableStream, label: string, total: number, unit: 'bytes' | 'items'): Progress {
  const bar = new SingleBar(
    {
      stream,
      format: `${label} [{bar}] {percentage}% | {shown} | eta {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: false,
    },
    Presets.shades_classic,
  );
  let value = 0;
  const shown = () => (unit === 'bytes' ? `${formatBytes(value)}/${formatBytes(total)}` : `${value}/${total}`);
  bar.start(total, 0, { shown: shown() });
  return {
    tick(n = 1) {
      value += n;
      bar.update(value, { shown: shown() });
    },
    done() {
      bar.stop();
    },
  };
}

function plainProgress(write: (s: string) => void, label: string, total: number, unit: 'bytes' | 'items'): Progress {
  let value = 0;
  const started = Date.now();
  let last = started;
  const line = () => {
    const pct = total > 0 ? Math.floor((100 * value) / total) : 100;
    const amount = unit === 'bytes' ? `${formatBytes(value)}/${formatBytes(total)}` : `${value}/${total}`;
    write(`${label}: ${pct}% (${amount}, ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  };
  return {
    tick(n = 1) {
      value += n;
      const now = Date.now();
      if (now - last >= PLAIN_EVERY_MS && value < total) {
        last = now;
        line();
      }
    },
    done() {
      line();
    },
  };
}
