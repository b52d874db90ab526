#!/usr/bin/env node
/**
 * Fewer (or more) active experts per token: `moe eval --top-k K`, `--top-p P` (the fewest of the model's own top-k
 * whose probability mass reaches P) and `--skip-ratio B` (NAEE's dynamic skipping) on both trained fixtures, against
 * the original (its own top-k) on the fixture's held-out text (all of it) and on WikiText-2 test (first 16,384
 * tokens), windows of 256. Active routed experts and parameters per token are moe eval's (mean over the held-out
 * tokens and MoE layers; parameters counted as `moe inspect` counts them, embeddings included).
 *   npx tsc -p tsconfig.build.json && node bench/top-k.js [--fixture tiny-moe|tiny-dsv3] [--out FILE]
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ROOT, moe, option } = require('./lib');

const FIXTURES = [
  { name: 'tiny-moe', text: 'text', ks: [1, 2, 3, 4, 8] },
  { name: 'tiny-dsv3', text: 'sotu', ks: [1, 2, 3, 4] },
].filter((f) => !option('--fixture') || f.name === option('--fixture'));
const DYNAMIC = [
  ['--top-p', '0.3'],
  ['--top-p', '0.5'],
  ['--top-p', '0.7'],
  ['--skip-ratio', '0.3'],
  ['--skip-ratio', '0.5'],
  ['--skip-ratio', '0.7'],
];
const WIKI = '/work/shared/data/wikitext-2/test.txt';

const lines = [];
const log = (s) => {
  lines.push(s);
  console.log(s);
};
log(
  '| fixture | routing | experts per token | active params per token | held-out ppl | KL | top-1 | WikiText-2 ppl | Wiki KL |',
);
log('|---|---|---|---|---|---|---|---|---|');
for (const f of FIXTURES) {
  const model = path.join(ROOT, 'fixtures', f.name);
  const info = moe(['inspect', model]);
  const rows = [...f.ks.map((k) => ['--top-k', String(k)]), ...DYNAMIC];
  for (const args of rows) {
    const ev = (data, extra) =>
      moe(['eval', model, ...args, '--baseline', model, '--data', data, '--seq-len', '256', ...extra]);
    const held = ev(path.join(ROOT, 'fixtures', f.text, 'eval.txt'), []);
    const wiki = ev(WIKI, ['--max-tokens', '16384']);
    const active = held.active_params_per_token;
    const own = args[0] === '--top-k' && Number(args[1]) === info.top_k ? ' (own)' : '';
    log(
      `| ${f.name} | \`${args.join(' ')}\`${own} | ${held.active_experts_per_token.toFixed(2)} | ` +
        `${(active / 1e6).toFixed(2)} M (${((100 * active) / info.params_total).toFixed(0)}%) | ` +
        `${held.perplexity.toFixed(2)} | ${held.baseline.kl_mean.toFixed(4)} | ` +
        `${(100 * held.baseline.top1_agreement).toFixed(1)}% | ${wiki.perplexity.toFixed(1)} | ` +
        `${wiki.baseline.kl_mean.toFixed(4)} |`,
    );
  }
}
if (option('--out')) fs.writeFileSync(option('--out'), lines.join('\n') + '\n');
