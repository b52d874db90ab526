#!/usr/bin/env node
/**
 * Speed of `moe calibrate` against a calibration pass in transformers (scripts/bench_calibrate_hf.py: forward
 * hooks and an instrumented expert loop collecting the imatrix of every linear, expert counts, soft frequency,
 * routing weight and REAP saliency: a subset of what moe records) on the model bench/eval.js uses: a generated
 * Qwen3-MoE of ~310 M parameters (32 experts, top-4, hidden 1024, 6 layers, bf16). Both run as whole processes on
 * the same pre-tokenized windows, transformers in float32 (on CPUs without bf16 instructions its bf16 is slower:
 * bench/eval.js) with the same number of threads.
 *
 *   npm run build && node bench/calibrate.js [--windows 8] [--seq-len 512] [--threads 2,1] [--model DIR] [--json]
 *
 * Acceptance (issue 10): transformers wall time / moe wall time ≥ 1.5. Exit code 1 when it is not.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const MOE = path.join(ROOT, 'bin', 'moe.js');
const args = process.argv.slice(2);
const opt = (name, def) => (args.includes(name) ? args[args.indexOf(name) + 1] : def);
const WINDOWS = Number(opt('--windows', '8'));
const SEQ = Number(opt('--seq-len', '512'));
const THREADS = opt('--threads', '2,1').split(',').map(Number);
const PYTHON = opt('--python', path.join(ROOT, '.venv', 'bin', 'python'));
const SET = { hidden_size: 1024, num_hidden_layers: 6, num_experts: 32, num_experts_per_tok: 4, moe_intermediate_size: 384, num_attention_heads: 16, num_key_value_heads: 4, head_dim: 64, vocab_size: 32768, max_position_embeddings: Math.max(512, SEQ) };

/** Wall seconds and peak RSS (GNU time) of a whole process whose stdout is one JSON object. */
function timed(cmd, argv) {
  const timeFile = path.join(os.tmpdir(), `moe-bench-cal-${process.pid}`);
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-o', timeFile, '-f', '%M', cmd, ...argv], { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, CI: 'true' } });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const rss = Number(fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop()) * 1024;
  fs.rmSync(timeFile, { force: true });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} exited ${r.status}: ${r.stderr.slice(-2000)}`);
  return { seconds, peak_rss_bytes: rss, out: JSON.parse(r.stdout) };
}

function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-cal-'));
  try {
    let model = opt('--model');
    if (!model) {
      model = path.join(work, 'model');
      const set = Object.entries(SET).map(([k, v]) => `${k}=${v}`);
      timed(process.execPath, [MOE, 'synth', '--arch', 'qwen3_moe', '--dtype', 'bf16', '--max-shard-size', '200MB', '-o', model, '--json', '--set', ...set]);
    }
    const vocab = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')).vocab_size;
    let s = 12345;
    const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s);
    const ids = path.join(work, 'ids.json');
    fs.writeFileSync(ids, JSON.stringify(Array.from({ length: WINDOWS }, () => Array.from({ length: SEQ }, () => next() % vocab))));
    const rows = [];
    for (const threads of THREADS) {
      fs.rmSync(path.join(work, 'stats'), { recursive: true, force: true });
      const m = timed(process.execPath, [MOE, 'calibrate', model, '--data', ids, '--seq-len', String(SEQ), '--threads', String(threads), '-o', path.join(work, 'stats'), '--json']);
      const h = timed(PYTHON, [path.join(ROOT, 'scripts', 'bench_calibrate_hf.py'), model, ids, '--threads', String(threads)]);
      rows.push({ threads, tokens: WINDOWS * SEQ, moe_seconds: m.seconds, moe_peak_rss_bytes: m.peak_rss_bytes, hf_seconds: h.seconds, hf_compute_seconds: h.out.seconds_compute, hf_peak_rss_bytes: h.peak_rss_bytes, ratio: h.seconds / m.seconds });
    }
    const ok = rows.every((r) => r.ratio >= 1.5);
    if (args.includes('--json')) console.log(JSON.stringify({ rows, ok }));
    else {
      console.log(`calibration, ${WINDOWS} windows × ${SEQ} tokens, whole processes (transformers float32):`);
      for (const r of rows) {
        console.log(`  ${r.threads} thread(s): moe ${r.moe_seconds.toFixed(1)} s (${(r.tokens / r.moe_seconds).toFixed(0)} tokens/s, peak RSS ${(r.moe_peak_rss_bytes / 1e6).toFixed(0)} MB), transformers ${r.hf_seconds.toFixed(1)} s (${(r.tokens / r.hf_seconds).toFixed(0)} tokens/s; compute alone ${r.hf_compute_seconds.toFixed(1)} s) → ${r.ratio.toFixed(2)}× (need ≥ 1.5: ${r.ratio >= 1.5 ? 'ok' : 'FAILED'})`);
      }
    }
    if (!ok) process.exitCode = 1;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main();
