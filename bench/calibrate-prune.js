#!/usr/bin/env node
/**
 * Calibrate and prune on the ~300 M-parameter bench model (Qwen3-MoE layout: 32 experts, top-4, hidden 1024,
 * 6 layers, bf16, sharded): time and peak RSS of `moe calibrate` over 64k tokens and of `moe prune`.
 *   npm run build && node bench/calibrate-prune.js [--tokens 65536] [--seq-len 512] [--activation-memory 2GB]
 * Needs ~1.5 GB of disk in the temporary folder; deletes everything afterwards.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ansiLcg, mb, moe: moeJson, option, QWEN3_BENCH, setArgs, tokenWindows, withWorkDir } = require('./lib');

const TOKENS = Number(option('--tokens', 65536));
const SEQ = Number(option('--seq-len', 512));
const ACT = option('--activation-memory', '2GB');
const moe = (args) => moeJson(args, { progress: true });

withWorkDir('moe-bench-cp-', (work) => {
  const model = path.join(work, 'model');
  const synth = moe([
    'synth',
    '--arch',
    'qwen3_moe',
    '--dtype',
    'bf16',
    '--max-shard-size',
    '200MB',
    '-o',
    model,
    '--set',
    ...setArgs(QWEN3_BENCH),
  ]);
  const info = moe(['inspect', model]);
  console.log(
    `bench model: ${(info.params_total / 1e6).toFixed(0)} M params, ${mb(info.bytes)} MB bf16 in ${synth.shards} shards`,
  );

  const windows = tokenWindows(Math.ceil(TOKENS / SEQ), SEQ, 32768, ansiLcg(12345));
  const data = path.join(work, 'ids.json');
  fs.writeFileSync(data, JSON.stringify(windows));

  const stats = path.join(work, 'stats');
  const cal = moe([
    'calibrate',
    model,
    '--data',
    data,
    '--seq-len',
    String(SEQ),
    '-o',
    stats,
    '--activation-memory',
    ACT,
  ]);
  console.log(
    `calibrate: ${cal.tokens} tokens in ${cal.wall_seconds.toFixed(1)} s (${(cal.tokens / cal.wall_seconds).toFixed(0)} tokens/s), peak RSS ${mb(cal.peak_rss_bytes)} MB, spilled: ${cal.spilled}`,
  );

  const largest = 32768 * 1024 * 2;
  const limit = 2 * largest + 300e6;
  const pr = moe([
    'prune',
    model,
    '--stats',
    stats,
    '--method',
    'frequency',
    '--ratio',
    '0.5',
    '-o',
    path.join(work, 'pruned'),
  ]);
  console.log(
    `prune --method frequency --ratio 0.5: ${pr.wall_seconds.toFixed(1)} s, peak RSS ${mb(pr.peak_rss_bytes)} MB (limit 2 × largest tensor (${mb(largest)} MB) + 300 MB = ${mb(limit)} MB: ${pr.peak_rss_bytes < limit ? 'ok' : 'OVER'})`,
  );
});
