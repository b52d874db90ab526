#!/usr/bin/env node
/**
 * Merging against REAP pruning on both trained fixtures (bench-results/merge.md): every variant at 6/8 and 4/8
 * experts, perplexity on the fixture's held-out text (all of it) and on WikiText-2 test (first 32,768 tokens),
 * windows of 256, plus the diagnosis: each MoE layer's routed-output error against the original layer
 * (‖z' − z‖² / ‖z‖², mean over layers) on the calibration samples the merge saw and on held-out samples (the
 * MoE-block inputs of the held-out text).
 *   npx tsc -p tsconfig.build.json && node bench/merge-table.js [--fixture tiny-moe|tiny-dsv3] [--keep 4]
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');
const { ROOT, DIST, moe, withWorkDir, option } = lib;

const FIXTURES = [
  { name: 'tiny-moe', text: path.join(ROOT, 'fixtures', 'text') },
  { name: 'tiny-dsv3', text: path.join(ROOT, 'fixtures', 'sotu') },
].filter((f) => !option('--fixture') || f.name === option('--fixture'));
const KEEPS = option('--keep') ? [Number(option('--keep'))] : [6, 4];
const WIKI = '/work/shared/data/wikitext-2/test.txt';
const WIKI_TOKENS = '32768';
const SEEDS = [0, 1, 2, 3, 4];

const VARIANTS = [
  ['prune reap', 'prune', ['--method', 'reap']],
  ['prune frequency (M-SMoE dominants alone)', 'prune', ['--method', 'frequency']],
  ['merge msmoe', 'merge', ['--method', 'msmoe']],
  ['merge hcsmoe', 'merge', ['--method', 'hcsmoe']],
  ['merge anchored α=0.9', 'merge', ['--method', 'anchored', '--dominant-weight', '0.9', '--refit', 'off']],
  ['merge anchored α=0.75', 'merge', ['--method', 'anchored', '--dominant-weight', '0.75', '--refit', 'off']],
  ['merge anchored α=0.5', 'merge', ['--method', 'anchored', '--dominant-weight', '0.5', '--refit', 'off']],
  ['merge msmoe --refit on', 'merge', ['--method', 'msmoe', '--refit', 'on']],
  [
    'REAP + refit (anchored α=1 --refit on)',
    'merge',
    ['--method', 'anchored', '--dominant-weight', '1', '--refit', 'on'],
  ],
  ['merge anchored α=0.9 --refit on', 'merge', ['--method', 'anchored', '--dominant-weight', '0.9', '--refit', 'on']],
  ['merge anchored α=0.5 --refit on', 'merge', ['--method', 'anchored', '--dominant-weight', '0.5', '--refit', 'on']],
];

/** Mean over MoE layers of the reduced layer's relative routed-output error on each stats' samples. */
async function layerErrors(original, reduced, statsDirs) {
  const { openCheckpoint, TensorReader } = require(path.join(DIST, 'io', 'checkpoint.js'));
  const { loadArchitecture } = require(path.join(DIST, 'model', 'registry.js'));
  const { CalibrationStats } = require(path.join(DIST, 'calib', 'stats.js'));
  const { createBackend } = require(path.join(DIST, 'backend', 'index.js'));
  const { layerOutput, originalLayer, relativeError } = require(path.join(DIST, 'merge', 'refit.js'));
  const be = await createBackend('onnx', { threads: 1 });
  const open = (dir) => {
    const ckpt = openCheckpoint(dir);
    return { arch: loadArchitecture(ckpt), reader: new TensorReader(ckpt) };
  };
  const [a, b] = [open(original), open(reduced)];
  const out = [];
  for (const dir of statsDirs) {
    const stats = new CalibrationStats(dir);
    let sum = 0;
    for (const layer of a.arch.moeLayers) {
      const x = stats.f32(`layers.${layer}.moe.naee_in`);
      const n = x.length / a.arch.hidden;
      const o = originalLayer(a.reader, a.arch, layer);
      const r = originalLayer(b.reader, b.arch, layer);
      const z = (await layerOutput(be, a.arch, x, n, o.router, o.experts)).out;
      sum += relativeError((await layerOutput(be, b.arch, x, n, r.router, r.experts)).out, z);
    }
    out.push(sum / a.arch.moeLayers.length);
    stats.close();
  }
  a.reader.close();
  b.reader.close();
  await be.dispose();
  return out;
}

withWorkDir('moe-merge-table-', async (work) => {
  const lines = [];
  const log = (s) => {
    lines.push(s);
    console.log(s);
  };
  for (const f of FIXTURES) {
    const model = path.join(ROOT, 'fixtures', f.name);
    const stats = path.join(work, `${f.name}-stats`);
    const held = path.join(work, `${f.name}-held`);
    const calib = ['--seq-len', '256', '--max-tokens', '32768', '--naee-tokens', '1024'];
    moe(['calibrate', model, '--data', path.join(f.text, 'calib.txt'), ...calib, '-o', stats]);
    moe(['calibrate', model, '--data', path.join(f.text, 'eval.txt'), ...calib, '-o', held]);
    const evalOf = (dir) => [
      moe(['eval', dir, '--data', path.join(f.text, 'eval.txt'), '--seq-len', '256']).perplexity,
      moe(['eval', dir, '--data', WIKI, '--seq-len', '256', '--max-tokens', WIKI_TOKENS]).perplexity,
    ];
    const [baseText, baseWiki] = evalOf(model);
    log(`\n### ${f.name} (original 8 experts: held-out ${baseText.toFixed(2)}, WikiText-2 ${baseWiki.toFixed(1)})\n`);
    log('| variant | experts | held-out ppl | WikiText-2 ppl | layer error, calib | layer error, held-out |');
    log('|---|---|---|---|---|---|');
    for (const keep of KEEPS) {
      const row = async (label, kind, args) => {
        const out = path.join(work, 'out');
        moe([kind, model, '--stats', stats, ...args, '--keep', String(keep), '-o', out, '--force']);
        const [t, w] = evalOf(out);
        const [ec, eh] = await layerErrors(model, out, [stats, held]);
        fs.rmSync(out, { recursive: true, force: true });
        return { label, t, w, ec, eh };
      };
      const fmt = (r) =>
        `| ${r.label} | ${keep}/8 | ${r.t.toFixed(2)} | ${r.w.toFixed(1)} | ${r.ec.toFixed(4)} | ${r.eh.toFixed(4)} |`;
      for (const [label, kind, args] of VARIANTS) log(fmt(await row(label, kind, args)));
      const rnd = [];
      for (const seed of SEEDS) rnd.push(await row('', 'prune', ['--method', 'random', '--seed', String(seed)]));
      const mean = (k) => rnd.reduce((s, r) => s + r[k], 0) / rnd.length;
      log(fmt({ label: 'prune random, mean of 5 seeds', t: mean('t'), w: mean('w'), ec: mean('ec'), eh: mean('eh') }));
    }
  }
  if (option('--out')) fs.writeFileSync(option('--out'), lines.join('\n') + '\n');
});
