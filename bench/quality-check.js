#!/usr/bin/env node
/**
 * The quality claims of the tests, on both trained fixtures and on WikiText-2: one table.
 *   npm run build && node bench/quality-check.js [--max-tokens N] [--seq-len N] [--calib-tokens N] [--wikitext FILE]
 *     [--reference] [--fixtures tiny-moe,tiny-dsv3] [--cache DIR]
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
 * --cache DIR keeps each fixture's perplexities in DIR/<fixture>.json (keyed by the settings) and reuses them, so the
 * fixtures can be measured in separate runs and printed in one table.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const MOE = path.join(ROOT, 'bin', 'moe.js');
const FIXTURES = [
  { name: 'tiny-moe', text: 'text', label: 'Moby-Dick' },
  { name: 'tiny-dsv3', text: 'sotu', label: 'SOTU' },
].map((f) => ({ ...f, model: path.join(ROOT, 'fixtures', f.name), text: path.join(ROOT, 'fixtures', f.text) }));

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const MAX_TOKENS = Number(option('--max-tokens', '4096'));
const SEQ_LEN = Number(option('--seq-len', '128'));
const CALIB_TOKENS = Number(option('--calib-tokens', '16384'));
const ONLY = option('--fixtures', FIXTURES.map((f) => f.name).join(',')).split(',');
const CACHE = option('--cache');
const WIKITEXT = path.resolve(option('--wikitext', path.join(ROOT, '..', 'shared', 'data', 'wikitext-2', 'test.txt')));

function moe(args) {
  const io = { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 };
  const r = spawnSync(process.execPath, [MOE, ...args, '--json'], io);
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
    const what = `reference ${f.name} ${run.text} seq ${run.seq_len} max ${run.max_tokens}`;
    const diff = `${(rel * 100).toFixed(4)}%`;
    console.log(`${what}: moe ${e.perplexity.toFixed(4)}, transformers ${run.perplexity.toFixed(4)} (${diff})`);
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
  for (const f of FIXTURES.filter((x) => ONLY.includes(x.name))) {
    if (process.argv.includes('--reference')) checkReference(f);
    const key = JSON.stringify({ MAX_TOKENS, SEQ_LEN, CALIB_TOKENS, texts: texts(f) });
    const cached = CACHE && path.join(CACHE, `${f.name}.json`);
    if (cached && fs.existsSync(cached)) {
      const c = JSON.parse(fs.readFileSync(cached, 'utf8'));
      if (c.key === key) {
        columns.push(...c.columns);
        continue;
      }
    }
    const stats = path.join(work, `${f.name}-stats`);
    const calib = ['--data', path.join(f.text, 'calib.txt'), '--seq-len', String(SEQ_LEN)];
    calib.push('--max-tokens', String(CALIB_TOKENS));
    moe(['calibrate', f.model, ...calib, '--naee-tokens', '512', '--hessians', '-o', stats]);
    const cols = texts(f).map(([t, file]) => ({ title: `${f.name} / ${t}`, file, ppl: {} }));
    for (const [label, args] of Object.entries(variants(stats))) {
      let dir = f.model;
      if (args) {
        dir = path.join(work, `${f.name}-${label}`);
        moe([args[0], f.model, ...args.slice(1), '-o', dir]);
      }
      const window = ['--seq-len', String(SEQ_LEN), '--max-tokens', String(MAX_TOKENS)];
      for (const c of cols) c.ppl[label] = moe(['eval', dir, '--data', c.file, ...window]).perplexity;
      if (args) fs.rmSync(dir, { recursive: true, force: true });
    }
    for (const c of cols) c.ppl.random = [0, 1, 2].reduce((s, i) => s + c.ppl[`random-${i}`], 0) / 3;
    columns.push(...cols);
    if (cached) {
      fs.mkdirSync(CACHE, { recursive: true });
      fs.writeFileSync(cached, JSON.stringify({ key, columns }, null, 1));
    }
  }
  console.log(`eval: first ${MAX_TOKENS} tokens of each text, windows of ${SEQ_LEN}; random = mean of seeds 0-2`);
  console.log(`calibration: ${CALIB_TOKENS} tokens of each fixture's calib.txt, with Hessians`);
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
  const total = CLAIMS.length * columns.length;
  console.log(`${total - failed} of ${total} claims hold; ${((Date.now() - t0) / 1000).toFixed(0)} s`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
