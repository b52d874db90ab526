#!/usr/bin/env node
/**
 * llama.cpp runs moe's DeepSeek-V3.2 GGUF files (issue 20): a small trained deepseek_v32 (scripts/make_dsv32_bench.py:
 * bf16, and the same model stored as FP8 as deepseek-ai/DeepSeek-V3.2 is) written as GGUF, loaded by llama.cpp
 * ("deepseek32": MLA plus the DSA lightning indexer, through node-llama-cpp 3.22.1's prebuilt CPU binary; install:
 * bench/llama-gguf.mjs) and evaluated window by window on the held-out text's token ids; its perplexity compared with
 * `moe eval` of the source on the same windows, and with `moe eval FILE.gguf` (moe reading the file back).
 *
 *   npm run build && node bench/llama-gguf-deepseek_v32.mjs [--windows 8] [--seq-len 128] [--model DIR] [--json]
 *
 * DIR holds bf16/ and fp8/ (default .cache/dsv32-bench, made once with .venv's python, a few minutes).
 * The windows (128 tokens) equal the model's index_topk: every earlier token is selected, so llama.cpp's sparse
 * attention is dense there, as moe's (which refuses longer windows). The FP8 source is decoded and written with
 * --type like the bf16 one.
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
const T = Number(opt('--seq-len', '128'));
const MODEL = path.resolve(opt('--model', path.join(ROOT, '.cache', 'dsv32-bench')));
const JSON_OUT = flag('--json');

function moe(argv) {
  const r = spawnSync(process.execPath, [MOE, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

if (!fs.existsSync(LLAMA)) {
  console.error('node-llama-cpp is not installed in .cache/llama; see the header of bench/llama-gguf.mjs');
  process.exit(2);
}
if (!fs.existsSync(path.join(MODEL, 'fp8', 'model.safetensors'))) {
  console.error(`making the bench model in ${MODEL} (scripts/make_dsv32_bench.py)`);
  const r = spawnSync(PYTHON, [path.join(ROOT, 'scripts', 'make_dsv32_bench.py'), MODEL], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
}
const { getLlama } = await import(LLAMA);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-llama-dsv32-'));
try {
  const { loadTokenizer } = await import(path.join(ROOT, 'dist', 'eval', 'tokenizer.js'));
  const { readGguf } = await import(path.join(ROOT, 'dist', 'io', 'gguf-reader.js'));
  const { GGML_TYPE_ID } = await import(path.join(ROOT, 'dist', 'gguf', 'quants.js'));
  const bf16 = path.join(MODEL, 'bf16');
  const ids = loadTokenizer(bf16).encode(fs.readFileSync(path.join(ROOT, 'fixtures', 'text', 'eval.txt'), 'utf8'));
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

  const sources = { bf16: { dir: bf16 }, fp8: { dir: path.join(MODEL, 'fp8') } };
  for (const s of Object.values(sources)) s.moe = moe(['eval', s.dir, ...evalArgs]).perplexity;
  const cases = [
    ['bf16', 'bf16 → Q8_0', 'q8_0'],
    ['bf16', 'bf16 → F32', 'f32'],
    ['fp8', 'FP8 → Q8_0', 'q8_0'],
    ['fp8', 'FP8 → F32', 'f32'],
  ];
  const rows = [];
  for (const [src, label, type] of cases) {
    const file = path.join(work, `${src}-${type}.gguf`);
    moe(['quantize', sources[src].dir, '--format', 'gguf', '--type', type, '-o', file, '--json']);
    const byId = new Map(Object.entries(GGML_TYPE_ID).map(([t, id]) => [id, t]));
    const tensors = readGguf(file).tensors;
    const exps = tensors.filter((t) => /_exps\.weight$/.test(t.name));
    const experts = [...new Set(exps.map((t) => byId.get(t.type)))];
    const indexer = tensors.filter((t) => t.name.includes('.indexer.')).length;
    const e = await llamaEval(file);
    const g = moe(['eval', file, ...evalArgs]);
    rows.push({
      label,
      experts: experts.join(','),
      indexer_tensors: indexer,
      file_bytes: fs.statSync(file).size,
      source_perplexity: sources[src].moe,
      perplexity: e.perplexity,
      vs_moe_pct: 100 * (e.perplexity / sources[src].moe - 1),
      moe_gguf_perplexity: g.perplexity,
      moe_gguf_vs_llama_pct: 100 * (g.perplexity / e.perplexity - 1),
    });
  }
  const result = { windows: WINDOWS, seq_len: T, rows };
  if (JSON_OUT) console.log(JSON.stringify(result));
  else {
    console.log(`deepseek_v32 (scripts/make_dsv32_bench.py), ${WINDOWS} windows × ${T} tokens of eval.txt`);
    const pct = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(3)}%`;
    console.log(
      '| GGUF | experts | file | moe eval of the source | llama.cpp | vs moe eval | moe eval of the GGUF | vs llama.cpp |',
    );
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of rows)
      console.log(
        `| ${r.label} | ${r.experts} | ${(r.file_bytes / 1e6).toFixed(2)} MB | ${r.source_perplexity.toFixed(3)} | ${r.perplexity.toFixed(3)} | ${pct(r.vs_moe_pct)} | ${r.moe_gguf_perplexity.toFixed(3)} | ${pct(r.moe_gguf_vs_llama_pct)} |`,
      );
  }
  // every layer's five indexer tensors are in the file (llama.cpp's deepseek32 loader requires them)
  const layers = JSON.parse(fs.readFileSync(path.join(bf16, 'config.json'), 'utf8')).num_hidden_layers;
  const ok = rows.every(
    (r) =>
      Math.abs(r.vs_moe_pct) <= 0.5 && Math.abs(r.moe_gguf_vs_llama_pct) <= 0.5 && r.indexer_tensors === 5 * layers,
  );
  if (!JSON_OUT) console.log(ok ? 'checks passed' : 'FAILED: a check did not hold');
  if (!ok) process.exitCode = 1;
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
