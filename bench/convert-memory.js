#!/usr/bin/env node
/**
 * Peak memory of streaming commands on a generated ~3 GB bf16 checkpoint (Mixtral-like shapes: hidden 4096,
 * expert width 14336, 8 experts, 1 layer). Prints the figures the README quotes.
 *   node bench/convert-memory.js [--keep DIR]
 * Needs about 7 GB of free disk in the temporary folder; deletes everything afterwards.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { mb, MIXTRAL_WIDTH, moe: moeJson, setArgs, withWorkDir } = require('./lib');

const moe = (args) => moeJson(args, { progress: true });

withWorkDir('moe-bench-', (work) => {
  const model = path.join(work, 'model');
  const set = setArgs({ ...MIXTRAL_WIDTH, num_hidden_layers: 1, vocab_size: 32000 });
  const synth = moe([
    'synth',
    '--arch',
    'mixtral',
    '--dtype',
    'bf16',
    '--max-shard-size',
    '1GB',
    '-o',
    model,
    '--set',
    ...set,
  ]);
  const largest = 4096 * 14336 * 2;
  console.log(
    `generated ${mb(synth.bytes)} MB in ${synth.shards} shards (largest tensor ${mb(largest)} MB), ${synth.wall_seconds.toFixed(1)} s`,
  );

  const ins = moe(['inspect', model]);
  console.log(
    `inspect: read ${ins.bytes_read} bytes of ${mb(ins.bytes)} MB, peak RSS ${mb(ins.peak_rss_bytes)} MB, ${ins.wall_seconds.toFixed(2)} s`,
  );

  const limit = 2 * largest + 200e6;
  const rows = [
    ['convert (re-shard 1GB → 2GB)', ['convert', model, '-o', path.join(work, 'resharded'), '--max-shard-size', '2GB']],
    ['convert --dtype f16', ['convert', model, '-o', path.join(work, 'f16'), '--dtype', 'f16']],
  ];
  for (const [label, args] of rows) {
    const r = moe(args);
    const ok = r.peak_rss_bytes < limit;
    console.log(
      `${label}: peak RSS ${mb(r.peak_rss_bytes)} MB (limit 2×largest+200 MB = ${mb(limit)} MB: ${ok ? 'ok' : 'OVER'}), ${r.wall_seconds.toFixed(1)} s, ${(r.bytes_in / 1e6 / r.wall_seconds).toFixed(0)} MB/s`,
    );
    fs.rmSync(args[3], { recursive: true, force: true });
    if (!ok) process.exitCode = 1;
  }
});
