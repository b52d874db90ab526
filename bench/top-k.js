#!/usr/bin/env node
/**
 * Fewer (or more) active experts per token: `moe eval --top-k K` on both trained fixtures, against the original
 * (its own top-k) on the fixture's held-out text (all of it) and on WikiText-2 test (first 16,384 tokens), windows
 * of 256. Active parameters per token are counted as `moe inspect` counts them (everything but the routed experts,
 * embeddings included, plus K/E of the routed experts).
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
const WIKI = '/work/shared/data/wikitext-2/test.txt';

const lines = [];
const log = (s) => {
  lines.push(s);
  console.log(s);
};
log('| fixture | experts per token | active params per token | held-out ppl | KL | top-1 | WikiText-2 ppl | Wiki KL |');
log('|---|---|---|---|---|---|---|---|');
for (const f of FIXTURES) {
  const model = path.join(ROOT, 'fixtures', f.name);
  const info = moe(['inspect', model]);
  const E = info.experts_per_layer[0];
  for (const k of f.ks) {
    const ev = (data, extra) =>
      moe(['eval', model, '--top-k', String(k), '--baseline', model, '--data', data, '--seq-len', '256', ...extra]);
    const held = ev(path.join(ROOT, 'fixtures', f.text, 'eval.txt'), []);
    const wiki = ev(WIKI, ['--max-tokens', '16384']);
    const active = info.params_total - info.params_experts + Math.round((info.params_experts * k) / E);
    const own = k === info.top_k ? ' (own)' : '';
    log(
      `| ${f.name} | ${k}${own} | ${(active / 1e6).toFixed(2)} M (${((100 * active) / info.params_total).toFixed(0)}%) | ` +
        `${held.perplexity.toFixed(2)} | ${held.baseline.kl_mean.toFixed(4)} | ` +
        `${(100 * held.baseline.top1_agreement).toFixed(1)}% | ${wiki.perplexity.toFixed(1)} | ` +
        `${wiki.baseline.kl_mean.toFixed(4)} |`,
    );
  }
}
if (option('--out')) fs.writeFileSync(option('--out'), lines.join('\n') + '\n');
