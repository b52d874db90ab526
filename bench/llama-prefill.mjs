#!/usr/bin/env node
/**
 * Forward speed against llama.cpp (issue 23): the same ~310 M-parameter random Qwen3-MoE (bench/lib.js QWEN3_BENCH:
 * hidden 1024, 6 layers, 32 experts top-4, vocab 32768; bf16 safetensors for moe, the same weights as an F32 GGUF
 * written by `moe quantize --format gguf --type f32` for llama.cpp), the same windows of seeded random token ids,
 * side by side at each thread count:
 *
 *   - llama.cpp prefill: node-llama-cpp 3.22.1's prebuilt CPU build (offline, from .cache/llama), the model loaded
 *     once (not timed), then each window from an empty sequence with `evaluateWithoutGeneratingNewTokens`: llama.cpp
 *     computes the lm_head for the last position only;
 *   - llama.cpp with logits at every position (`controlledEvaluate`, each position asking for the logit of the token
 *     that follows it): the lm_head on every row, as perplexity needs and as `moe eval` computes it;
 *   - `moe eval MODEL --data ids.json --seq-len T --threads N --json`: its forward_tokens_per_second (the perplexity
 *     pass alone: layers, lm_head statistics and the weights read as it goes; start-up, opening the model and
 *     tokenizing excluded), its whole-process wall time and peak RSS;
 *   - `moe calibrate` on the same windows: tokens / Σ per-layer seconds (the pass as it reports it, load excluded;
 *     each layer's time includes its observers: router statistics, REAP, imatrix).
 *
 * node-llama-cpp is a dev-only check, not a dependency; install it once with
 *   mkdir -p .cache/llama && cd .cache/llama && echo '{"private":true}' > package.json && \
 *     npm install --omit=optional node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
 *
 *   npm run build && node bench/llama-prefill.mjs [--windows 4] [--seq-len 256] [--threads 2,1] [--repeat 2]
 *                                                 [--fresh] [--json]
 *
 * The model and the GGUF stay in .cache/prefill-bench (--fresh makes them again). Each figure is the best of --repeat
 * runs (moe: whole processes; llama.cpp: passes over the windows in one process).
 *
 * Acceptance (issue 23): moe eval's forward ≥ 0.8× llama.cpp's prefill at 1 thread and calibrate ≥ 0.7× eval (exit 1
 * when not); ≥ 1.0× llama.cpp's prefill at 2 threads is the goal, reported with its ratio.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import lib from './lib.js';

const { flag, LLAMA, MOE, option: opt, ROOT, QWEN3_BENCH, setArgs, lcg, table } = lib;
const WINDOWS = Number(opt('--windows', '4'));
const T = Number(opt('--seq-len', '256'));
const THREADS = opt('--threads', '2,1').split(',').map(Number);
const REPEAT = Number(opt('--repeat', '2'));
const FRESH = flag('--fresh');
const JSON_OUT = flag('--json');
const SEED = 23;
const DIR = path.join(ROOT, '.cache', 'prefill-bench');
const MODEL = path.join(DIR, 'model');
const GGUF = path.join(DIR, 'model-f32.gguf');

function run(argv, env = {}) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, MOE, ...argv], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
    env: { ...process.env, ...env },
  });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  const rssKb = Number(r.stderr.trim().split('\n').pop());
  return { out: JSON.parse(r.stdout), wall, rssMb: rssKb / 1024 };
}

/** The bench model (bf16 safetensors) with a tokenizer of its vocabulary, and its F32 GGUF. */
function ensureModel() {
  if (FRESH) fs.rmSync(DIR, { recursive: true, force: true });
  fs.mkdirSync(DIR, { recursive: true });
  const config = { ...QWEN3_BENCH, norm_topk_prob: true, max_position_embeddings: Math.max(512, T) };
  if (!fs.existsSync(path.join(MODEL, 'config.json'))) {
    run(['synth', '--arch', 'qwen3_moe', '--dtype', 'bf16', '-o', MODEL, '--set', ...setArgs(config), '--json']);
    // GGUF needs a tokenizer: the fixture's BPE vocabulary, padded with unused tokens to the model's 32768
    const tok = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'tiny-moe', 'tokenizer.json'), 'utf8'));
    const vocab = tok.model.vocab;
    for (let i = Object.keys(vocab).length; i < config.vocab_size; i++) vocab[`<|bench_${i}|>`] = i;
    fs.writeFileSync(path.join(MODEL, 'tokenizer.json'), JSON.stringify(tok));
    fs.copyFileSync(
      path.join(ROOT, 'fixtures', 'tiny-moe', 'tokenizer_config.json'),
      path.join(MODEL, 'tokenizer_config.json'),
    );
    fs.rmSync(GGUF, { force: true });
  }
  if (!fs.existsSync(GGUF)) run(['quantize', MODEL, '--format', 'gguf', '--type', 'f32', '-o', GGUF, '--json']);
  return config;
}

async function llamaRuns(windows, threads) {
  const { getLlama } = await import(LLAMA);
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error', maxThreads: threads });
  const model = await llama.loadModel({ modelPath: GGUF });
  const ctx = await model.createContext({ contextSize: T, batchSize: T, sequences: 1, threads });
  const seq = ctx.getSequence();
  const time = async (evalWindow) => {
    let best = Infinity;
    for (let r = 0; r < REPEAT; r++) {
      let s = 0;
      for (const w of windows) {
        await seq.clearHistory(); // each window from an empty sequence
        const t0 = process.hrtime.bigint();
        await evalWindow(w);
        s += Number(process.hrtime.bigint() - t0) / 1e9;
      }
      best = Math.min(best, s);
    }
    return best;
  };
  const prefill = await time((w) => seq.evaluateWithoutGeneratingNewTokens(w));
  const allLogits = await time((w) =>
    seq.controlledEvaluate(
      w.map((t, i) => [t, { generateNext: { logits: { filter: { tokens: [w[i + 1] ?? w[0]] } } } }]),
    ),
  );
  await ctx.dispose();
  await model.dispose();
  await llama.dispose();
  return { prefill, allLogits };
}

async function main() {
  if (!fs.existsSync(path.join(ROOT, 'dist'))) throw new Error('dist/ is missing: run `npm run build` first');
  if (!fs.existsSync(LLAMA)) throw new Error("node-llama-cpp is not installed in .cache/llama; see this file's header");
  const config = ensureModel();
  const next = lcg(SEED);
  const windows = Array.from({ length: WINDOWS }, () => Array.from({ length: T }, () => next() % config.vocab_size));
  const ids = path.join(DIR, `ids-${WINDOWS}x${T}.json`);
  fs.writeFileSync(ids, JSON.stringify(windows));
  const tokens = WINDOWS * T;
  const rows = [];
  for (const threads of THREADS) {
    const llama = await llamaRuns(windows, threads);
    let moe = { forward: Infinity, wall: Infinity, rss: 0, ppl: 0 };
    let calib = { pass: Infinity, wall: Infinity };
    for (let r = 0; r < REPEAT; r++) {
      const e = run(['eval', MODEL, '--data', ids, '--seq-len', String(T), '--threads', String(threads), '--json']);
      moe = {
        forward: Math.min(moe.forward, e.out.forward_seconds),
        wall: Math.min(moe.wall, e.wall),
        rss: Math.max(moe.rss, e.rssMb),
        ppl: e.out.perplexity,
      };
      const out = path.join(DIR, 'stats');
      const c = run(['calibrate', MODEL, '--data', ids, '--seq-len', String(T), '--threads', String(threads),
        '-o', out, '--force', '--json']); // prettier-ignore
      const pass = c.out.layers.reduce((s, l) => s + l.seconds, 0);
      calib = { pass: Math.min(calib.pass, pass), wall: Math.min(calib.wall, c.wall) };
    }
    rows.push({
      threads,
      llama_prefill_tps: tokens / llama.prefill,
      llama_all_logits_tps: tokens / llama.allLogits,
      moe_forward_tps: tokens / moe.forward,
      moe_wall_s: moe.wall,
      moe_peak_rss_mb: moe.rss,
      moe_perplexity: moe.ppl,
      calibrate_pass_tps: tokens / calib.pass,
      calibrate_wall_s: calib.wall,
    });
  }
  const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
  if (JSON_OUT) {
    console.log(JSON.stringify({ windows: WINDOWS, seq_len: T, tokens, load, rows }, null, 2));
  } else {
    console.log(`${WINDOWS} windows × ${T} tokens, best of ${REPEAT}; load average ${load} at the end\n`);
    const f = (x) => x.toFixed(0);
    table(
      ['threads', 'llama.cpp prefill', 'llama.cpp all logits', 'moe eval forward', 'vs prefill', 'vs all logits',
          'moe eval wall s', 'peak RSS MB', 'calibrate pass', 'calibrate / eval'], // prettier-ignore
      rows.map((r) => [
        r.threads,
        f(r.llama_prefill_tps),
        f(r.llama_all_logits_tps),
        f(r.moe_forward_tps),
        `${(r.moe_forward_tps / r.llama_prefill_tps).toFixed(2)}×`,
        `${(r.moe_forward_tps / r.llama_all_logits_tps).toFixed(2)}×`,
        r.moe_wall_s.toFixed(2),
        f(r.moe_peak_rss_mb),
        f(r.calibrate_pass_tps),
        `${(r.calibrate_pass_tps / r.moe_forward_tps).toFixed(2)}×`,
      ]),
    );
    console.log('(tokens/s; moe eval forward: the perplexity pass alone, lm_head on every position)');
  }
  let failed = false;
  for (const r of rows) {
    const vsLlama = r.moe_forward_tps / r.llama_prefill_tps;
    const calib = r.calibrate_pass_tps / r.moe_forward_tps;
    if (r.threads === 1 && vsLlama < 0.8) {
      console.log(`FAIL: 1 thread, moe eval forward ${vsLlama.toFixed(2)}× llama.cpp's prefill (need ≥ 0.8)`);
      failed = true;
    }
    if (r.threads > 1)
      console.log(
        `goal: ${r.threads} threads, moe eval forward ${vsLlama.toFixed(2)}× llama.cpp's prefill (goal ≥ 1.0)`,
      );
    if (calib < 0.7) {
      console.log(`FAIL: ${r.threads} thread(s), calibrate ${calib.toFixed(2)}× eval (need ≥ 0.7)`);
      failed = true;
    }
  }
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
