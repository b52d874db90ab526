#!/usr/bin/env node
/**
 * Calibrate and prune on the ~300 M-parameter bench model (Qwen3-MoE layout: 32 experts, top-4, hidden 1024,
 * 6 layers, bf16, sharded): time and peak RSS of `moe calibrate` over 64k tokens and of `moe prune`.
 *   npm run build && node bench/calibrate-prune.js [--tokens 65536] [--seq-len 512] [--activation-memory 2GB]
 * Needs ~1.5 GB of disk in the temporary folder; deletes everything afterwards.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const MOE = path.join(__dirname, '..', 'bin', 'moe.js');
const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : def;
};
const TOKENS = Number(arg('--tokens', 65536));
const SEQ = Number(arg('--seq-len', 512));
const ACT = arg('--activation-memory', '2GB');

function moe(args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [MOE, ...args, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.status}`);
  return { ...JSON.parse(r.stdout), wall_seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

const mb = (b) => (b / 1e6).toFixed(0);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-cp-'));
try {
  const model = path.join(work, 'model');
  const set = ['hidden_size=1024', 'num_hidden_layers=6', 'num_experts=32', 'num_experts_per_tok=4', 'moe_intermediate_size=384', 'num_attention_heads=16', 'num_key_value_heads=4', 'head_dim=64', 'vocab_size=32768'];
  const synth = moe(['synth', '--arch', 'qwen3_moe', '--dtype', 'bf16', '--max-shard-size', '200MB', '-o', model, '--set', ...set]);
  const info = moe(['inspect', model]);
  console.log(`bench model: ${(info.params_total / 1e6).toFixed(0)} M params, ${mb(info.bytes)} MB bf16 in ${synth.shards} shards`);

  let x = 12345;
  const windows = [];
  for (let w = 0; w < TOKENS / SEQ; w++) {
    const ids = [];
    for (let i = 0; i < SEQ; i++) {
      x = (x * 1103515245 + 12345) % 2147483648;
      ids.push(x % 32768);
    }
    windows.push(ids);
  }
  const data = path.join(work, 'ids.json');
  fs.writeFileSync(data, JSON.stringify(windows));

  const stats = path.join(work, 'stats');
  const cal = moe(['calibrate', model, '--data', data, '--seq-len', String(SEQ), '-o', stats, '--activation-memory', ACT]);
  console.log(`calibrate: ${cal.tokens} tokens in ${cal.wall_seconds.toFixed(1)} s (${(cal.tokens / cal.wall_seconds).toFixed(0)} tokens/s), peak RSS ${mb(cal.peak_rss_bytes)} MB, spilled: ${cal.spilled}`);

  const largest = 32768 * 1024 * 2;
  const limit = 2 * largest + 300e6;
  const pr = moe(['prune', model, '--stats', stats, '--method', 'frequency', '--ratio', '0.5', '-o', path.join(work, 'pruned')]);
  console.log(`prune --method frequency --ratio 0.5: ${pr.wall_seconds.toFixed(1)} s, peak RSS ${mb(pr.peak_rss_bytes)} MB (limit 2 × largest tensor (${mb(largest)} MB) + 300 MB = ${mb(limit)} MB: ${pr.peak_rss_bytes < limit ? 'ok' : 'OVER'})`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
