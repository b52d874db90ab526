#!/usr/bin/env node
/**
 * RTN quantize throughput against `cp` on the same page-cached shards: a Mixtral-shaped bf16 checkpoint small
 * enough to stay in the page cache (default 2 layers of 8 experts 4096 × 14336, ~6 GB) is read once to warm the
 * cache, copied with `cp -r` (read + write), then quantized with `moe quantize --bits 4 --method rtn`; both are
 * timed as whole processes and compared in source bytes per second.
 *
 *   npm run build && node bench/quantize-throughput.js [--layers 2] [--dir /tmp] [--threads N] [--json]
 *
 * Acceptance (issue): moe's throughput ≥ 50% of cp's.
 */
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const lib = require('./lib');
const { flag, folderBytes, MIXTRAL_WIDTH, MOE, option: opt, setArgs, withWorkDir } = lib;

const LAYERS = Number(opt('--layers', '2'));
const BASE = opt('--dir', os.tmpdir());

/** Wall seconds of a whole process (not under GNU time: nothing but the program itself runs). */
const time = (cmd, argv) => lib.timed(cmd, argv, { rss: false }).seconds;

withWorkDir(
  'moe-qtp-',
  (work) => {
    const model = path.join(work, 'model');
    const sets = setArgs({ ...MIXTRAL_WIDTH, num_hidden_layers: LAYERS, vocab_size: 32000 });
    time(process.execPath, [MOE, 'synth', '--arch', 'mixtral', '--set', ...sets, '--dtype', 'bf16', '-o', model]);
    const bytes = folderBytes(model, { shardsOnly: true });
    time('sh', ['-c', `cat "${model}"/*.safetensors > /dev/null`]); // warm the page cache
    const cp = time('cp', ['-r', model, path.join(work, 'copy')]);
    fs.rmSync(path.join(work, 'copy'), { recursive: true, force: true });
    const qArgs = [MOE, 'quantize', model, '--bits', '4', '--method', 'rtn', '-o', path.join(work, 'q4')];
    if (opt('--threads')) qArgs.push('--threads', opt('--threads'));
    const moe = time(process.execPath, qArgs);
    const result = {
      source_bytes: bytes,
      cp_seconds: cp,
      moe_seconds: moe,
      cp_bytes_per_second: bytes / cp,
      moe_bytes_per_second: bytes / moe,
      ratio: cp / moe,
    };
    if (flag('--json')) console.log(JSON.stringify(result));
    else {
      console.log(
        `${(bytes / 1e9).toFixed(2)} GB of bf16 shards (page-cached): cp -r ${cp.toFixed(1)} s (${(bytes / cp / 1e9).toFixed(2)} GB/s), moe quantize --bits 4 --method rtn ${moe.toFixed(1)} s (${(bytes / moe / 1e9).toFixed(2)} GB/s)`,
      );
      console.log(`moe / cp throughput = ${(100 * result.ratio).toFixed(0)}% (target ≥ 50%)`);
    }
    if (result.ratio < 0.5) process.exitCode = 1;
  },
  { base: BASE },
);
