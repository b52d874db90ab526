/** Shared test helpers: temporary folders, a quiet context, running the built CLI, raw safetensors files. */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { CalibrateOptions } from '../src/commands/calibrate';
import type { Config } from '../src/io/checkpoint';
import type { DType } from '../src/io/dtype';
import { synthesize } from '../src/synth/generate';
import { PRESETS } from '../src/synth/presets';
import { createContext } from '../src/ui/progress';

export const ROOT = path.join(__dirname, '..');
export const GOLDEN = path.join(ROOT, 'fixtures', 'golden');
export const quiet = createContext({ quiet: true });

/** n seeded windows of T token ids below `vocab` (an LCG: the same ids on every run). */
export function seededWindows(n: number, T: number, vocab: number, seed = 1): number[][] {
  let x = seed;
  return [...Array(n)].map(() =>
    [...Array(T)].map(() => {
      x = (x * 1103515245 + 12345) % 2147483648;
      return x % vocab;
    }),
  );
}

/** A fresh folder under the run's root (removed by global-teardown). */
export function tmpDir(prefix = 'moe-test-'): string {
  return fs.mkdtempSync(path.join(process.env.MOE_TEST_TMP ?? os.tmpdir(), prefix));
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `moe ARGS` in a child process (bin/moe.js over dist/): for signals, ulimit, a full disk, a TTY or exit behaviour. */
export function runCli(args: string[], cwd = ROOT): CliResult {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'moe.js'), ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, CI: 'true' },
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * `moe ARGS` in this process through main() (the path bin/moe.js takes, without a child process's ~0.4 s of start-up):
 * exit code and what it wrote to stdout and stderr, with CI=true as runCli sets it. Nothing leaks into the test: the
 * writes are captured and restored, the SIGINT/SIGTERM handlers main() installs are removed, process.exitCode and the
 * working folder are put back. One difference from the built CLI: src/quant/rtn-worker.js exists only in dist/, so
 * plain RTN runs on the main thread here (the same bytes); use runCli where the worker threads are the point.
 */
export async function runMain(args: string[], cwd = ROOT): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const streams = [process.stdout, process.stderr] as const;
  const writes = streams.map((s) => s.write);
  const capture =
    (to: (s: string) => void) =>
    (chunk: unknown, enc?: unknown, cb?: unknown): boolean => {
      to(typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8'));
      const done = typeof enc === 'function' ? enc : cb;
      if (typeof done === 'function') process.nextTick(done as () => void);
      return true;
    };
  process.stdout.write = capture((s) => (stdout += s)) as typeof process.stdout.write;
  process.stderr.write = capture((s) => (stderr += s)) as typeof process.stderr.write;
  const signals = (['SIGINT', 'SIGTERM'] as const).map((sig) => [sig, process.listeners(sig)] as const);
  const env = process.env.CI;
  const exitCode = process.exitCode;
  const dir = process.cwd();
  process.env.CI = 'true';
  if (cwd !== dir) process.chdir(cwd);
  try {
    const { main } = await import('../src/main');
    const code = await main(args);
    return { code, stdout, stderr };
  } finally {
    streams.forEach((s, i) => (s.write = writes[i] as typeof s.write));
    for (const [sig, before] of signals)
      for (const l of process.listeners(sig)) if (!before.includes(l)) process.removeListener(sig, l);
    if (env === undefined) delete process.env.CI;
    else process.env.CI = env;
    process.exitCode = exitCode;
    if (process.cwd() !== dir) process.chdir(dir);
  }
}

/**
 * The shared calibration of fixtures/tiny-moe (test/fixture-stats.js: compressed-ppl.json's options), made once by
 * global setup; made here (once per test file) when the setup did not, e.g. in a run filtered by name.
 */
export async function fixtureStats(): Promise<string> {
  const shared = process.env.MOE_FIXTURE_STATS;
  if (shared && fs.existsSync(path.join(shared, 'stats.json'))) return shared;
  const { fixtureCalibration } = require('./fixture-stats') as {
    fixtureCalibration: () => { options: Record<string, unknown> };
  };
  const { calibrate } = await import('../src/commands/calibrate');
  const output = path.join(tmpDir('moe-fixture-stats-'), 'stats');
  await calibrate({ ...(fixtureCalibration().options as Omit<CalibrateOptions, 'output'>), output }, quiet);
  return output;
}

export async function makeSynth(
  arch: string,
  dir: string,
  opts: { dtype?: DType; maxShardBytes?: number; seed?: number; set?: Config } = {},
): Promise<string> {
  await synthesize(
    {
      config: { ...PRESETS[arch], ...opts.set },
      output: dir,
      dtype: opts.dtype,
      maxShardBytes: opts.maxShardBytes,
      seed: opts.seed ?? 1,
    },
    quiet,
  );
  return dir;
}

/** Reads a safetensors header with a parser independent of src/io (for cross-checks). */
export function rawHeader(file: string): {
  n: number;
  json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
} {
  const fd = fs.openSync(file, 'r');
  try {
    const len = Buffer.alloc(8);
    fs.readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    const buf = Buffer.alloc(n);
    fs.readSync(fd, buf, 0, n, 8);
    const json = JSON.parse(buf.toString('utf8'));
    delete json.__metadata__;
    return { n, json };
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes a safetensors file from a header object and a data buffer, with no validation at all. */
export function writeRaw(file: string, header: unknown, data: Uint8Array, headerLenOverride?: bigint): void {
  const text = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(text.length));
  fs.writeFileSync(file, Buffer.concat([len, text, Buffer.from(data)]));
}

export function listDir(dir: string): string[] {
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
}
