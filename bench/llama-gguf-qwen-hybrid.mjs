#!/usr/bin/env node
/**
 * llama.cpp runs moe's GGUF files of the hybrid Qwen architectures (issue 19): a small trained Qwen3-Next and a
 * small trained Qwen3.5-MoE saved nested beside a vision tower (scripts/make_qwen_hybrid_bench.py, bf16) written as
 * GGUF (qwen3next, qwen35moe), loaded by llama.cpp (node-llama-cpp 3.22.1's prebuilt CPU binary; install:
 * bench/llama-gguf.mjs) and evaluated window by window on the held-out text's token ids; its perplexity compared
 * with `moe eval` of the source on the same windows, and with `moe eval FILE.gguf` (moe reading the file back).
 *
 *   npm run build && node bench/llama-gguf-qwen-hybrid.mjs [--windows 8] [--seq-len 256] [--model DIR] [--json]
 *
 * DIR holds qwen3_next/ and qwen3_5_moe/ (default .cache/qwen-hybrid-bench, made once with .venv's python, about
 * 10 min). The windows (256 tokens) are longer than llama.cpp's delta-net chunk (64 tokens), so its chunked Gated
 * DeltaNet runs over several chunks, and each window is evaluated as one batch.
 *
 * Acceptance (issue): llama.cpp's perplexity within 0.5% of moe eval's of the source for every file, and moe eval of
 * the file within 0.5% of llama.cpp's.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import lib from './lib.js';

const { flag, LLAMA, MOE, option: opt, PYTHON, ROOT } = lib;
const WINDOWS = Number(opt('--windows', '8'));
const T = Number(opt('--seq-len', '256'));
const MODEL = path.resolve(opt('--model', path.join(ROOT, '.cache', 'qwen-hybrid-bench')));
const JSON_OUT = flag('--json');
const MODELS = ['qwen3_next', 'qwen3_5_moe'];
const TYPES = ['f32', 'bf16', 'q8_0', 'q4_0'];

function moe(argv) {
  const r = spawnSync(process.execPath, [MOE, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

if (!fs.existsSync(LLAMA)) {
  console.error('node-llama-cpp is not installed in .cache/llama; see the header of bench/llama-gguf.mjs');
  process.exit(2);
}
if (!MODELS.every((m) => fs.existsSync(path.join(MODEL, m, 'model.safetensors')))) {
  console.error(`making the bench models in ${MODEL} (scripts/make_qwen_hybrid_bench.py)`);
  const r = spawnSync(PYTHON, [path.join(ROOT, 'scripts', 'make_qwen_hybrid_bench.py'), MODEL], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
}
const { getLlama } = await import(LLAMA);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-llama-qwen-hybrid-'));
try {
  const { loadTokenizer } = await import(path.join(ROOT, 'dist', 'eval', 'tokenizer.js'));
  const ids = loadTokenizer(path.join(MODEL, MODELS[0])).encode(
    fs.readFileSync(path.join(ROOT, 'fixtures', 'text', 'eval.txt'), 'utf8'),
  );
  const windows = [...Array(WINDOWS).keys()].map((w) => ids.slice(w * T, (w + 1) * T));
  const idsFile = path.join(work, 'ids.json');
  fs.writeFileSync(idsFile, JSON.stringify(windows));
  const evalArgs = ['--data', idsFile, '--seq-len', String(T), '--json'];

  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
  async function llamaEval(file) {
    const model = await llama.loadModel({ modelPath: file });
    const ctx = await model.createContext({ contextSize: T, batchSize: T, sequences: 1 });
    let nll = 0;
    let count = 0;
    const seq = ctx.getSequence();
    for (const w of windows) {
      await seq.clearHistory(); // each window on its own
      const res = await seq.controlledEvaluate(w.map((t) => [t, { generateNext: { logits: true } }]));
      for (let i = 0; i + 1 < w.length; i++) {
        const m = res[i].next.logits;
        let max = -Infinity;
        for (const v of m.values()) if (v > max) max = v;
        let s = 0;
        for (const v of m.values()) s += Math.exp(v - max);
        nll += max + Math.log(s) - m.get(w[i + 1]);
        count++;
      }
    }
    await ctx.dispose();
    await model.dispose();
    return { perplexity: Math.exp(nll / count), positions: count };
  }

  const rows = [];
  for (const name of MODELS) {
    const dir = path.join(MODEL, name);
    const source = moe(['eval', dir, ...evalArgs]).perplexity;
    for (const type of TYPES) {
      const file = path.join(work, `${name}-${type}.gguf`);
      const q = moe(['quantize', dir, '--format', 'gguf', '--type', type, '-o', file, '--json']);
      const e = await llamaEval(file);
      const g = moe(['eval', file, ...evalArgs]);
      rows.push({
        model: name,
        arch: q.arch,
        type: type.toUpperCase(),
        bpw: q.bpw,
        file_bytes: fs.statSync(file).size,
        source_perplexity: source,
        perplexity: e.perplexity,
        vs_moe_pct: 100 * (e.perplexity / source - 1),
        moe_gguf_perplexity: g.perplexity,
        moe_gguf_vs_llama_pct: 100 * (g.perplexity / e.perplexity - 1),
      });
    }
  }
  const result = { windows: WINDOWS, seq_len: T, rows };
  if (JSON_OUT) console.log(JSON.stringify(result));
  else {
    console.log(`scripts/make_qwen_hybrid_bench.py models, ${WINDOWS} windows × ${T} tokens of eval.txt`);
    const pct = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(3)}%`;
    console.log(
      '| model | GGUF | bits/weight | file | moe eval of the source | llama.cpp | vs moe eval | moe eval of the GGUF | vs llama.cpp |',
    );
    console.log('|---|---|---|---|---|---|---|---|---|');
    for (const r of rows)
      console.log(
        `| ${r.model} (${r.arch}) | ${r.type} | ${r.bpw.toFixed(3)} | ${(r.file_bytes / 1e6).toFixed(2)} MB | ${r.source_perplexity.toFixed(3)} | ${r.perplexity.toFixed(3)} | ${pct(r.vs_moe_pct)} | ${r.moe_gguf_perplexity.toFixed(3)} | ${pct(r.moe_gguf_vs_llama_pct)} |`,
      );
  }
  // Q4_0 is reported, not gated: 4-bit rounding moves the perplexity itself (moe eval of the file tracks llama.cpp).
  const gated = rows.filter((r) => r.type !== 'Q4_0');
  const ok =
    gated.every((r) => Math.abs(r.vs_moe_pct) <= 0.5) && rows.every((r) => Math.abs(r.moe_gguf_vs_llama_pct) <= 0.5);
  if (!JSON_OUT) console.log(ok ? 'checks passed' : 'FAILED: a check did not hold');
  if (!ok) process.exitCode = 1;
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
