#!/usr/bin/env node
/**
 * The README's AWQ table: perplexity of the trained fixture quantized by RTN and GPTQ at 4 and 3 bits, each without and
 * with `--awq`, measured by `moe eval` on the held-out text (fixtures/text/eval.txt, all of it, windows of 256)
 * against the original; the calibration is bench/quantize-table.js's (32,768 tokens of calib.txt, with Hessians).
 *   npm run build && node bench/awq-table.js [--markdown]
 */
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const lib = require('./lib');
const { EVAL_TEXT: EVAL, FIXTURE: MODEL, flag, moe, withWorkDir } = lib;

const markdown = flag('--markdown');
withWorkDir('moe-awq-', (work) => {
  const stats = path.join(work, 'stats');
  const cal = lib.calibrateFixture(stats, ['--hessians']);
  const rows = [];
  for (const bits of ['4', '3'])
    for (const method of ['rtn', 'gptq'])
      for (const awq of [false, true]) {
        const label = `${method.toUpperCase()} ${bits}-bit${awq ? ' + AWQ' : ''}`;
        const out = path.join(work, label.replace(/[^a-z0-9.-]/gi, '_'));
        const q = moe([
          'quantize',
          MODEL,
          '--stats',
          stats,
          '--bits',
          bits,
          '--method',
          method,
          ...(awq ? ['--awq'] : []),
          '-o',
          out,
        ]);
        const e = moe(['eval', out, '--baseline', MODEL, '--data', EVAL, '--seq-len', '256']);
        rows.push({ label, q, e });
        fs.rmSync(out, { recursive: true, force: true });
      }
  console.log(
    `calibration: ${cal.tokens} tokens of calib.txt with Hessians; eval: all of eval.txt, windows of 256; group size 128`,
  );
  const cells = ({ label, q, e }) => [
    label,
    e.perplexity.toFixed(2),
    `${e.baseline.ppl_increase_pct >= 0 ? '+' : ''}${e.baseline.ppl_increase_pct.toFixed(2)}%`,
    e.baseline.kl_mean.toFixed(4),
    `${(100 * e.baseline.top1_agreement).toFixed(1)}%`,
    q.awq ? q.awq.mean_alpha.toFixed(3) : '—',
    q.awq ? `${(100 * (1 - q.awq.loss / q.awq.loss_alpha0)).toFixed(2)}%` : '—',
    `${q.seconds.toFixed(1)} s`,
  ];
  const head = [
    'quantization',
    'perplexity',
    'Δ vs original',
    'KL (nats/token)',
    'top-1 agreement',
    'mean α',
    'searched error cut',
    'time',
  ];
  if (markdown) {
    console.log(`| ${head.join(' | ')} |`);
    console.log(`|${head.map(() => '---').join('|')}|`);
    for (const r of rows) console.log(`| ${cells(r).join(' | ')} |`);
  } else {
    for (const r of rows) console.log(cells(r).join('  '));
  }
});
