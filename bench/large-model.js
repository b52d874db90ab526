#!/usr/bin/env node
/**
 * A checkpoint larger than this machine's RAM: `moe synth` writes about 32 GB of bf16 with Mixtral-8x7B shapes
 * (hidden 4096, 8 experts of 4096 × 14336 per layer, 11 layers, 5 GB shards) into a temporary folder, then times
 * `moe inspect`, a short `moe calibrate` (64 tokens), `moe prune --method frequency --keep 6` and
 * `moe quantize --bits 4 --method rtn` on it, each as its own process with its peak RSS (GNU time). Everything is
 * deleted afterwards. Needs ~75 GB of free disk in the temporary folder (model, then pruned, then quantized).
 *
 *   npm run build && node bench/large-model.js [--layers 11] [--dir /tmp] [--keep-model DIR] [--json]
 *
 * Acceptance (issue): every command completes with peak RSS < 4 GB.
 */
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const lib = require('./lib');
const { flag, folderBytes: dirBytes, lcg, MIXTRAL_WIDTH, MOE, option: opt, setArgs, tokenWindows, withWorkDir } = lib;

const LAYERS = Number(opt('--layers', '11'));
const BASE = opt('--dir', os.tmpdir());
const LIMIT = 4e9;

function timed(label, argv) {
  const r = lib.timed(process.execPath, [MOE, ...argv], { env: { CI: 'true' }, label });
  process.stderr.write(`${r.seconds.toFixed(1)} s, peak RSS ${(r.peak_rss_bytes / 1e9).toFixed(2)} GB\n`);
  return { label, seconds: r.seconds, peak_rss_bytes: r.peak_rss_bytes, stdout: r.stdout };
}

const rows = [];
withWorkDir(
  'moe-large-',
  (work) => {
    const model = path.join(work, 'model');
    const sets = setArgs({
      ...MIXTRAL_WIDTH,
      num_hidden_layers: LAYERS,
      num_experts_per_tok: 2,
      vocab_size: 32000,
      max_position_embeddings: 4096,
    });
    rows.push(
      timed('synth', [
        'synth',
        '--arch',
        'mixtral',
        '--set',
        ...sets,
        '--dtype',
        'bf16',
        '--max-shard-size',
        '5GB',
        '-o',
        model,
        '--json',
      ]),
    );
    const size = dirBytes(model);
    process.stderr.write(`model: ${(size / 1e9).toFixed(1)} GB on disk, RAM ${(os.totalmem() / 1e9).toFixed(1)} GB\n`);
    rows.push(timed('inspect', ['inspect', model, '--json']));
    const ids = path.join(work, 'ids.json');
    fs.writeFileSync(ids, JSON.stringify(tokenWindows(1, 64, 32000, lcg(1))));
    const stats = path.join(work, 'stats');
    rows.push(
      timed('calibrate (64 tokens)', [
        'calibrate',
        model,
        '--data',
        ids,
        '--seq-len',
        '64',
        '--naee-tokens',
        '16',
        '-o',
        stats,
        '--json',
      ]),
    );
    const pruned = path.join(work, 'pruned');
    rows.push(
      timed('prune --method frequency --keep 6', [
        'prune',
        model,
        '--stats',
        stats,
        '--method',
        'frequency',
        '--keep',
        '6',
        '-o',
        pruned,
        '--json',
      ]),
    );
    rows.at(-1).output_bytes = dirBytes(pruned);
    fs.rmSync(pruned, { recursive: true, force: true });
    const quant = path.join(work, 'q4');
    rows.push(
      timed('quantize --bits 4 --method rtn', [
        'quantize',
        model,
        '--bits',
        '4',
        '--method',
        'rtn',
        '-o',
        quant,
        '--json',
      ]),
    );
    rows.at(-1).output_bytes = dirBytes(quant);
    const result = {
      model_bytes: size,
      ram_bytes: os.totalmem(),
      layers: LAYERS,
      rows: rows.map(({ stdout, ...r }) => r),
    };
    if (flag('--json')) console.log(JSON.stringify(result));
    else {
      console.log(
        `Mixtral-shaped bf16 checkpoint, ${LAYERS} layers × 8 experts of 4096 × 14336: ${(size / 1e9).toFixed(1)} GB on disk; machine RAM ${(os.totalmem() / 1e9).toFixed(1)} GB`,
      );
      console.log('| command | wall s | peak RSS | output |');
      console.log('|---|---|---|---|');
      for (const r of result.rows)
        console.log(
          `| ${r.label} | ${r.seconds.toFixed(1)} | ${(r.peak_rss_bytes / 1e9).toFixed(2)} GB | ${r.output_bytes ? `${(r.output_bytes / 1e9).toFixed(1)} GB` : ''} |`,
        );
    }
    const over = result.rows.filter((r) => r.label !== 'synth' && r.peak_rss_bytes >= LIMIT);
    if (over.length) {
      console.log(`FAILED: peak RSS ≥ 4 GB for ${over.map((r) => r.label).join(', ')}`);
      process.exitCode = 1;
    }
  },
  { base: BASE, keep: flag('--keep-model') },
);
