#!/usr/bin/env node
/**
 * The task-accuracy columns of the README's quality tables: the same models as bench/compression-table.js
 * (prune and merge, tiny-moe), bench/quantize-table.js (quantize, tiny-moe) and bench/quality-check.js (both
 * fixtures), made by the same commands from the same calibrations, each scored by `moe eval --task` on the bundled
 * task of its fixture (all 200 items): fixtures/tasks/moby-cloze.jsonl for fixtures/tiny-moe,
 * fixtures/tasks/sotu-cloze.jsonl for fixtures/tiny-dsv3. Only the accuracy is measured here (the perplexity columns
 * come from those scripts).
 *   npm run build && node bench/task-columns.js [--tables compression,quantize,quality] [--out FILE]
 * --out FILE keeps every result as it comes (JSON, keyed by table and label) and reuses it on a re-run, so an
 * interrupted run resumes. Prints one markdown column per table: label | acc ± stderr.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { CALIB_TEXT, FIXTURE, ROOT, moe, option, withWorkDir } = require('./lib');

const TABLES = option('--tables', 'compression,quantize,quality').split(',');
const OUT = option('--out');
const DSV3 = path.join(ROOT, 'fixtures', 'tiny-dsv3');
const TASK = {
  [FIXTURE]: path.join(ROOT, 'fixtures', 'tasks', 'moby-cloze.jsonl'),
  [DSV3]: path.join(ROOT, 'fixtures', 'tasks', 'sotu-cloze.jsonl'),
};

const results = OUT && fs.existsSync(OUT) ? JSON.parse(fs.readFileSync(OUT, 'utf8')) : {};
const save = () => OUT && fs.writeFileSync(OUT, JSON.stringify(results, null, 1) + '\n');

/** acc of `dir` (a model made from `model`) on the model's task, or the stored result. */
function score(table, label, model, dir) {
  results[table] ??= {};
  if (results[table][label]) return results[table][label];
  const t = moe(['eval', dir, '--task', TASK[model]]).tasks;
  const r = Object.values(t)[0];
  results[table][label] = { n: r.n, acc: r.acc, acc_stderr: r.acc_stderr, acc_norm: r.acc_norm };
  save();
  console.error(`${table} / ${label}: acc ${(100 * r.acc).toFixed(1)}%`);
  return results[table][label];
}

/** Makes each model (args after the command's model argument) in `work`, scores it, removes it. */
function measure(table, model, work, stats, rows) {
  for (const [label, args] of rows) {
    if (results[table]?.[label]) continue;
    let dir = model;
    if (args) {
      dir = path.join(work, `${table}-${label}`.replace(/[^a-z0-9.-]/gi, '_'));
      moe([args[0], model, ...(stats ? ['--stats', stats] : []), ...args.slice(1), '-o', dir]);
    }
    score(table, label, model, dir);
    if (args) fs.rmSync(dir, { recursive: true, force: true });
  }
}

const done = (table, rows) => rows.every(([label]) => results[table]?.[label]);

/** bench/compression-table.js: calibration 32,768 tokens (windows of 256, NAEE 1,024), 6/8 and 4/8 experts. */
function compression(work) {
  const rows = [['original', null]];
  for (const keep of [6, 4]) {
    const k = ['--keep', String(keep)];
    for (const m of ['frequency', 'soft-frequency', 'reap', 'naee'])
      rows.push([`prune ${m} ${keep}/8`, ['prune', '--method', m, ...k]]);
    for (const seed of [0, 1, 2])
      rows.push([`prune random (seed ${seed}) ${keep}/8`, ['prune', '--method', 'random', '--seed', `${seed}`, ...k]]);
    const merges = [
      ['merge msmoe (expert-output similarity, aligned)', ['--method', 'msmoe']],
      ['merge msmoe (expert-output similarity, no alignment)', ['--method', 'msmoe', '--align', 'off']],
      ['merge msmoe (router-logit similarity, aligned)', ['--method', 'msmoe', '--similarity', 'router-logits']],
      ['merge hcsmoe (aligned)', ['--method', 'hcsmoe']],
      ['merge hcsmoe (no alignment)', ['--method', 'hcsmoe', '--align', 'off']],
      ['merge average', ['--method', 'average']],
    ];
    for (const [label, a] of merges) rows.push([`${label} ${keep}/8`, ['merge', ...a, ...k]]);
  }
  if (done('compression', rows)) return rows;
  const stats = path.join(work, 'compression-stats');
  const cal = ['--seq-len', '256', '--max-tokens', '32768', '--naee-tokens', '1024'];
  moe(['calibrate', FIXTURE, '--data', CALIB_TEXT, ...cal, '-o', stats]);
  measure('compression', FIXTURE, work, stats, rows);
  return rows;
}

/** bench/quantize-table.js: calibration 32,768 tokens with Hessians (windows of 256). */
function quantize(work) {
  const rows = [
    ['original (bf16)', null],
    ['RTN 8-bit', ['quantize', '--bits', '8', '--method', 'rtn']],
    ['GPTQ 8-bit', ['quantize', '--bits', '8', '--method', 'gptq']],
    ['RTN 4-bit', ['quantize', '--bits', '4', '--method', 'rtn']],
    ['GPTQ 4-bit', ['quantize', '--bits', '4', '--method', 'gptq']],
  ];
  for (const method of ['rtn', 'gptq']) {
    const M = method.toUpperCase();
    const q = ['quantize', '--method', method];
    rows.push([`${M} uniform 3-bit`, [...q, '--bits', '3']]);
    rows.push([`${M} LP 3-bit average`, [...q, '--bits', '3', '--allocate', 'lp']]);
    const proj = [...q, '--bits', '3', '--allocate', 'lp', '--granularity', 'projection'];
    rows.push([`${M} LP 3-bit average (projection groups)`, proj]);
    rows.push([`${M} uniform 2-bit`, [...q, '--bits', '2']]);
    rows.push([`${M} LP 2.5-bit average`, [...q, '--bits', '2.5', '--allocate', 'lp']]);
  }
  if (done('quantize', rows)) return rows;
  const stats = path.join(work, 'quantize-stats');
  const cal = ['--seq-len', '256', '--max-tokens', '32768', '--hessians'];
  moe(['calibrate', FIXTURE, '--data', CALIB_TEXT, ...cal, '-o', stats]);
  measure('quantize', FIXTURE, work, stats, rows);
  return rows;
}

/** bench/quality-check.js (default settings): calibration 16,384 tokens with Hessians, windows of 128, NAEE 512. */
function quality(work) {
  const all = [];
  for (const [name, model, text] of [
    ['tiny-moe', FIXTURE, CALIB_TEXT],
    ['tiny-dsv3', DSV3, path.join(ROOT, 'fixtures', 'sotu', 'calib.txt')],
  ]) {
    const keep = ['--keep', '4'];
    const rows = [['original', null]];
    for (const seed of [0, 1, 2])
      rows.push([`random-${seed}`, ['prune', '--method', 'random', '--seed', `${seed}`, ...keep]]);
    for (const m of ['reap', 'naee', 'frequency']) rows.push([m, ['prune', '--method', m, ...keep]]);
    for (const m of ['msmoe', 'hcsmoe', 'average']) rows.push([m, ['merge', '--method', m, ...keep]]);
    for (const m of ['rtn', 'gptq']) {
      rows.push([`${m}-3`, ['quantize', '--bits', '3', '--method', m]]);
      rows.push([`${m}-lp-3`, ['quantize', '--bits', '3', '--method', m, '--allocate', 'lp']]);
    }
    const table = `quality ${name}`;
    all.push([table, rows]);
    if (done(table, rows)) continue;
    const stats = path.join(work, `${name}-stats`);
    const cal = ['--seq-len', '128', '--max-tokens', '16384', '--naee-tokens', '512', '--hessians'];
    moe(['calibrate', model, '--data', text, ...cal, '-o', stats]);
    measure(table, model, work, stats, rows);
  }
  return all;
}

const pct = (r) => `${(100 * r.acc).toFixed(1)}% ± ${(100 * r.acc_stderr).toFixed(1)}`;
withWorkDir('moe-task-columns-', (work) => {
  const t0 = Date.now();
  const printed = [];
  if (TABLES.includes('compression')) printed.push(['compression', compression(work)]);
  if (TABLES.includes('quantize')) printed.push(['quantize', quantize(work)]);
  if (TABLES.includes('quality')) printed.push(...quality(work));
  for (const [table, rows] of printed) {
    console.log(`\n${table}: acc on ${table.includes('dsv3') ? 'sotu-cloze' : 'moby-cloze'} (200 items)`);
    for (const [label] of rows) console.log(`| ${label} | ${pct(results[table][label])} |`);
  }
  console.log(`\n${((Date.now() - t0) / 1000).toFixed(0)} s`);
});
