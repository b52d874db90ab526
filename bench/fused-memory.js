#!/usr/bin/env node
/**
 * Fused expert tensors are read one expert at a time: peak RSS of `moe calibrate` and `moe prune` on a synthetic
 * gpt-oss (64 experts stored fused: gate_up_proj [64, H, 2I] and down_proj [64, I, H] per layer) against the same
 * shapes stored one tensor per expert (qwen3_moe), both bf16, same hidden/width/layers/experts, same tokens.
 *
 *   npm run build && node bench/fused-memory.js [--hidden 1024] [--width 1024] [--layers 4] [--tokens 4096] [--json]
 *
 * Acceptance (issue 18): the fused model's peak RSS stays as bounded as the per-expert one's (within 10% + 50 MB),
 * and below the size of one layer's fused tensors plus 300 MB, so no fused tensor is ever read whole.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ansiLcg, flag, mb, moe, option, setArgs, tokenWindows, withWorkDir } = require('./lib');

const HIDDEN = Number(option('--hidden', 1024));
const WIDTH = Number(option('--width', 1024));
const LAYERS = Number(option('--layers', 4));
const TOKENS = Number(option('--tokens', 4096));
const SEQ = 256;
const VOCAB = 4096;
const EXPERTS = 64;

const common = {
  hidden_size: HIDDEN,
  num_hidden_layers: LAYERS,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  head_dim: 64,
  vocab_size: VOCAB,
  num_experts_per_tok: 4,
};
const shapes = {
  gpt_oss: { ...common, num_local_experts: EXPERTS, intermediate_size: WIDTH },
  qwen3_moe: { ...common, num_experts: EXPERTS, moe_intermediate_size: WIDTH },
};

const rows = [];
withWorkDir('moe-bench-fused-', (work) => {
  const data = path.join(work, 'ids.json');
  fs.writeFileSync(data, JSON.stringify(tokenWindows(Math.ceil(TOKENS / SEQ), SEQ, VOCAB, ansiLcg(7))));
  for (const [arch, config] of Object.entries(shapes)) {
    const model = path.join(work, arch);
    moe(['synth', '--arch', arch, '--dtype', 'bf16', '-o', model, '--set', ...setArgs(config)]);
    const stats = path.join(work, `${arch}-stats`);
    const cal = moe(['calibrate', model, '--data', data, '--seq-len', String(SEQ), '-o', stats]);
    const pr = moe(['prune', model, '--stats', stats, '--method', 'reap', '--ratio', '0.5', '-o', `${model}-pruned`]);
    rows.push({ arch, calibrate_rss: cal.peak_rss_bytes, prune_rss: pr.peak_rss_bytes, cal_s: cal.wall_seconds });
    fs.rmSync(`${model}-pruned`, { recursive: true, force: true });
  }
});
const [fused, plain] = rows;
const layerFused = EXPERTS * 3 * HIDDEN * WIDTH * 2;
const ok = (f, p) => f <= p * 1.1 + 50e6 && f < layerFused + 300e6;
const result = {
  hidden: HIDDEN,
  width: WIDTH,
  layers: LAYERS,
  experts: EXPERTS,
  tokens: TOKENS,
  layer_fused_bytes: layerFused,
  rows,
  calibrate_ok: ok(fused.calibrate_rss, plain.calibrate_rss),
  prune_ok: ok(fused.prune_rss, plain.prune_rss),
};
if (flag('--json')) console.log(JSON.stringify(result, null, 2));
else {
  console.log(
    `${EXPERTS} experts, hidden ${HIDDEN}, width ${WIDTH}, ${LAYERS} layers; one layer's fused tensors ${mb(layerFused)} MB`,
  );
  for (const r of rows)
    console.log(
      `  ${r.arch.padEnd(10)} calibrate peak RSS ${mb(r.calibrate_rss)} MB (${r.cal_s.toFixed(1)} s), prune (reap 50%) ${mb(r.prune_rss)} MB`,
    );
  console.log(`calibrate: ${result.calibrate_ok ? 'ok' : 'OVER'}; prune: ${result.prune_ok ? 'ok' : 'OVER'}`);
}
