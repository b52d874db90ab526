#!/usr/bin/env node
/**
 * What per-expert bit allocation gains over layer-projection allocation (all experts of a layer share the bits of
 * each of gate/up/down, what fused-MoE kernels and GGUF's ffn_*_exps can run) at the same average bits: the
 * README's granularity table.
 *   npm run build && node bench/granularity.js [--markdown] [--fixtures tiny-moe,tiny-dsv3] [--bits 3,4]
 *     [--calib-tokens 32768] [--eval-tokens N] [--wikitext FILE] [--wikitext-tokens 8192]
 *
 * For each trained fixture (tiny-moe: Qwen3-MoE on Moby-Dick; tiny-dsv3: DeepSeek-V3 on State of the Union
 * addresses) one calibration with Hessians on its calib.txt (windows of 256, as bench/quantize-table.js), then at
 * each --bits: uniform bits, and the LP (--allocate lp, GPTQ since the stats hold Hessians) at --granularity
 * layer (what vLLM's fused-MoE kernels run: one scheme per MoE layer), layer-projection (GGUF's ffn_*_exps) and
 * expert, all written as moe-packed. Each model is evaluated by `moe eval`
 * against the original on the fixture's held-out eval.txt (all of it) and on WikiText-2 test (the first
 * --wikitext-tokens tokens; default ../shared/data/wikitext-2/test.txt beside the repository, CC BY-SA 3.0, not
 * shipped; its columns are left out when the file is absent), windows of 256. Size: the safetensors shards.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');
const { flag, moe, option, ROOT, withWorkDir } = lib;

const FIXTURES = [
  { name: 'tiny-moe', text: 'text' },
  { name: 'tiny-dsv3', text: 'sotu' },
].map((f) => ({ ...f, model: path.join(ROOT, 'fixtures', f.name), text: path.join(ROOT, 'fixtures', f.text) }));
const ONLY = option('--fixtures', FIXTURES.map((f) => f.name).join(',')).split(',');
const BITS = option('--bits', '3,4').split(',').map(Number);
const CALIB_TOKENS = option('--calib-tokens', '32768');
const SEQ_LEN = '256';
const WIKITEXT = path.resolve(option('--wikitext', path.join(ROOT, '..', 'shared', 'data', 'wikitext-2', 'test.txt')));
const WIKITEXT_TOKENS = option('--wikitext-tokens', '8192');
/** Tokens of each fixture's eval.txt (default: all of it). */
const EVAL_TOKENS = option('--eval-tokens');
const markdown = flag('--markdown');
const hasWikitext = fs.existsSync(WIKITEXT);

const folderBytes = (dir) => lib.folderBytes(dir, { shardsOnly: true });

/** Allocation label → moe quantize arguments at `bits`. */
const ALLOCATIONS = {
  uniform: (bits) => ['--bits', String(bits)],
  'LP layer': (bits) => ['--bits', String(bits), '--allocate', 'lp', '--granularity', 'layer'],
  'LP layer-projection': (bits) => ['--bits', String(bits), '--allocate', 'lp', '--granularity', 'layer-projection'],
  'LP per expert': (bits) => ['--bits', String(bits), '--allocate', 'lp', '--granularity', 'expert'],
};

function measureFixture(f, work) {
  const stats = path.join(work, `${f.name}-stats`);
  const calib = path.join(f.text, 'calib.txt');
  process.stderr.write(`${f.name}: calibrate ... `);
  moe([
    'calibrate',
    f.model,
    '--data',
    calib,
    '--seq-len',
    SEQ_LEN,
    '--max-tokens',
    CALIB_TOKENS,
    '--hessians',
    '-o',
    stats,
  ]);
  process.stderr.write('done\n');
  const own = ['--data', path.join(f.text, 'eval.txt'), ...(EVAL_TOKENS ? ['--max-tokens', EVAL_TOKENS] : [])];
  const texts = [{ key: 'own', args: own }];
  if (hasWikitext) texts.push({ key: 'wiki', args: ['--data', WIKITEXT, '--max-tokens', WIKITEXT_TOKENS] });
  const evalOf = (dir) => {
    const out = {};
    for (const t of texts) {
      const e = moe(['eval', dir, '--baseline', f.model, ...t.args, '--seq-len', SEQ_LEN]);
      out[t.key] = {
        ppl: e.perplexity,
        increase: e.baseline.ppl_increase_pct,
        kl: e.baseline.kl_mean,
        positions: e.positions,
      };
    }
    return out;
  };
  const rows = [
    {
      fixture: f.name,
      label: 'original (bf16)',
      bits: 16,
      stored: 16,
      bytes: folderBytes(f.model),
      eval: evalOf(f.model),
    },
  ];
  for (const bits of BITS) {
    for (const [label, args] of Object.entries(ALLOCATIONS)) {
      const out = path.join(work, `${f.name}-${bits}-${label.replace(/[^a-z0-9]/gi, '_')}`);
      process.stderr.write(`${f.name}: ${label} ${bits} bits ... `);
      const q = moe(['quantize', f.model, '--stats', stats, '--method', 'gptq', ...args(bits), '-o', out]);
      rows.push({
        fixture: f.name,
        label: `${label}, ${bits} bits`,
        bits: q.average_bits,
        stored: q.stored_bits_per_weight,
        bytes: folderBytes(out),
        granularity: q.allocate === 'lp' ? q.granularity : null,
        predicted: q.predicted_cost,
        eval: evalOf(out),
      });
      process.stderr.write('done\n');
      fs.rmSync(out, { recursive: true, force: true });
    }
  }
  return { rows, positions: Object.fromEntries(texts.map((t) => [t.key, rows[0].eval[t.key].positions])) };
}

const sign = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(2)}%`;

withWorkDir('moe-granularity-', (work) => {
  const measured = FIXTURES.filter((f) => ONLY.includes(f.name)).map((f) => [f, measureFixture(f, work)]);
  for (const [f, m] of measured)
    console.log(
      `${f.name}: calibration ${CALIB_TOKENS} tokens of ${path.relative(ROOT, f.text)}/calib.txt with Hessians; eval ${m.positions.own} positions of eval.txt${hasWikitext ? ` and ${m.positions.wiki} of WikiText-2 test` : ''}, windows of ${SEQ_LEN}; GPTQ, group size 128, bit choices 2,3,4,8`,
    );
  const rows = measured.flatMap(([, m]) => m.rows);
  if (markdown) {
    const wikiHead = hasWikitext ? ' WikiText-2 perplexity | WikiText-2 KL |' : '';
    console.log(
      `| model | allocation | code bits (avg) | weights on disk | perplexity (eval.txt) | Δ | KL (nats/token) |${wikiHead}`,
    );
    console.log(`|---|---|---|---|---|---|---|${hasWikitext ? '---|---|' : ''}`);
    for (const r of rows) {
      const wiki = hasWikitext ? ` ${r.eval.wiki.ppl.toFixed(2)} | ${r.eval.wiki.kl.toFixed(4)} |` : '';
      console.log(
        `| ${r.fixture} | ${r.label} | ${r.bits.toFixed(3)} | ${(r.bytes / 1e6).toFixed(2)} MB | ${r.eval.own.ppl.toFixed(2)} | ${sign(r.eval.own.increase)} | ${r.eval.own.kl.toFixed(4)} |${wiki}`,
      );
    }
  } else {
    for (const r of rows) {
      const wiki = hasWikitext ? `  wiki ppl ${r.eval.wiki.ppl.toFixed(2)} KL ${r.eval.wiki.kl.toFixed(4)}` : '';
      const pred = r.predicted != null ? `  predicted ${r.predicted.toExponential(4)}` : '';
      console.log(
        `${r.fixture.padEnd(10)} ${r.label.padEnd(30)} bits ${r.bits.toFixed(3)} (${r.stored.toFixed(3)} stored)  ${(r.bytes / 1e6).toFixed(2)} MB  ppl ${r.eval.own.ppl.toFixed(2)} ${sign(r.eval.own.increase)} KL ${r.eval.own.kl.toFixed(4)}${wiki}${pred}`,
      );
    }
  }
});
