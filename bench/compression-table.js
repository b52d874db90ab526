#!/usr/bin/env node
/**
 * The README's table: perplexity of the trained fixture after every pruning and merging method at 75% and 50% of
 * the experts, measured by `moe eval` on the held-out text (fixtures/text/eval.txt, all of it, windows of 256).
 *   npm run build && node bench/compression-table.js [--markdown]
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');
const { EVAL_TEXT: EVAL, FIXTURE: MODEL, moe, withWorkDir } = lib;

withWorkDir('moe-table-', (work) => {
  const stats = path.join(work, 'stats');
  const cal = lib.calibrateFixture(stats, ['--naee-tokens', '1024']);
  const evalOf = (dir) => moe(['eval', dir, '--baseline', MODEL, '--data', EVAL, '--seq-len', '256']);
  const base = evalOf(MODEL);
  const rows = [];
  const run = (label, kind, args, keep) => {
    const out = path.join(work, `${label}-${keep}`.replace(/[^a-z0-9-]/gi, '_'));
    moe([kind, MODEL, '--stats', stats, ...args, '--keep', String(keep), '-o', out]);
    const e = evalOf(out);
    rows.push({
      label,
      keep,
      perplexity: e.perplexity,
      increase: e.baseline.ppl_increase_pct,
      kl: e.baseline.kl_mean,
      top1: e.baseline.top1_agreement,
    });
    fs.rmSync(out, { recursive: true, force: true });
  };
  for (const keep of [6, 4]) {
    for (const m of ['frequency', 'soft-frequency', 'reap', 'naee']) run(`prune ${m}`, 'prune', ['--method', m], keep);
    for (const seed of [0, 1, 2])
      run(`prune random (seed ${seed})`, 'prune', ['--method', 'random', '--seed', String(seed)], keep);
    run('merge msmoe (expert-output similarity, aligned)', 'merge', ['--method', 'msmoe'], keep);
    run('merge msmoe (expert-output similarity, no alignment)', 'merge', ['--method', 'msmoe', '--align', 'off'], keep);
    run(
      'merge msmoe (router-logit similarity, aligned)',
      'merge',
      ['--method', 'msmoe', '--similarity', 'router-logits'],
      keep,
    );
    run('merge hcsmoe (aligned)', 'merge', ['--method', 'hcsmoe'], keep);
    run('merge hcsmoe (no alignment)', 'merge', ['--method', 'hcsmoe', '--align', 'off'], keep);
    run('merge average', 'merge', ['--method', 'average'], keep);
  }
  console.log(
    `calibration: ${cal.tokens} tokens of calib.txt; eval: ${base.positions} predicted positions of eval.txt in windows of 256`,
  );
  console.log(`original (8 experts): perplexity ${base.perplexity.toFixed(2)}`);
  console.log('| method | experts | perplexity | Δ vs original | KL (nats/token) | top-1 agreement |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.label} | ${r.keep}/8 | ${r.perplexity.toFixed(2)} | +${r.increase.toFixed(1)}% | ${r.kl.toFixed(4)} | ${(100 * r.top1).toFixed(1)}% |`,
    );
  for (const keep of [6, 4]) {
    const rnd = rows.filter((r) => r.keep === keep && r.label.startsWith('prune random'));
    console.log(
      `random pruning, mean of 3 seeds, ${keep}/8: ${(rnd.reduce((s, r) => s + r.perplexity, 0) / rnd.length).toFixed(2)}`,
    );
  }
});
