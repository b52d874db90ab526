#!/usr/bin/env node
/**
 * Quantized models evaluated as fast as their original (issue 23): the bench model of bench/llama-prefill.mjs (the
 * ~310 M-parameter random Qwen3-MoE, bf16, in .cache/prefill-bench; run that bench once first) quantized by
 * `moe quantize --method rtn` at 8, 4, 3 and 2 bits (moe's packed format) and at 4 bits as compressed-tensors and
 * GPTQ, each evaluated by `moe eval` on the same windows as the bf16 original: the forward pass's tokens/s
 * (forward_tokens_per_second), peak RSS and perplexity.
 *
 *   npm run build && node bench/packed-eval.js [--windows 4] [--seq-len 256] [--threads 2] [--repeat 3]
 *
 * Acceptance (issue 23): the 4-bit packed model's forward ≥ 1.0× the bf16 original's tokens/s, peak RSS lower.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');

const { MOE, ROOT, option, table } = lib;
const WINDOWS = Number(option('--windows', '4'));
const T = Number(option('--seq-len', '256'));
const THREADS = option('--threads', '2');
const REPEAT = Number(option('--repeat', '3'));
const DIR = path.join(ROOT, '.cache', 'prefill-bench');
const MODEL = path.join(DIR, 'model');

function moe(argv) {
  const r = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, MOE, ...argv], {
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  return { out: JSON.parse(r.stdout), rssMb: Number(r.stderr.trim().split('\n').pop()) / 1024 };
}

function main() {
  if (!fs.existsSync(path.join(MODEL, 'config.json')))
    throw new Error(`${MODEL} is missing: run node bench/llama-prefill.mjs once (it makes the bench model)`);
  const next = lib.lcg(23);
  const vocab = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8')).vocab_size;
  const ids = path.join(DIR, `packed-ids-${WINDOWS}x${T}.json`);
  fs.writeFileSync(
    ids,
    JSON.stringify(Array.from({ length: WINDOWS }, () => Array.from({ length: T }, () => next() % vocab))),
  );
  const cases = [
    ['bf16 original', MODEL, null],
    ['packed 8-bit', path.join(DIR, 'q8'), ['--bits', '8']],
    ['packed 4-bit', path.join(DIR, 'q4'), ['--bits', '4']],
    ['packed 3-bit', path.join(DIR, 'q3'), ['--bits', '3']],
    ['packed 2-bit', path.join(DIR, 'q2'), ['--bits', '2']],
    ['compressed-tensors 4-bit', path.join(DIR, 'ct4'), ['--bits', '4', '--format', 'compressed-tensors']],
    ['GPTQ 4-bit', path.join(DIR, 'gptq4'), ['--bits', '4', '--format', 'gptq']],
  ];
  for (const [, out, argv] of cases)
    if (argv && !fs.existsSync(path.join(out, 'config.json')))
      moe(['quantize', MODEL, '--method', 'rtn', ...argv, '-o', out, '--json']);
  const results = cases.map(([label, dir]) => {
    let best = { tps: 0, rss: Infinity, ppl: NaN };
    for (let r = 0; r < REPEAT; r++) {
      const { out, rssMb } = moe(['eval', dir, '--data', ids, '--seq-len', String(T), '--threads', THREADS, '--json']);
      best = {
        tps: Math.max(best.tps, out.forward_tokens_per_second),
        rss: Math.min(best.rss, rssMb),
        ppl: out.perplexity,
      };
    }
    return { label, dir, ...best, bytes: lib.folderBytes(dir, { shardsOnly: true }) };
  });
  const base = results[0];
  console.log(`${WINDOWS} windows × ${T} tokens, ${THREADS} thread(s), best of ${REPEAT}\n`);
  table(
    ['model', 'weights MB', 'forward tokens/s', 'vs bf16', 'peak RSS MB', 'perplexity'],
    results.map((r) => [
      r.label,
      lib.mb(r.bytes),
      r.tps.toFixed(0),
      `${(r.tps / base.tps).toFixed(2)}×`,
      r.rss.toFixed(0),
      r.ppl.toFixed(2),
    ]),
  );
  const q4 = results.find((r) => r.label === 'packed 4-bit');
  const ok = q4.tps >= base.tps && q4.rss < base.rss;
  console.log(
    `\npacked 4-bit: ${(q4.tps / base.tps).toFixed(2)}× the bf16 forward, peak RSS ${q4.rss.toFixed(0)} vs ${base.rss.toFixed(0)} MB: ${ok ? 'ok' : 'FAIL'}`,
  );
  process.exit(ok ? 0 : 1);
}

lib.run(async () => main());
