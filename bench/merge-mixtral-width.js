#!/usr/bin/env node
/**
 * M-SMoE with neuron alignment at Mixtral's width: one layer of hidden 4096, expert width 14336, 8 experts merged
 * into 4. Prints the time per layer (the issue's bar: under 3 minutes), the alignment method and scores, and
 * peak RSS.   npm run build && node bench/merge-mixtral-width.js
 * Needs ~7 GB of free disk in the temporary folder; deletes everything afterwards.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ansiLcg, MIXTRAL_WIDTH, moe: moeJson, setArgs, tokenWindows, withWorkDir } = require('./lib');

const moe = (args) => moeJson(args, { progress: true });

withWorkDir('moe-bench-merge-', (work) => {
  const model = path.join(work, 'model');
  const set = setArgs({ ...MIXTRAL_WIDTH, num_hidden_layers: 1, vocab_size: 1024 });
  moe(['synth', '--arch', 'mixtral', '--dtype', 'bf16', '--max-shard-size', '1GB', '-o', model, '--set', ...set]);
  const ids = path.join(work, 'ids.json');
  fs.writeFileSync(ids, JSON.stringify(tokenWindows(4, 64, 1024, ansiLcg(7))));
  const stats = path.join(work, 'stats');
  const cal = moe(['calibrate', model, '--data', ids, '--seq-len', '64', '--naee-tokens', '128', '-o', stats]);
  console.log(
    `calibrate (256 tokens): ${cal.wall_seconds.toFixed(1)} s, peak RSS ${(cal.peak_rss_bytes / 1e6).toFixed(0)} MB`,
  );
  const m = moe([
    'merge',
    model,
    '--stats',
    stats,
    '--method',
    'msmoe',
    '--keep',
    '4',
    '-o',
    path.join(work, 'merged'),
  ]);
  const aligned = m.layers[0].groups.flatMap((g) => g.alignment || []);
  console.log(
    `merge msmoe 8 → 4 at width 14336: ${m.wall_seconds.toFixed(1)} s for the layer (whole process), ${aligned.length} alignments (${aligned.map((a) => a.method).join(', ')}),` +
      ` mean neuron-feature cosine ${aligned.map((a) => `${a.score_before.toFixed(3)} → ${a.score_after.toFixed(3)}`).join('; ')}, peak RSS ${(m.peak_rss_bytes / 1e6).toFixed(0)} MB`,
  );
});
