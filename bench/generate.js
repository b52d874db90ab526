#!/usr/bin/env node
/**
 * Speed of greedy decoding on fixtures/tiny-moe: moe's KV-cache decoder (src/model/forward/decode.ts) against a full
 * recomputation of the prefix at every step (the window forward pass), on the onnx and ref backends, and
 * transformers' generate (float32, torch CPU, its own KV cache) through the dev venv when present.
 *
 *   npm run build && node bench/generate.js [--tokens N] [--threads T] [--python PATH]
 *
 *   --tokens N    new tokens (default 64)
 *   --threads T   compute threads of moe's onnx backend and of torch (default 1)
 *   --python P    Python with torch and transformers (default .venv/bin/python; skipped when absent)
 *
 * Tokens/s = N / the seconds of the generation loop (prompt prefill included, model loading and one warm-up run
 * excluded). Both moe paths must give the same tokens.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const PROMPT = 'Pass round the decanters; glad to see ye; fill up,';
const dist = (m) => require(path.join(ROOT, 'dist', m));

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

function argmax(v) {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

async function moe(backend, tokens, threads) {
  const { createBackend } = dist('backend/index');
  const { openCheckpoint, TensorReader } = dist('io/checkpoint');
  const { Decoder } = dist('model/forward/decode');
  const { ForwardPass, fullLogits } = dist('model/forward/model');
  const { loadArchitecture } = dist('model/registry');
  const { generate, promptIds } = dist('eval/generate');
  const { loadTokenizer } = dist('eval/tokenizer');
  const ckpt = openCheckpoint(MODEL);
  const reader = new TensorReader(ckpt);
  const arch = loadArchitecture(ckpt);
  const tok = loadTokenizer(MODEL);
  const be = await createBackend(backend, { threads });
  const prompt = promptIds(tok, PROMPT);
  const dec = new Decoder(reader, arch, be);
  await generate(dec, tok, prompt, { maxNewTokens: 4, eos: [] });
  let t0 = performance.now();
  const g = await generate(dec, tok, prompt, { maxNewTokens: tokens, eos: [] });
  const cached = tokens / ((performance.now() - t0) / 1000);
  // full recomputation: the whole prefix through the window forward pass at every step
  const fp = new ForwardPass(reader, arch, be);
  const ids = [...prompt];
  t0 = performance.now();
  for (let i = 0; i < tokens; i++) {
    const T = ids.length;
    const { sink, logits } = fullLogits(T, arch.vocab);
    await fp.run(Int32Array.from(ids), 1, T, sink);
    ids.push(argmax(logits.subarray((T - 1) * arch.vocab)));
  }
  const full = tokens / ((performance.now() - t0) / 1000);
  const same = JSON.stringify(ids.slice(prompt.length)) === JSON.stringify(g.ids);
  reader.close();
  await be.dispose();
  return { backend, kv_cache_tokens_per_second: cached, recompute_tokens_per_second: full, same_tokens: same };
}

function transformers(python, tokens, threads) {
  if (!fs.existsSync(python)) return undefined;
  const r = spawnSync(
    python,
    [path.join(ROOT, 'scripts', 'check_generate.py'), '--bench', 'tiny-moe', PROMPT, tokens],
    {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, OMP_NUM_THREADS: String(threads) },
    },
  );
  if (r.status !== 0) throw new Error(`transformers bench failed: ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

async function main() {
  const tokens = Number(arg('--tokens', '64'));
  const threads = Number(arg('--threads', '1'));
  const rows = [await moe('onnx', tokens, threads), await moe('ref', tokens, threads)];
  const hf = transformers(arg('--python', path.join(ROOT, '.venv', 'bin', 'python')), tokens, threads);
  for (const r of rows)
    console.log(
      `moe ${r.backend.padEnd(4)}  KV cache ${r.kv_cache_tokens_per_second.toFixed(1)} tokens/s, ` +
        `full recomputation ${r.recompute_tokens_per_second.toFixed(1)} tokens/s ` +
        `(${(r.kv_cache_tokens_per_second / r.recompute_tokens_per_second).toFixed(1)}×), same tokens: ${r.same_tokens}`,
    );
  if (hf) console.log(`transformers generate  ${hf.tokens_per_second.toFixed(1)} tokens/s (float32, torch CPU)`);
  console.log(JSON.stringify({ tokens, threads, moe: rows, transformers: hf ?? null }));
  if (rows.some((r) => !r.same_tokens)) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
