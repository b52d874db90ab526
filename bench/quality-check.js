#!/usr/bin/env node
/**
 * The quality claims of the tests, on both trained fixtures and on WikiText-2: one table.
 *   npm run build && node bench/quality-check.js [--max-tokens N] [--seq-len N] [--wikitext FILE] [--reference]
 *
 * For each fixture (fixtures/tiny-moe: Qwen3-MoE on Moby-Dick; fixtures/tiny-dsv3: DeepSeek-V3 on State of the
 * Union addresses) one calibration with Hessians on its own calib.txt (--calib-tokens, windows of --seq-len), then
 * every compressed model is evaluated by `moe eval` on the fixture's held-out eval.txt and on WikiText-2 test
 * (first --max-tokens tokens of each, windows of --seq-len). The claims (each one a test asserts on the held-out
 * text, test/prune/quality.test.ts, test/commands/quantize.test.ts, test/eval/fixture2-quality.test.ts):
 *   at 4 of 8 experts, REAP / NAEE / frequency pruning and M-SMoE / HC-SMoE merging beat random pruning (mean of
 *   seeds 0-2); merging also beats plain averaging (merge --method average); GPTQ 3-bit beats RTN 3-bit; LP
 *   allocation at 3 bits on average beats uniform 3 bits (RTN and GPTQ).
 * A cell shows the two perplexities and ✓ when the claim holds, ✗ when it does not.
 * --reference also checks `moe eval` against each fixture's reference-ppl.json (every run, full texts included).
 * WikiText-2: --wikitext FILE, default ../shared/data/wikitext-2/test.txt beside the repository (CC BY-SA 3.0,
 * not shipped); its column is left out when the file is absent.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const MOE = path.join(ROOT, 'bin', 'moe.js');
const FIXTURES = [
  { name: 'tiny-moe', model: path.join(ROOT, 'fixtures', 'tiny-moe'), text: path.join(ROOT, 'fixtures', 'text'), label: 'Moby-Dick' },
  { name: 'tiny-dsv3', model: path.join(ROOT, 'fixtures', 'tiny-dsv3'), text: path.join(ROOT, 'fixtures', 'sotu'), label: 'SOTU' },
];

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const MAX_TOKENS = Number(option('--max-tokens', '4096'));
const SEQ_LEN = Number(option('--seq-len', '128'));
const CALIB_TOKENS = Number(option('--calib-tokens', '16384'));
const WIKITEXT = path.resolve(option('--wikitext', path.join(ROOT, '..', 'shared', 'data', 'wikitext-2', 'test.txt')));

function moe(args) {
  const r = spawnSync(process.execPath, [MOE, ...args, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Model variants: label → moe arguments that make it from the fixture (null: the fixture itself). */
function variants(stats) {
  const keep = ['--keep', '4', '--stats', stats];
  const v = { original: null };
  for (const seed of [0, 1, 2]) v[`random-${seed}`] = ['prune', '--method', 'random', '--seed', String(seed), ...keep];
  for (const m of ['reap', 'naee', 'frequency']) v[m] = ['prune', '--method', m, ...keep];
  for (const m of ['msmoe', 'hcsmoe', 'average']) v[m] = ['merge', '--method', m, ...keep];
  for (const m of ['rtn', 'gptq']) {
    v[`${m}-3`] = ['quantize', '--bits', '3', '--method', m, '--stats', stats];
    v[`${m}-lp-3`] = ['quantize', '--bits', '3', '--method', m, '--allocate', 'lp', '--stats', stats];
  }
  return v;
}

const CLAIMS = [
  ...['reap', 'naee', 'frequency'].map((m) => [`prune ${m} < random (4/8)`, m, 'random']),
  ...['msmoe', 'hcsmoe'].map((m) => [`merge ${m} < random (4/8)`, m, 'random']),
  ...['msmoe', 'hcsmoe'].map((m) => [`merge ${m} < merge average (4/8)`, m, 'average']),
  ['GPTQ 3-bit < RTN 3-bit', 'gptq-3', 'rtn-3'],
  ['LP 3-bit avg < uniform 3-bit (RTN)', 'rtn-lp-3', 'rtn-3'],
  ['LP 3-bit avg < uniform 3-bit (GPTQ)', 'gptq-lp-3', 'gptq-3'],
];

function checkReference(f) {
  const ref = JSON.parse(fs.readFileSync(path.join(f.model, 'reference-ppl.json'), 'utf8'));
  for (const run of ref.runs) {
    const args = ['eval', f.model, '--data', path.join(ROOT, run.text), '--seq-len', String(run.seq_len)];
    if (run.max_tokens !== null) args.push('--max-tokens', String(run.max_tokens));
    const e = moe(args);
    const rel = e.perplexity / run.perplexity - 1;
    console.log(`reference ${f.name} ${run.text} seq ${run.seq_len} max ${run.max_tokens}: moe ${e.perplexity.toFixed(4)} transformers ${run.perplexity.toFixed(4)} (${(rel * 100).toFixed(4)}%)`);
  }
}

const texts = (f) => {
  const t = [[`${f.label} eval`, path.join(f.text, 'eval.txt')]];
  if (fs.existsSync(WIKITEXT)) t.push(['WikiText-2 test', WIKITEXT]);
  return t;
};

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-quality-'));
const t0 = Date.now();
try {
  if (!fs.existsSync(WIKITEXT)) console.log(`(no ${WIKITEXT}: WikiText-2 columns left out)`);
  const columns = []; // { title, ppl: { variant: perplexity } }
  for (const f of FIXTURES) {
    if (process.argv.includes('--reference')) checkReference(f);
    const stats = path.join(work, `${f.name}-stats`);
    moe(['calibrate', f.model, '--data', path.join(f.text, 'calib.txt'), '--seq-len', String(SEQ_LEN), '--max-tokens', String(CALIB_TOKENS), '--naee-tokens', '512', '--hessians', '-o', stats]);
    const cols = texts(f).map(([t, file]) => ({ title: `${f.name} / ${t}`, file, ppl: {} }));
    for (const [label, args] of Object.entries(variants(stats))) {
      let dir = f.model;
      if (args) {
        dir = path.join(work, `${f.name}-${label}`);
        moe([args[0], f.model, ...args.slice(1), '-o', dir]);
      }
      for (const c of cols) c.ppl[label] = moe(['eval', dir, '--data', c.file, '--seq-len', String(SEQ_LEN), '--max-tokens', String(MAX_TOKENS)]).perplexity;
      if (args) fs.rmSync(dir, { recursive: true, force: true });
    }
    for (const c of cols) c.ppl.random = [0, 1, 2].reduce((s, i) => s + c.ppl[`random-${i}`], 0) / 3;
    columns.push(...cols);
  }
  console.log(`eval: first ${MAX_TOKENS} tokens of each text, windows of ${SEQ_LEN}; calibration: ${CALIB_TOKENS} tokens of each fixture's calib.txt (Hessians); random = mean of seeds 0-2`);
  console.log(`| claim | ${columns.map((c) => c.title).join(' | ')} |`);
  console.log(`|---|${columns.map(() => '---').join('|')}|`);
  console.log(`| original perplexity | ${columns.map((c) => c.ppl.original.toFixed(2)).join(' | ')} |`);
  let failed = 0;
  for (const [claim, a, b] of CLAIMS) {
    const cells = columns.map((c) => {
      const ok = c.ppl[a] < c.ppl[b];
      if (!ok) failed++;
      return `${c.ppl[a].toFixed(2)} vs ${c.ppl[b].toFixed(2)} ${ok ? '✓' : '✗'}`;
    });
    console.log(`| ${claim} | ${cells.join(' | ')} |`);
  }
  console.log(`${CLAIMS.length * columns.length - failed} of ${CLAIMS.length * columns.length} claims hold; ${((Date.now() - t0) / 1000).toFixed(0)} s`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
