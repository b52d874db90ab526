#!/usr/bin/env node
/**
 * Speed of `moe eval --task` against lm-evaluation-harness's Hugging Face backend (float32, torch CPU, the same
 * threads) on fixtures/tiny-moe and the bundled task fixtures/tasks/moby-cloze.jsonl (200 items × 4 choices).
 *
 *   npm run build && node bench/tasks.js [--threads N] [--batch B] [--python PATH]
 *
 *   --threads N   compute threads of both (default 2)
 *   --batch B     lm-eval's batch_size (default 32; 1 is lm-eval's own default and much slower)
 *   --python P    Python with torch, transformers and lm-eval (default .venv/bin/python; see scripts/check_tasks.py)
 *
 * Each side runs as a whole process, wall clock from spawn to exit (imports, model loading, tokenization, scoring);
 * items/second = 200 / that time. lm-eval: scripts/check_tasks.py --bench B (simple_evaluate, log_samples on).
 * moe: node bin/moe.js eval fixtures/tiny-moe --task … --json --log-samples. Both must give every choice's
 * log-likelihood within 1e-3 and the same acc; the exit code is 1 when they do not. Goal (issue 21): moe ≥ 2× lm-eval.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const TASK = path.join(ROOT, 'fixtures', 'tasks', 'moby-cloze.jsonl');
const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

function timed(cmd, args, env) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 1 << 28 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return { seconds, stdout: r.stdout };
}

function main() {
  const threads = arg('--threads', '2');
  const batch = arg('--batch', '32');
  const python = arg('--python', path.join(ROOT, '.venv', 'bin', 'python'));
  const env = { OMP_NUM_THREADS: threads, MOE_THREADS: threads };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-tasks-'));
  try {
    const samples = path.join(tmp, 'samples.jsonl');
    const moe = timed('node', ['bin/moe.js', 'eval', MODEL, '--task', TASK, '--json', '--log-samples', samples], env);
    const report = JSON.parse(moe.stdout).tasks['moby-cloze'];
    const lm = timed(python, ['scripts/check_tasks.py', '--bench', batch], env);
    const ref = JSON.parse(lm.stdout.trim().split('\n').pop());
    const mine = fs
      .readFileSync(samples, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    let maxDiff = 0;
    mine.forEach((s, i) =>
      s.loglikelihoods.forEach((ll, c) => (maxDiff = Math.max(maxDiff, Math.abs(ll - ref.loglikelihoods[i][c])))),
    );
    const n = mine.length;
    const rows = [
      ['lm-eval (hf, float32, batch ' + batch + ')', lm.seconds, n / lm.seconds, ref.acc],
      ['moe eval --task', moe.seconds, n / moe.seconds, report.acc],
    ];
    console.log(`${n} items, ${threads} threads; whole-process wall clock`);
    for (const [name, s, ips, acc] of rows)
      console.log(`${name.padEnd(34)} ${s.toFixed(1).padStart(7)} s ${ips.toFixed(2).padStart(8)} items/s  acc ${acc}`);
    const ratio = lm.seconds / moe.seconds;
    console.log(
      `moe / lm-eval speed: ${ratio.toFixed(2)}× (goal ≥ 2×); max |Δ log-likelihood| ${maxDiff.toExponential(2)}`,
    );
    const ok = maxDiff < 1e-3 && report.acc === ref.acc;
    if (!ok) console.log('FAILED: moe and lm-eval disagree');
    process.exitCode = ok ? 0 : 1;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main();
