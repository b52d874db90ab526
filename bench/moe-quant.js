#!/usr/bin/env node
/**
 * MoE-aware quantization (issue 24) against plain GPTQ and RTN, on both trained fixtures and on WikiText-2:
 *
 *   npm run build && node bench/moe-quant.js [--fixtures tiny-moe,tiny-dsv3] [--calib-tokens 32768]
 *     [--seq-len 256] [--wiki-tokens 16384] [--wikitext FILE] [--methods rtn,gptq,...] [--ebss-args "..."] [--markdown]
 *
 * Per fixture (fixtures/tiny-moe: Qwen3-MoE, 8 experts top-2, on Moby-Dick; fixtures/tiny-dsv3: DeepSeek-V3, sigmoid
 * routing, shared expert, on State of the Union addresses), calibrations on the fixture's calib.txt with Hessians:
 * plain; --all-experts (every expert's Hessian over every token); --hessian-weighting gate (MoEQuant's AGQ); both.
 * Their time and peak RSS are printed. Then each quantization at 4 and 3 bits (uniform) and 2.5 bits on average (LP
 * allocation, MC-MoE, expert granularity): RTN, GPTQ, GPTQ from each MoE-aware calibration, GPTQ with the router
 * kept unquantized (--keep-router-fp) or refitted (--align-router, EAQuant's router alignment; the same size), RTN and
 * GPTQ with AWQ (--awq), everything at once, and GPTQ calibrated on text the model writes itself (--self-sample,
 * MoEQuant's EBSS: as many tokens as the text calibrations, in sequences of --seq-len; alone and with AGQ)
 * (--methods KEY,... picks rows: rtn, gptq, all, agq, all-agq, kept, aligned, rtn-awq, awq, every, ebss, ebss-agq).
 * The calibration table gives each calibration set's expert imbalance (mean over MoE layers of the coefficient of
 * variation of the routed counts; 0: every expert got as many tokens). Each model is evaluated by
 * `moe eval --baseline FIXTURE` on the fixture's held-out eval.txt (all of it) and on the first --wiki-tokens tokens of WikiText-2 test (windows of --seq-len): perplexity,
 * KL(original‖model) per token, top-1 agreement, routing agreement (top-k set overlap, mean over MoE layers); and
 * by `moe eval --task` on the fixture's 200-item cloze (accuracy; one standard error ≈ 3.5 points). Size: the
 * safetensors files. Time: the quantize command's wall clock (its calibration excluded).
 * WikiText-2 (CC BY-SA 3.0, not shipped): --wikitext FILE, default ../shared/data/wikitext-2/test.txt.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');

const { MOE, ROOT, flag, option, table, withWorkDir } = lib;
const FIXTURES = {
  'tiny-moe': { text: 'text', task: 'moby-cloze' },
  'tiny-dsv3': { text: 'sotu', task: 'sotu-cloze' },
};
const ONLY = option('--fixtures', Object.keys(FIXTURES).join(',')).split(',');
const CALIB_TOKENS = option('--calib-tokens', '32768');
const SEQ = option('--seq-len', '256');
const WIKI_TOKENS = option('--wiki-tokens', '16384');
const WIKITEXT = path.resolve(option('--wikitext', path.join(ROOT, '..', 'shared', 'data', 'wikitext-2', 'test.txt')));
const MARKDOWN = flag('--markdown');
/** Extra calibrate arguments of the self-sampled calibration, e.g. "--sample-no-repeat 4". */
const EBSS_ARGS = option('--ebss-args', '').split(' ').filter(Boolean);

function moe(argv) {
  const r = lib.timed(process.execPath, [MOE, ...argv, '--json']);
  return { ...lib.parseJson(r.stdout, `moe ${argv.join(' ')}`), wall: r.seconds, rss: r.peak_rss_bytes };
}

/**
 * label → calibrate arguments (beside --hessians); data: 'self' self-samples as many tokens as the text calibrations
 * read (EBSS), 'ebss' reuses those sequences (the self-sample.json of that calibration).
 */
const CALIBRATIONS = {
  plain: { args: [] },
  'all-experts': { args: ['--all-experts'] },
  gate: { args: ['--hessian-weighting', 'gate'] },
  'all-experts + gate': { args: ['--all-experts', '--hessian-weighting', 'gate'] },
  ebss: { args: [], data: 'self' },
  'ebss + gate': { args: ['--hessian-weighting', 'gate'], data: 'ebss' },
};

/** key → [label, calibration, quantize arguments] */
const ALL_METHODS = {
  rtn: ['RTN', 'plain', ['--method', 'rtn']],
  gptq: ['GPTQ', 'plain', ['--method', 'gptq']],
  all: ['GPTQ, all experts', 'all-experts', ['--method', 'gptq']],
  agq: ['GPTQ, AGQ', 'gate', ['--method', 'gptq']],
  'all-agq': ['GPTQ, all experts + AGQ', 'all-experts + gate', ['--method', 'gptq']],
  kept: ['GPTQ, router kept', 'plain', ['--method', 'gptq', '--keep-router-fp']],
  aligned: ['GPTQ, router aligned', 'plain', ['--method', 'gptq', '--align-router']],
  'rtn-awq': ['RTN + AWQ', 'plain', ['--method', 'rtn', '--awq']],
  awq: ['GPTQ + AWQ', 'plain', ['--method', 'gptq', '--awq']],
  every: ['GPTQ + AWQ, AGQ, router aligned', 'gate', ['--method', 'gptq', '--awq', '--align-router']],
  ebss: ['GPTQ, EBSS', 'ebss', ['--method', 'gptq']],
  'ebss-agq': ['GPTQ, EBSS + AGQ', 'ebss + gate', ['--method', 'gptq']],
};
const METHODS = option('--methods', Object.keys(ALL_METHODS).join(','))
  .split(',')
  .map((k) => {
    if (!ALL_METHODS[k]) throw new Error(`--methods: ${k} is not one of ${Object.keys(ALL_METHODS).join(', ')}`);
    return ALL_METHODS[k];
  });
const BITS = [
  ['4', ['--bits', '4']],
  ['3', ['--bits', '3']],
  ['2.5 (LP)', ['--bits', '2.5', '--allocate', 'lp', '--granularity', 'expert']],
];
/**
 * tiny-dsv3's attention and shared expert are a large share of its weights: with their default floor of 4 bits an
 * average of 2.5 is out of reach (2.72 at least), so there they are fixed at 3 bits.
 */
const LP_EXTRA = { 'tiny-dsv3': ['--attn-bits', '3', '--shared-expert-bits', '3'] };

function evalOn(model, original, data, maxTokens) {
  const argv = ['eval', model, '--baseline', original, '--data', data, '--seq-len', SEQ];
  if (maxTokens) argv.push('--max-tokens', maxTokens);
  const r = moe(argv);
  const b = r.baseline;
  const routing = b.routing_agreement.reduce((s, x) => s + x.agreement, 0) / b.routing_agreement.length;
  return { ppl: r.perplexity, kl: b.kl_mean, top1: b.top1_agreement, routing };
}

function taskAcc(model, task) {
  const r = moe(['eval', model, '--task', path.join(ROOT, 'fixtures', 'tasks', `${task}.jsonl`)]);
  return Object.values(r.tasks)[0].acc;
}

function fixtureRows(name, work) {
  const f = FIXTURES[name];
  const model = path.join(ROOT, 'fixtures', name);
  const texts = path.join(ROOT, 'fixtures', f.text);
  const wiki = fs.existsSync(WIKITEXT);
  const calib = {};
  const needed = new Set(METHODS.map((m) => m[1]));
  if (needed.has('ebss + gate')) needed.add('ebss');
  for (const [label, { args, data }] of Object.entries(CALIBRATIONS)) {
    if (!needed.has(label)) continue;
    const out = path.join(work, `${name}-stats-${label.replace(/\W+/g, '-')}`);
    const source =
      data === 'self'
        ? ['--self-sample', String(Math.floor(Number(CALIB_TOKENS) / Number(SEQ))), ...EBSS_ARGS]
        : data === 'ebss'
          ? ['--data', path.join(calib.ebss.dir, 'self-sample.json')]
          : ['--data', path.join(texts, 'calib.txt'), '--max-tokens', CALIB_TOKENS];
    const r = moe(['calibrate', model, ...source, '--seq-len', SEQ, '--hessians', ...args, '-o', out]);
    calib[label] = { dir: out, seconds: r.wall, rss: r.rss, imbalance: r.imbalance };
    process.stderr.write(`${name}: calibration ${label}: ${r.wall.toFixed(1)} s\n`);
  }
  const original = {
    fixture: evalOn(model, model, path.join(texts, 'eval.txt')),
    wiki: wiki ? evalOn(model, model, WIKITEXT, WIKI_TOKENS) : undefined,
    acc: taskAcc(model, f.task),
    bytes: lib.folderBytes(model, { shardsOnly: true }),
  };
  const rows = [{ label: 'original', bits: '16', ...original, seconds: 0 }];
  for (const [bits, bitArgs] of BITS) {
    for (const [label, cal, args] of METHODS) {
      if (!calib[cal]) continue;
      const out = path.join(work, `${name}-${bits}-${label}`.replace(/\W+/g, '-'));
      const extra = bits.includes('LP') ? (LP_EXTRA[name] ?? []) : [];
      const q = moe(['quantize', model, ...bitArgs, ...extra, ...args, '--stats', calib[cal].dir, '-o', out]);
      rows.push({
        label,
        bits,
        fixture: evalOn(out, model, path.join(texts, 'eval.txt')),
        wiki: wiki ? evalOn(out, model, WIKITEXT, WIKI_TOKENS) : undefined,
        acc: taskAcc(out, f.task),
        bytes: lib.folderBytes(out, { shardsOnly: true }),
        seconds: q.wall,
      });
      process.stderr.write(`${name}: ${bits} ${label}: ${rows[rows.length - 1].fixture.ppl.toFixed(2)}\n`);
    }
  }
  return { calib, rows, wiki };
}

function print(name, { calib, rows, wiki }) {
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  console.log(`\n${name}: calibration (${CALIB_TOKENS} tokens, windows of ${SEQ}, with Hessians)\n`);
  table(
    ['calibration', 'seconds', 'peak RSS MB', 'expert imbalance'],
    Object.entries(calib).map(([k, c]) => [k, c.seconds.toFixed(1), (c.rss / 1e6).toFixed(0), c.imbalance.toFixed(3)]),
  );
  const header = ['bits', 'method', 'ppl', 'KL', 'top-1', 'routing'];
  if (wiki) header.push('WikiText-2 ppl', 'Wiki KL', 'Wiki routing');
  header.push('task acc', 'MB', 'quantize s');
  const body = rows.map((r) => {
    const row = [
      r.bits,
      r.label,
      r.fixture.ppl.toFixed(2),
      r.fixture.kl.toFixed(4),
      pct(r.fixture.top1),
      pct(r.fixture.routing),
    ];
    if (wiki) row.push(r.wiki.ppl.toFixed(1), r.wiki.kl.toFixed(4), pct(r.wiki.routing));
    row.push(pct(r.acc), (r.bytes / 1e6).toFixed(2), r.seconds.toFixed(1));
    return row;
  });
  console.log(`\n${name}: held-out text, WikiText-2 (first ${WIKI_TOKENS} tokens), cloze task\n`);
  if (MARKDOWN) {
    console.log(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|`);
    for (const row of body) console.log(`| ${row.join(' | ')} |`);
  } else table(header, body);
}

withWorkDir('moe-quant-bench-', (work) => {
  for (const name of ONLY) print(name, fixtureRows(name, work));
});
