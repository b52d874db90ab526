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
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');
const { flag, lcg, MOE, option, QWEN3_BENCH, ROOT, setArgs, tokenWindows, withWorkDir } = lib;

const WINDOWS = Number(option('--windows', '8'));
const SEQ = Number(option('--seq-len', '512'));
const THREADS = option('--threads', '2,1').split(',').map(Number);
const PYTHON = option('--python', lib.PYTHON);
const SET = { ...QWEN3_BENCH, max_position_embeddings: Math.max(512, SEQ) };

/** Wall seconds and peak RSS (GNU time) of a whole process whose stdout is one JSON object. */
function timed(cmd, argv) {
  const r = lib.timed(cmd, argv, { env: { CI: 'true' } });
  return { seconds: r.seconds, peak_rss_bytes: r.peak_rss_bytes, out: lib.parseJson(r.stdout, cmd) };
}

function main() {
  withWorkDir('moe-bench-cal-', (work) => {
    let model = option('--model');
    if (!model) {
      model = path.join(work, 'model');
      timed(process.execPath, [
        MOE,
        'synth',
        '--arch',
        'qwen3_moe',
        '--dtype',
        'bf16',
        '--max-shard-size',
        '200MB',
        '-o',
        model,
        '--json',
        '--set',
        ...setArgs(SET),
      ]);
    }
    const vocab = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')).vocab_size;
    const ids = path.join(work, 'ids.json');
    fs.writeFileSync(ids, JSON.stringify(tokenWindows(WINDOWS, SEQ, vocab, lcg(12345))));
    const rows = [];
    for (const threads of THREADS) {
      fs.rmSync(path.join(work, 'stats'), { recursive: true, force: true });
      const m = timed(process.execPath, [
        MOE,
        'calibrate',
        model,
        '--data',
        ids,
        '--seq-len',
        String(SEQ),
        '--threads',
        String(threads),
        '-o',
        path.join(work, 'stats'),
        '--json',
      ]);
      const h = timed(PYTHON, [
        path.join(ROOT, 'scripts', 'bench_calibrate_hf.py'),
        model,
        ids,
        '--threads',
        String(threads),
      ]);
      rows.push({
        threads,
        tokens: WINDOWS * SEQ,
        moe_seconds: m.seconds,
        moe_peak_rss_bytes: m.peak_rss_bytes,
        hf_seconds: h.seconds,
        hf_compute_seconds: h.out.seconds_compute,
        hf_peak_rss_bytes: h.peak_rss_bytes,
        ratio: h.seconds / m.seconds,
      });
    }
    const ok = rows.every((r) => r.ratio >= 1.5);
    if (flag('--json')) console.log(JSON.stringify({ rows, ok }));
    else {
      console.log(`calibration, ${WINDOWS} windows × ${SEQ} tokens, whole processes (transformers float32):`);
      for (const r of rows) {
        console.log(
          `  ${r.threads} thread(s): moe ${r.moe_seconds.toFixed(1)} s (${(r.tokens / r.moe_seconds).toFixed(0)} tokens/s, peak RSS ${(r.moe_peak_rss_bytes / 1e6).toFixed(0)} MB), transformers ${r.hf_seconds.toFixed(1)} s (${(r.tokens / r.hf_seconds).toFixed(0)} tokens/s; compute alone ${r.hf_compute_seconds.toFixed(1)} s) → ${r.ratio.toFixed(2)}× (need ≥ 1.5: ${r.ratio >= 1.5 ? 'ok' : 'FAILED'})`,
        );
      }
    }
    if (!ok) process.exitCode = 1;
  });
}

main();
