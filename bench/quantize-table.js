#!/usr/bin/env node
/**
 * The README's quantization table: perplexity and file size of the trained fixture quantized by RTN and GPTQ, with
 * uniform bits and with bits allocated by the LP (MC-MoE), measured by `moe eval` on the held-out text
 * (fixtures/text/eval.txt, all of it, windows of 256) against the original.
 *   npm run build && node bench/quantize-table.js [--markdown]
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');
const { EVAL_TEXT: EVAL, FIXTURE: MODEL, flag, moe, withWorkDir } = lib;

const folderBytes = (dir) => lib.folderBytes(dir, { shardsOnly: true });

const markdown = flag('--markdown');
withWorkDir('moe-qtable-', (work) => {
  const stats = path.join(work, 'stats');
  const cal = lib.calibrateFixture(stats, ['--hessians']);
  const evalOf = (dir) => moe(['eval', dir, '--baseline', MODEL, '--data', EVAL, '--seq-len', '256']);
  const base = evalOf(MODEL);
  const rows = [
    {
      label: 'original (bf16)',
      bits: 16,
      stored: 16,
      bytes: folderBytes(MODEL),
      perplexity: base.perplexity,
      increase: 0,
      kl: 0,
      top1: 1,
      seconds: 0,
    },
  ];
  const run = (label, args) => {
    const out = path.join(work, label.replace(/[^a-z0-9.-]/gi, '_'));
    const q = moe(['quantize', MODEL, '--stats', stats, ...args, '-o', out]);
    const e = evalOf(out);
    rows.push({
      label,
      bits: q.average_bits,
      stored: q.stored_bits_per_weight,
      bytes: folderBytes(out),
      perplexity: e.perplexity,
      increase: e.baseline.ppl_increase_pct,
      kl: e.baseline.kl_mean,
      top1: e.baseline.top1_agreement,
      seconds: q.seconds,
      solver: q.solver,
    });
    fs.rmSync(out, { recursive: true, force: true });
  };
  run('RTN 8-bit', ['--bits', '8', '--method', 'rtn']);
  run('GPTQ 8-bit', ['--bits', '8', '--method', 'gptq']);
  run('RTN 4-bit', ['--bits', '4', '--method', 'rtn']);
  run('GPTQ 4-bit', ['--bits', '4', '--method', 'gptq']);
  for (const method of ['rtn', 'gptq']) {
    const M = method.toUpperCase();
    run(`${M} uniform 3-bit`, ['--bits', '3', '--method', method]);
    run(`${M} LP 3-bit average`, ['--bits', '3', '--method', method, '--allocate', 'lp']);
    run(`${M} LP 3-bit average (projection groups)`, [
      '--bits',
      '3',
      '--method',
      method,
      '--allocate',
      'lp',
      '--granularity',
      'projection',
    ]);
    run(`${M} uniform 2-bit`, ['--bits', '2', '--method', method]);
    run(`${M} LP 2.5-bit average`, ['--bits', '2.5', '--method', method, '--allocate', 'lp']);
  }
  console.log(
    `calibration: ${cal.tokens} tokens of calib.txt with Hessians; eval: ${base.positions} predicted positions of eval.txt in windows of 256; group size 128`,
  );
  if (markdown) {
    console.log(
      '| quantization | code bits (avg) | stored bits/weight | weights on disk | perplexity | Δ vs original | KL (nats/token) | top-1 agreement |',
    );
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      console.log(
        `| ${r.label} | ${r.bits.toFixed(3)} | ${r.stored.toFixed(3)} | ${(r.bytes / 1e6).toFixed(2)} MB | ${r.perplexity.toFixed(2)} | ${r.increase >= 0 ? '+' : ''}${r.increase.toFixed(2)}% | ${r.kl.toFixed(4)} | ${(100 * r.top1).toFixed(1)}% |`,
      );
    }
  } else {
    for (const r of rows) {
      const solver = r.solver
        ? `  ${r.solver.status} gap ${(100 * r.solver.gap).toFixed(4)}% ${r.solver.seconds.toFixed(2)} s`
        : '';
      console.log(
        `${r.label.padEnd(40)} bits ${r.bits.toFixed(3).padStart(6)} (${r.stored.toFixed(3)} stored)  ${(r.bytes / 1e6).toFixed(2).padStart(6)} MB  ppl ${r.perplexity.toFixed(2).padStart(8)}  ${r.increase >= 0 ? '+' : ''}${r.increase.toFixed(2)}%  KL ${r.kl.toFixed(4)}  top-1 ${(100 * r.top1).toFixed(1)}%  ${r.seconds.toFixed(1)} s${solver}`,
      );
    }
  }
});
