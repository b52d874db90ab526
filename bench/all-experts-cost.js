#!/usr/bin/env node
/**
 * What `moe calibrate --all-experts` costs (issue 24): every routed expert also runs on the tokens the router did
 * not send it, so the experts' compute grows by E/k (the forward keeps the routed output). Measured on the bench
 * model of bench/llama-prefill.mjs (~310 M-parameter random Qwen3-MoE, 32 experts top-4, hidden 1024, 6 layers, bf16;
 * made here with `moe synth` when .cache/prefill-bench/model is missing), on seeded random windows, whole processes
 * under GNU time: calibrate without and with --all-experts, each with and without --hessians.
 *
 *   npm run build && node bench/all-experts-cost.js [--windows 4] [--seq-len 256] [--threads 2]
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');

const { MOE, ROOT, QWEN3_BENCH, option, setArgs, table, withWorkDir } = lib;
const WINDOWS = Number(option('--windows', '4'));
const T = Number(option('--seq-len', '256'));
const THREADS = option('--threads', '2');
const MODEL = path.join(ROOT, '.cache', 'prefill-bench', 'model');

function moe(argv) {
  const r = lib.timed(process.execPath, [MOE, ...argv, '--json']);
  return { ...lib.parseJson(r.stdout, `moe ${argv[0]}`), wall: r.seconds, rss: r.peak_rss_bytes };
}

withWorkDir('moe-all-experts-', (work) => {
  if (!fs.existsSync(path.join(MODEL, 'config.json'))) {
    const config = { ...QWEN3_BENCH, norm_topk_prob: true, max_position_embeddings: Math.max(512, T) };
    moe(['synth', '--arch', 'qwen3_moe', '--dtype', 'bf16', '-o', MODEL, '--set', ...setArgs(config)]);
  }
  const vocab = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8')).vocab_size;
  const next = lib.lcg(24);
  const ids = path.join(work, 'ids.json');
  fs.writeFileSync(ids, JSON.stringify(lib.tokenWindows(WINDOWS, T, vocab, next).map((w) => Array.from(w))));
  const rows = [];
  for (const hessians of [false, true]) {
    for (const all of [false, true]) {
      const argv = ['calibrate', MODEL, '--data', ids, '--seq-len', String(T), '--threads', THREADS];
      if (hessians) argv.push('--hessians');
      if (all) argv.push('--all-experts');
      const out = path.join(work, `s-${hessians}-${all}`);
      const r = moe([...argv, '-o', out]);
      const pass = r.layers.reduce((s, l) => s + l.seconds, 0);
      rows.push([
        hessians ? 'yes' : 'no',
        all ? 'all experts' : 'routed',
        pass.toFixed(1),
        r.wall.toFixed(1),
        (r.rss / 1e6).toFixed(0),
      ]);
      fs.rmSync(out, { recursive: true, force: true });
    }
  }
  console.log(`${WINDOWS} windows × ${T} tokens, ${THREADS} thread(s); 32 experts, top-4 (E/k = 8)\n`);
  table(['Hessians', 'experts see', 'layers s', 'wall s', 'peak RSS MB'], rows);
});
