/**
 * What every bench repeats: paths, options, running moe and other programs as whole timed processes (wall clock,
 * CPU seconds and peak RSS from GNU time), a temporary work folder removed afterwards, the generated bench models,
 * seeded inputs, in-process timing of calls (median), and table printing. CommonJS, so the .js benches
 * `require('./lib')` and the .mjs ones `import lib from './lib.js'`.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const MOE = path.join(ROOT, 'bin', 'moe.js');
/** The built sources (`npm run build`), for benches that call moe's code in-process. */
const DIST = path.join(ROOT, 'dist');
const FIXTURE = path.join(ROOT, 'fixtures', 'tiny-moe');
const EVAL_TEXT = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
const CALIB_TEXT = path.join(ROOT, 'fixtures', 'text', 'calib.txt');
/** Python with torch and transformers, for the reference sides (scripts/README.md). */
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
/** node-llama-cpp installed under .cache/llama (see bench/llama-gguf.mjs). */
const LLAMA = path.join(ROOT, '.cache', 'llama', 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
const GNU_TIME = '/usr/bin/time';
const MAX_BUFFER = 1 << 26;

const ARGS = process.argv.slice(2);
/** The value after `name` on the command line, or `def`. */
function option(name, def) {
  const i = ARGS.indexOf(name);
  return i >= 0 ? ARGS[i + 1] : def;
}
/** Whether `name` is on the command line. */
const flag = (name) => ARGS.includes(name);

/** Seconds since `t0` (process.hrtime.bigint()). */
const secondsSince = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;

/**
 * `node bin/moe.js ARGS --json` as a whole process: its JSON report plus wall_seconds (spawn to exit). stderr is
 * shown (progress: true) or kept for the error message.
 */
function moe(args, { progress = false } = {}) {
  const t0 = process.hrtime.bigint();
  const stdio = ['ignore', 'pipe', progress ? 'inherit' : 'pipe'];
  const r = spawnSync(process.execPath, [MOE, ...args, '--json'], { encoding: 'utf8', stdio, maxBuffer: MAX_BUFFER });
  const wall = secondsSince(t0);
  if (r.status !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.status}${progress ? '' : `: ${r.stderr}`}`);
  return { ...JSON.parse(r.stdout), wall_seconds: wall };
}

/**
 * Runs `cmd argv` as a whole process, wall clock from spawn to exit; under GNU time when present (rss: true), for
 * its CPU seconds (user + sys) and peak RSS. Throws when it fails. Returns { seconds, cpu_seconds, peak_rss_bytes,
 * stdout, stderr } (the last three undefined without GNU time).
 */
function timed(cmd, argv, { env, rss = true, label, timeoutMs } = {}) {
  const useTime = rss && fs.existsSync(GNU_TIME);
  const timeFile = path.join(os.tmpdir(), `moe-bench-time-${process.pid}-${Date.now()}`);
  const full = useTime ? [GNU_TIME, '-o', timeFile, '-f', '%e %U %S %M', cmd, ...argv] : [cmd, ...argv];
  if (label) process.stderr.write(`${label} ... `);
  const t0 = process.hrtime.bigint();
  const r = spawnSync(full[0], full.slice(1), {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: MAX_BUFFER,
    env: { ...process.env, ...env },
    timeout: timeoutMs,
  });
  const seconds = secondsSince(t0);
  let cpu;
  let peak;
  if (useTime && fs.existsSync(timeFile)) {
    const last = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ').map(Number);
    if (last.length === 4 && last.every(Number.isFinite)) {
      cpu = last[1] + last[2];
      peak = last[3] * 1024;
    }
    fs.rmSync(timeFile, { force: true });
  }
  if (r.status !== 0) {
    if (label) process.stderr.write('failed\n');
    const tail = (r.stderr || '').trim().split('\n').slice(-15).join('\n');
    throw new Error(
      `${label ? `${label}: ` : ''}\`${[cmd, ...argv].join(' ')}\` exited ${r.status ?? r.signal}\n${tail}`,
    );
  }
  return { seconds, cpu_seconds: cpu, peak_rss_bytes: peak, stdout: r.stdout, stderr: r.stderr };
}

/** The one JSON object a process printed on stdout. */
function parseJson(stdout, what) {
  try {
    return JSON.parse(stdout);
  } catch {
    throw new Error(`${what}: stdout is not one JSON object:\n${stdout.slice(0, 2000)}`);
  }
}

/** Runs `body(dir)` in a fresh temporary folder and removes it afterwards (also when body's promise settles). */
function withWorkDir(prefix, body, { base = os.tmpdir(), keep = false } = {}) {
  const dir = fs.mkdtempSync(path.join(base, prefix));
  const cleanup = () => {
    if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  };
  let result;
  try {
    result = body(dir);
  } catch (e) {
    cleanup();
    throw e;
  }
  if (result && typeof result.then === 'function') return result.finally(cleanup);
  cleanup();
  return result;
}

/**
 * The README tables' calibration of the trained fixture: 32,768 tokens of its calib.txt in windows of 256 (plus
 * `extra` flags), written to `out`; returns calibrate's report.
 */
function calibrateFixture(out, extra = []) {
  return moe([
    'calibrate',
    FIXTURE,
    '--data',
    CALIB_TEXT,
    '--seq-len',
    '256',
    '--max-tokens',
    '32768',
    ...extra,
    '-o',
    out,
  ]);
}

/**
 * The bench models' configs (synth --set). QWEN3_BENCH: the ~300 M-parameter Qwen3-MoE (32 experts, top-4,
 * hidden 1024, 6 layers) of the calibrate and eval benches; MIXTRAL_WIDTH: Mixtral-8x7B's layer shapes (hidden
 * 4096, 8 experts of width 14336); each bench adds its layers, vocabulary and the rest.
 */
const QWEN3_BENCH = {
  hidden_size: 1024,
  num_hidden_layers: 6,
  num_experts: 32,
  num_experts_per_tok: 4,
  moe_intermediate_size: 384,
  num_attention_heads: 16,
  num_key_value_heads: 4,
  head_dim: 64,
  vocab_size: 32768,
};
const MIXTRAL_WIDTH = {
  hidden_size: 4096,
  intermediate_size: 14336,
  num_local_experts: 8,
  num_attention_heads: 32,
  num_key_value_heads: 8,
};
/** `--set` arguments from a config object. */
const setArgs = (config) => Object.entries(config).map(([k, v]) => `${k}=${JSON.stringify(v)}`);

/** Seeded generators (each bench keeps the one its figures were measured with). */
/** Numerical Recipes' LCG: the next uint32 per call. */
function lcg(seed) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
}
/** The ANSI C LCG in float arithmetic, as the calibrate-prune and merge benches drew their token ids. */
function ansiLcg(seed) {
  let x = seed;
  return () => (x = (x * 1103515245 + 12345) % 2147483648);
}
/** xorshift32: the next uint32 per call. */
function xorshift32(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}
/** n floats in [-scale, scale) from xorshift32. */
function randomFloats(n, seed, scale = 1) {
  const next = xorshift32(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (next() / 2147483648 - 1) * scale;
  return a;
}
/** `count` windows of `length` token ids below `vocab` drawn from `next` (a generator above). */
const tokenWindows = (count, length, vocab, next) =>
  Array.from({ length: count }, () => Array.from({ length }, () => next() % vocab));

function median(xs) {
  const s = [...xs].sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)];
}

/** Median seconds per call of `fn`, over at least minReps calls and about `seconds`, after `warmup` calls. */
async function timeCalls(fn, { seconds, warmup = 1, minReps = 3 }) {
  for (let i = 0; i < warmup; i++) await fn();
  const times = [];
  const start = performance.now();
  while (times.length < minReps || performance.now() - start < seconds * 1000) {
    const t0 = performance.now();
    await fn();
    times.push((performance.now() - t0) / 1000);
  }
  return median(times);
}

/** A plain-text table: the first column left-aligned, the others right-aligned. */
function table(header, rows) {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => String(r[c]).length)));
  const line = (cells) =>
    cells.map((s, c) => (c === 0 ? String(s).padEnd(widths[c]) : String(s).padStart(widths[c]))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
}

/** Megabytes (10^6), no decimals. */
const mb = (bytes) => (bytes / 1e6).toFixed(0);

/** Bytes of a folder's files (only its .safetensors shards with shardsOnly). */
function folderBytes(dir, { shardsOnly = false } = {}) {
  return fs
    .readdirSync(dir)
    .filter((f) => !shardsOnly || f.endsWith('.safetensors'))
    .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);
}

/** node, onnxruntime-node, cores, CPU model and load average: the line the backend benches start with. */
function machineLine() {
  const cpu = os.cpus()[0];
  return (
    `node ${process.version}, onnxruntime-node ${require('onnxruntime-node/package.json').version}, ` +
    `${os.availableParallelism()} cores (${cpu ? cpu.model : 'unknown cpu'}), load average ${os.loadavg()[0].toFixed(2)}`
  );
}

/** Thread count for torch / OpenMP children (moe takes --threads). */
const threadEnv = (n) => ({ OMP_NUM_THREADS: String(n), MKL_NUM_THREADS: String(n) });

/** Runs an async main; an error is printed and exits 1. */
function run(main) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

module.exports = {
  ROOT,
  MOE,
  DIST,
  FIXTURE,
  EVAL_TEXT,
  CALIB_TEXT,
  PYTHON,
  LLAMA,
  ARGS,
  option,
  flag,
  secondsSince,
  moe,
  timed,
  parseJson,
  withWorkDir,
  calibrateFixture,
  QWEN3_BENCH,
  MIXTRAL_WIDTH,
  setArgs,
  lcg,
  ansiLcg,
  xorshift32,
  randomFloats,
  tokenWindows,
  median,
  timeCalls,
  table,
  mb,
  folderBytes,
  machineLine,
  threadEnv,
  run,
};
