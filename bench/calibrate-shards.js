#!/usr/bin/env node
/**
 * Data-parallel calibration on one machine: `moe calibrate` once, against the same calibration as N data shards
 * (`--data-shard I/N`) run as N processes at once, then `--combine`: wall times, the speed-up, each shard's peak
 * RSS (GNU time), and a check that the combined stats equal the single run's (routed counts exactly, the REAP
 * saliencies within 1e-12). The model is bench/calibrate.js's generated Qwen3-MoE (~310 M parameters, 32 experts,
 * top-4, hidden 1024, 6 layers, bf16), on seeded random windows.
 *
 *   npm run build && node bench/calibrate-shards.js [--shards 4] [--windows 16] [--seq-len 512] [--hessians]
 *     [--threads-single 2,1] [--threads-shard 1] [--model DIR] [--json]
 *
 * The single run is timed at each --threads-single (default: all cores, then 1); the speed-up is against the first.
 */
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const lib = require('./lib');
const { flag, lcg, MOE, option, QWEN3_BENCH, setArgs, tokenWindows, withWorkDir } = lib;

const SHARDS = Number(option('--shards', '4'));
const WINDOWS = Number(option('--windows', '16'));
const SEQ = Number(option('--seq-len', '512'));
const THREADS_SINGLE = option('--threads-single', `${os.availableParallelism()},1`).split(',');
const THREADS_SHARD = option('--threads-shard', '1');

/** One process under GNU time, asynchronously: wall seconds, peak RSS, its JSON report. */
function timedAsync(argv) {
  const timeFile = path.join(os.tmpdir(), `moe-bench-shard-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn('/usr/bin/time', ['-o', timeFile, '-f', '%M', process.execPath, MOE, ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CI: 'true' },
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => {
      const seconds = lib.secondsSince(t0);
      const rss = Number(fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop()) * 1024;
      fs.rmSync(timeFile, { force: true });
      if (code !== 0) return reject(new Error(`moe ${argv.join(' ')} exited ${code}\n${err.slice(-2000)}`));
      resolve({ seconds, peak_rss_bytes: rss, report: lib.parseJson(out, 'moe') });
    });
  });
}

/** A float64 statistic of a stats folder (read with moe's own reader from dist/). */
function statVector(dir, layer, name) {
  const { CalibrationStats } = require(path.join(lib.DIST, 'calib', 'stats.js'));
  const s = new CalibrationStats(dir);
  try {
    return s.vector(layer, name);
  } finally {
    s.close();
  }
}

async function main() {
  await withWorkDir('moe-bench-shards-', async (work) => {
    let model = option('--model');
    if (!model) {
      model = path.join(work, 'model');
      const set = setArgs({ ...QWEN3_BENCH, max_position_embeddings: Math.max(512, SEQ) });
      lib.moe(['synth', '--arch', 'qwen3_moe', '--dtype', 'bf16', '-o', model, '--set', ...set]);
    }
    const config = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8'));
    const ids = path.join(work, 'ids.json');
    fs.writeFileSync(ids, JSON.stringify(tokenWindows(WINDOWS, SEQ, config.vocab_size, lcg(12345))));
    // one window per batch, so any N up to the window count divides the batches evenly
    const common = ['--data', ids, '--seq-len', String(SEQ), '--batch-tokens', String(SEQ), '--json'];
    if (flag('--hessians')) common.push('--hessians');
    const singles = [];
    for (const threads of THREADS_SINGLE) {
      fs.rmSync(path.join(work, 'single'), { recursive: true, force: true });
      const r = await timedAsync([
        'calibrate',
        model,
        ...common,
        '--threads',
        threads,
        '-o',
        path.join(work, 'single'),
      ]);
      singles.push({ threads: Number(threads), seconds: r.seconds, peak_rss_bytes: r.peak_rss_bytes });
    }
    const single = singles[0];
    const t0 = process.hrtime.bigint();
    const shards = await Promise.all(
      [...Array(SHARDS).keys()].map((i) =>
        timedAsync([
          'calibrate',
          model,
          ...common,
          '--threads',
          THREADS_SHARD,
          '--data-shard',
          `${i}/${SHARDS}`,
          '-o',
          path.join(work, `part-${i}`),
        ]),
      ),
    );
    const parallel = lib.secondsSince(t0);
    const parts = [...Array(SHARDS).keys()].map((i) => path.join(work, `part-${i}`));
    const combine = await timedAsync(['calibrate', '--combine', ...parts, '-o', path.join(work, 'combined'), '--json']);
    // the combined statistics are the single run's
    let countsEqual = true;
    let reapRel = 0;
    for (let l = 0; l < config.num_hidden_layers; l++) {
      const [a, b] = ['single', 'combined'].map((d) => statVector(path.join(work, d), l, 'count'));
      countsEqual &&= a.every((v, e) => v === b[e]);
      const [ra, rb] = ['single', 'combined'].map((d) => statVector(path.join(work, d), l, 'reap'));
      ra.forEach((v, e) => (reapRel = Math.max(reapRel, Math.abs(v - rb[e]) / Math.abs(v || 1))));
    }
    const total = parallel + combine.seconds;
    const result = {
      machine: lib.machineLine(),
      windows: WINDOWS,
      seq_len: SEQ,
      hessians: flag('--hessians'),
      single: singles,
      shards: shards.map((s, i) => ({
        shard: `${i}/${SHARDS}`,
        threads: Number(THREADS_SHARD),
        seconds: s.seconds,
        peak_rss_bytes: s.peak_rss_bytes,
        tokens: s.report.tokens,
      })),
      parallel_seconds: parallel,
      combine_seconds: combine.seconds,
      speedup: single.seconds / total,
      counts_equal: countsEqual,
      reap_max_rel: reapRel,
    };
    const ok = countsEqual && reapRel < 1e-12;
    if (flag('--json')) console.log(JSON.stringify({ ...result, ok }));
    else {
      console.log(result.machine);
      console.log(
        `calibrate ${WINDOWS} windows × ${SEQ} tokens${result.hessians ? ' with Hessians' : ''} of a ~310 M-parameter Qwen3-MoE`,
      );
      console.log('| run | threads | wall s | peak RSS |');
      console.log('|---|---|---|---|');
      for (const r of singles)
        console.log(`| one process | ${r.threads} | ${r.seconds.toFixed(1)} | ${lib.mb(r.peak_rss_bytes)} MB |`);
      for (const s of result.shards)
        console.log(
          `| shard ${s.shard} (${s.tokens} tokens) | ${s.threads} | ${s.seconds.toFixed(1)} | ${lib.mb(s.peak_rss_bytes)} MB |`,
        );
      console.log(
        `| ${SHARDS} shards at once, then --combine (${combine.seconds.toFixed(1)} s) | | ${total.toFixed(1)} | |`,
      );
      console.log(
        `speed-up ${result.speedup.toFixed(2)}× against one process on ${single.threads} threads` +
          (singles[1] ? `, ${(singles[1].seconds / total).toFixed(2)}× against ${singles[1].threads}` : '') +
          `; combined = single run: counts ${countsEqual ? 'equal' : 'DIFFER'}, ` +
          `REAP within ${reapRel.toExponential(1)}`,
      );
    }
    process.exitCode = ok ? 0 : 1;
  });
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
