#!/usr/bin/env node
/**
 * GPTQ speed against a torch CPU reference (scripts/gptq_reference.py, same algorithm and grid, same threads) on
 * a 2048 × 1408 weight (DeepSeek-V2-Lite's expert down_proj) with a Hessian from 4096 correlated input rows.
 * Each side's time is the whole GPTQ call (Cholesky included), the fastest of --repeat runs.
 *
 *   npm run build && node bench/gptq.js [--rows 2048] [--cols 1408] [--bits 4] [--threads 2] [--repeat 3] [--json]
 *
 * Acceptance (issue): moe's time ≤ 2 × torch's. Also prints each one's ‖(W − Q)X‖² and RTN's (GPTQ's must be lower).
 * The exit code is 1 when moe is more than 2× slower.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');
const { DIST, lcg, ROOT, run, withWorkDir } = lib;

const { createBackend } = require(path.join(DIST, 'backend', 'index.js'));
const { gptq } = require(path.join(DIST, 'quant', 'gptq.js'));
const { dequantize, outputError, quantizeRtn } = require(path.join(DIST, 'quant', 'rtn.js'));

function args(argv) {
  const o = {
    rows: 2048,
    cols: 1408,
    bits: 4,
    groupSize: 128,
    threads: 2,
    repeat: 3,
    samples: 4096,
    json: false,
    python: lib.PYTHON,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => Number(argv[++i]);
    if (a === '--rows') o.rows = v();
    else if (a === '--cols') o.cols = v();
    else if (a === '--bits') o.bits = v();
    else if (a === '--group-size') o.groupSize = v();
    else if (a === '--threads') o.threads = v();
    else if (a === '--repeat') o.repeat = v();
    else if (a === '--samples') o.samples = v();
    else if (a === '--python') o.python = argv[++i];
    else if (a === '--json') o.json = true;
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

/** Uniform in [0, 1) from the Numerical Recipes LCG. */
function rng(seed) {
  const next = lcg(seed);
  return () => next() / 4294967296;
}

async function main() {
  const o = args(process.argv.slice(2));
  const r = rng(42);
  const W = Float32Array.from({ length: o.rows * o.cols }, () => (r() - 0.5) * 0.05 * (r() < 0.01 ? 6 : 1));
  // Inputs with correlated columns and a few outlier channels, like activations; H = XᵀX.
  const X = new Float32Array(o.samples * o.cols);
  for (let t = 0; t < o.samples; t++)
    for (let c = 0; c < o.cols; c++)
      X[t * o.cols + c] = (r() - 0.5) * (c % 97 === 0 ? 8 : 1) + (c > 0 ? 0.5 * X[t * o.cols + c - 1] : 0);
  const be = await createBackend('onnx', { threads: o.threads });
  const Xt = new Float32Array(o.cols * o.samples);
  for (let t = 0; t < o.samples; t++) for (let c = 0; c < o.cols; c++) Xt[c * o.samples + t] = X[t * o.cols + c];
  const H = await be.linear(Xt, Xt, o.cols, o.samples, o.cols);
  const spec = { bits: o.bits, groupSize: o.groupSize };
  const times = [];
  let q;
  for (let i = 0; i < o.repeat; i++) {
    const t0 = process.hrtime.bigint();
    q = await gptq(W, o.rows, o.cols, H, spec, {}, be);
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const moeErr = await outputError(W, dequantize(q), o.rows, o.cols, { full: H }, be);
  const rtnErr = await outputError(
    W,
    dequantize(quantizeRtn(W, o.rows, o.cols, spec)),
    o.rows,
    o.cols,
    { full: H },
    be,
  );
  await be.dispose();
  const result = {
    rows: o.rows,
    cols: o.cols,
    bits: o.bits,
    group_size: o.groupSize,
    threads: o.threads,
    moe_seconds: Math.min(...times),
    moe_all_seconds: times,
    moe_error: moeErr,
    rtn_error: rtnErr,
    torch: null,
  };
  if (fs.existsSync(o.python)) {
    withWorkDir('moe-gptq-', (dir) => {
      fs.writeFileSync(path.join(dir, 'w.f32'), Buffer.from(W.buffer));
      fs.writeFileSync(path.join(dir, 'h.f32'), Buffer.from(H.buffer, H.byteOffset, H.byteLength));
      const p = spawnSync(
        o.python,
        [
          path.join(ROOT, 'scripts', 'gptq_reference.py'),
          '--w',
          path.join(dir, 'w.f32'),
          '--h',
          path.join(dir, 'h.f32'),
          '--rows',
          String(o.rows),
          '--cols',
          String(o.cols),
          '--bits',
          String(o.bits),
          '--group-size',
          String(o.groupSize),
          '--threads',
          String(o.threads),
          '--repeat',
          String(o.repeat),
        ],
        { encoding: 'utf8' },
      );
      if (p.status !== 0) throw new Error(`gptq_reference.py failed: ${p.stderr}`);
      result.torch = JSON.parse(p.stdout.trim().split('\n').pop());
    });
  }
  const ratio = result.torch ? result.moe_seconds / result.torch.seconds : null;
  result.ratio = ratio;
  if (o.json) console.log(JSON.stringify(result));
  else {
    console.log(
      `GPTQ of a [${o.rows}, ${o.cols}] weight at ${o.bits} bits, groups of ${o.groupSize}, ${o.threads} thread(s); Hessian from ${o.samples} input rows`,
    );
    console.log(
      `  moe:   ${result.moe_seconds.toFixed(3)} s (runs: ${times.map((t) => t.toFixed(3)).join(', ')})  ‖(W−Q)X‖² = ${moeErr.toExponential(4)}`,
    );
    if (result.torch)
      console.log(
        `  torch: ${result.torch.seconds.toFixed(3)} s (runs: ${result.torch.all_seconds.map((t) => t.toFixed(3)).join(', ')})  ‖(W−Q)X‖² = ${result.torch.error.toExponential(4)}  (torch ${result.torch.torch})`,
      );
    else console.log(`  torch: skipped (no ${o.python}; see scripts/README.md)`);
    console.log(`  RTN:   ‖(W−Q)X‖² = ${rtnErr.toExponential(4)}`);
    if (ratio !== null) console.log(`  moe / torch = ${ratio.toFixed(2)} (need ≤ 2: ${ratio <= 2 ? 'ok' : 'FAILED'})`);
  }
  if (ratio !== null && ratio > 2) process.exitCode = 1;
}

run(main);
