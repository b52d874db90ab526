#!/usr/bin/env node
/**
 * M-SMoE with neuron alignment at Mixtral's width: one layer of hidden 4096, expert width 14336, 8 experts merged
 * into 4. Prints the time per layer (the issue's bar: under 3 minutes), the alignment method and scores, and
 * peak RSS.   npm run build && node bench/merge-mixtral-width.js
 * Needs ~7 GB of free disk in the temporary folder; deletes everything afterwards.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const MOE = path.join(__dirname, '..', 'bin', 'moe.js');

function moe(args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [MOE, ...args, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.status}`);
  return { ...JSON.parse(r.stdout), wall_seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-merge-'));
try {
  const model = path.join(work, 'model');
  const set = ['hidden_size=4096', 'intermediate_size=14336', 'num_hidden_layers=1', 'num_local_experts=8', 'num_attention_heads=32', 'num_key_value_heads=8', 'vocab_size=1024'];
  moe(['synth', '--arch', 'mixtral', '--dtype', 'bf16', '--max-shard-size', '1GB', '-o', model, '--set', ...set]);
  const ids = path.join(work, 'ids.json');
  let x = 7;
  fs.writeFileSync(ids, JSON.stringify([...Array(4)].map(() => [...Array(64)].map(() => (x = (x * 1103515245 + 12345) % 2147483648) % 1024))));
  const stats = path.join(work, 'stats');
  const cal = moe(['calibrate', model, '--data', ids, '--seq-len', '64', '--naee-tokens', '128', '-o', stats]);
  console.log(`calibrate (256 tokens): ${cal.wall_seconds.toFixed(1)} s, peak RSS ${(cal.peak_rss_bytes / 1e6).toFixed(0)} MB`);
  const m = moe(['merge', model, '--stats', stats, '--method', 'msmoe', '--keep', '4', '-o', path.join(work, 'merged')]);
  const aligned = m.layers[0].groups.flatMap((g) => g.alignment || []);
  console.log(`merge msmoe 8 → 4 at width 14336: ${m.wall_seconds.toFixed(1)} s for the layer (whole process), ${aligned.length} alignments (${aligned.map((a) => a.method).join(', ')}),` +
    ` mean neuron-feature cosine ${aligned.map((a) => `${a.score_before.toFixed(3)} → ${a.score_after.toFixed(3)}`).join('; ')}, peak RSS ${(m.peak_rss_bytes / 1e6).toFixed(0)} MB`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
