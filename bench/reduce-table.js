#!/usr/bin/env node
/**
 * Every prune and merge method at 6/8 and 4/8 experts on both trained fixtures, with and without router
 * recalibration when `moe prune` offers it, plus random pruning (mean of 5 seeds): perplexity and KL against the
 * original on the fixture's held-out text (first 16,384 tokens), perplexity on WikiText-2 test (first 16,384 tokens), windows
 * of 256, and the fixture's bundled cloze task (all 200 items). The README's pruning and merging table.
 *   npx tsc -p tsconfig.build.json && node bench/reduce-table.js [--fixture tiny-moe|tiny-dsv3] [--keep 4]
 *     [--recal on|off|both] [--only LABEL,...] [--out FILE]
 * Calibration: 32,768 tokens of the fixture's calib.txt, windows of 256, 1,024 NAEE samples per layer.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const lib = require('./lib');
const { ROOT, moe, withWorkDir, option } = lib;

const FIXTURES = [
  { name: 'tiny-moe', text: 'text', task: 'moby-cloze' },
  { name: 'tiny-dsv3', text: 'sotu', task: 'sotu-cloze' },
].filter((f) => !option('--fixture') || f.name === option('--fixture'));
const KEEPS = option('--keep') ? [Number(option('--keep'))] : [6, 4];
const WIKI = '/work/shared/data/wikitext-2/test.txt';
const WIKI_TOKENS = '16384';
const HELD_TOKENS = '16384';
const SEEDS = [0, 1, 2, 3, 4];
const ONLY = option('--only') ? option('--only').split(',') : undefined;

/** What this build offers: the methods' registries and whether prune/merge take --recalibrate-router. */
function offered() {
  const help = (cmd) =>
    spawnSync(process.execPath, [path.join(ROOT, 'bin', 'moe.js'), cmd, '--help'], { encoding: 'utf8' }).stdout;
  const prune = help('prune');
  return { dern: /\bdern\b/.test(prune), recal: /--recalibrate-router/.test(prune) };
}

function variants(has) {
  const v = [
    ['prune frequency', 'prune', ['--method', 'frequency']],
    ['prune soft-frequency', 'prune', ['--method', 'soft-frequency']],
    ['prune reap', 'prune', ['--method', 'reap']],
    ['prune naee', 'prune', ['--method', 'naee']],
  ];
  // REAP and NAEE selections with DERN's recombination (dern is REAP's).
  if (has.dern)
    v.push(
      ['prune dern', 'prune', ['--method', 'dern']],
      ['prune naee --recombine', 'prune', ['--method', 'naee', '--recombine']],
    );
  v.push(
    ['merge msmoe', 'merge', ['--method', 'msmoe']],
    ['merge hcsmoe', 'merge', ['--method', 'hcsmoe']],
    ['merge average', 'merge', ['--method', 'average']],
    ['merge anchored', 'merge', ['--method', 'anchored']],
    ['merge anchored --refit on', 'merge', ['--method', 'anchored', '--refit', 'on']],
  );
  return ONLY ? v.filter(([label]) => ONLY.includes(label)) : v;
}

withWorkDir('moe-reduce-table-', (work) => {
  const has = offered();
  const recalModes = !has.recal ? [false] : { on: [true], off: [false] }[option('--recal')] || [false, true];
  const lines = [];
  // Written line by line, so a run cut short keeps what it measured.
  if (option('--out')) fs.writeFileSync(option('--out'), '');
  const log = (s) => {
    lines.push(s);
    if (option('--out')) fs.appendFileSync(option('--out'), s + '\n');
    console.log(s);
  };
  log(
    `dern ${has.dern ? 'offered' : 'not in this build'}; router recalibration ${has.recal ? 'offered' : 'not in this build'}`,
  );
  for (const f of FIXTURES) {
    const model = path.join(ROOT, 'fixtures', f.name);
    const texts = path.join(ROOT, 'fixtures', f.text);
    const stats = path.join(work, `${f.name}-stats`);
    moe([
      'calibrate',
      model,
      '--data',
      path.join(texts, 'calib.txt'),
      '--seq-len',
      '256',
      '--max-tokens',
      '32768',
      '--naee-tokens',
      '1024',
      '-o',
      stats,
    ]);
    const measure = (dir) => {
      const held = moe([
        'eval',
        dir,
        '--baseline',
        model,
        '--data',
        path.join(texts, 'eval.txt'),
        '--seq-len',
        '256',
        '--max-tokens',
        HELD_TOKENS,
      ]);
      const wiki = moe(['eval', dir, '--data', WIKI, '--seq-len', '256', '--max-tokens', WIKI_TOKENS]);
      const task = moe(['eval', dir, '--task', path.join(ROOT, 'fixtures', 'tasks', `${f.task}.jsonl`)]);
      return {
        t: held.perplexity,
        kl: held.baseline.kl_mean,
        w: wiki.perplexity,
        acc: Object.values(task.tasks)[0].acc,
      };
    };
    const base = measure(model);
    log(
      `\n### ${f.name}: original held-out ${base.t.toFixed(2)}, WikiText-2 ${base.w.toFixed(1)}, ${f.task} ${(100 * base.acc).toFixed(1)}%\n`,
    );
    log(`| method | experts | router | held-out ppl | KL | WikiText-2 ppl | ${f.task} acc |`);
    log('|---|---|---|---|---|---|---|');
    const fmt = (label, keep, recal, r) =>
      `| ${label} | ${keep}/8 | ${recal ? 'recalibrated' : 'sliced'} | ${r.t.toFixed(2)} | ${r.kl.toFixed(4)} | ` +
      `${r.w.toFixed(1)} | ${(100 * r.acc).toFixed(1)}% |`;
    for (const keep of KEEPS) {
      const run = (kind, args, recal) => {
        const out = path.join(work, 'out');
        const extra = recal ? ['--recalibrate-router', 'ls'] : [];
        moe([kind, model, '--stats', stats, ...args, ...extra, '--keep', String(keep), '-o', out, '--force']);
        const r = measure(out);
        fs.rmSync(out, { recursive: true, force: true });
        return r;
      };
      for (const [label, kind, args] of variants(has)) {
        for (const recal of recalModes) log(fmt(label, keep, recal, run(kind, args, recal)));
      }
      if (ONLY && !ONLY.includes('random')) continue;
      // The baseline: sliced routers only (recalibrating a random choice says little and costs five runs).
      const rs = SEEDS.map((seed) => run('prune', ['--method', 'random', '--seed', String(seed)], false));
      const mean = (k) => rs.reduce((s, r) => s + r[k], 0) / rs.length;
      const m = { t: mean('t'), kl: mean('kl'), w: mean('w'), acc: mean('acc') };
      log(fmt('prune random, mean of 5 seeds', keep, false, m));
    }
  }
});
