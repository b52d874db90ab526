#!/usr/bin/env node
/**
 * llama.cpp runs moe's GGUF files: the trained fixture written as GGUF (Q8_0 by default, or the types given),
 * loaded by llama.cpp through node-llama-cpp's prebuilt CPU binary (offline), evaluated window by window on the
 * held-out text's token ids; next-token argmax and perplexity compared with `moe eval` of the original model on
 * the same windows (its --dump-logits). Also compares the LP-chosen types at a bits-per-weight budget with uniform
 * Q4_K, both measured by llama.cpp.
 *
 * node-llama-cpp is a dev-only check, not a dependency (its install pulls GPU builds); install it once with
 *   mkdir -p .cache/llama && cd .cache/llama && echo '{"private":true}' > package.json && \
 *     npm install --omit=optional node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
 *
 *   npm run build && node bench/llama-gguf.mjs [--windows 8] [--seq-len 128] [--types q8_0,q4_k] [--bpw 4.5] [--json]
 *
 * Each GGUF file is also evaluated by `moe eval FILE.gguf` (moe reading the GGUF back) on the same windows.
 *
 * Acceptance (issue): on the Q8_0 file, argmax agreement ≥ 99% and perplexity within 1% of moe eval's; at the
 * --bpw budget the LP file has a lower llama.cpp perplexity than uniform Q4_K at the same or a smaller size;
 * for every file, `moe eval FILE.gguf` within 0.5% of llama.cpp's perplexity of it.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import lib from './lib.js';

const { FIXTURE: MODEL, flag, LLAMA, MOE, option: opt, ROOT } = lib;
const WINDOWS = Number(opt('--windows', '8'));
const T = Number(opt('--seq-len', '128'));
const TYPES = opt('--types', 'q8_0,q4_k').split(',');
const BPW = Number(opt('--bpw', '4.5'));
const JSON_OUT = flag('--json');

function moe(argv) {
  const r = spawnSync(process.execPath, [MOE, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

if (!fs.existsSync(LLAMA)) {
  console.error(
    `node-llama-cpp is not installed in .cache/llama; see the header of ${path.relative(process.cwd(), fileURLToPath(import.meta.url))}`,
  );
  process.exit(2);
}
const { getLlama } = await import(LLAMA);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-llama-'));
try {
  // The windows: the first WINDOWS × T token ids of the held-out text, as moe tokenizes it.
  const { loadTokenizer } = await import(path.join(ROOT, 'dist', 'eval', 'tokenizer.js'));
  const ids = loadTokenizer(MODEL).encode(fs.readFileSync(path.join(ROOT, 'fixtures', 'text', 'eval.txt'), 'utf8'));
  const windows = [...Array(WINDOWS).keys()].map((w) => ids.slice(w * T, (w + 1) * T));
  const idsFile = path.join(work, 'ids.json');
  fs.writeFileSync(idsFile, JSON.stringify(windows));
  // moe eval of the original, with every position's logits.
  const dump = path.join(work, 'logits.safetensors');
  const mine = JSON.parse(
    moe(['eval', MODEL, '--data', idsFile, '--seq-len', String(T), '--dump-logits', dump, '--json']),
  );
  const header = fs.readFileSync(dump);
  const n = Number(header.readBigUInt64LE(0));
  const meta = JSON.parse(header.subarray(8, 8 + n).toString('utf8'));
  const entry = Object.entries(meta).find(([k]) => k !== '__metadata__')[1];
  const vocab = entry.shape[entry.shape.length - 1];
  const logits = new Float32Array(
    header.buffer.slice(
      header.byteOffset + 8 + n + entry.data_offsets[0],
      header.byteOffset + 8 + n + entry.data_offsets[1],
    ),
  );
  const moeArgmax = [];
  for (let r = 0; r < logits.length / vocab; r++) {
    let best = 0;
    for (let v = 1; v < vocab; v++) if (logits[r * vocab + v] > logits[r * vocab + best]) best = v;
    moeArgmax.push(best);
  }

  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
  async function llamaEval(file) {
    const model = await llama.loadModel({ modelPath: file });
    const ctx = await model.createContext({ contextSize: T, batchSize: T, sequences: 1 });
    let nll = 0;
    let count = 0;
    const argmax = [];
    const t0 = Date.now();
    const seq = ctx.getSequence();
    for (const w of windows) {
      await seq.clearHistory(); // each window on its own
      const res = await seq.controlledEvaluate(w.map((t) => [t, { generateNext: { logits: true } }]));
      for (let i = 0; i < w.length; i++) {
        const m = res[i].next.logits;
        let max = -Infinity;
        let arg = -1;
        for (const [tok, v] of m) if (v > max) [max, arg] = [v, tok];
        argmax.push(arg);
        if (i === w.length - 1) continue;
        let s = 0;
        for (const v of m.values()) s += Math.exp(v - max);
        nll += max + Math.log(s) - m.get(w[i + 1]);
        count++;
      }
    }
    await ctx.dispose();
    await model.dispose();
    return { perplexity: Math.exp(nll / count), positions: count, argmax, seconds: (Date.now() - t0) / 1000 };
  }

  const rows = [];
  const make = (label, argv) => {
    const out = path.join(work, label);
    const report = JSON.parse(moe(['quantize', MODEL, '--format', 'gguf', ...argv, '-o', out, '--json']));
    return { file: report.output, report };
  };
  const stats = path.join(work, 'stats');
  moe([
    'calibrate',
    MODEL,
    '--data',
    path.join(ROOT, 'fixtures', 'text', 'calib.txt'),
    '--seq-len',
    '256',
    '--max-tokens',
    '32768',
    '-o',
    stats,
  ]);
  const cases = [
    ...TYPES.map((t) => [t.toUpperCase(), ['--type', t]]),
    ...TYPES.map((t) => [`${t.toUpperCase()} (imatrix)`, ['--type', t, '--stats', stats]]),
    [`LP ${BPW} bpw`, ['--allocate', 'lp', '--bpw', String(BPW), '--stats', stats]],
  ];
  for (const [label, argv] of cases) {
    const { file, report } = make(label.replace(/[^a-z0-9.]/gi, '_'), argv);
    const e = await llamaEval(file);
    const agree = e.argmax.filter((a, i) => a === moeArgmax[i]).length / e.argmax.length;
    const g = JSON.parse(moe(['eval', file, '--data', idsFile, '--seq-len', String(T), '--json']));
    rows.push({
      label,
      bpw: report.bpw,
      file_bytes: fs.statSync(file).size,
      perplexity: e.perplexity,
      vs_moe_pct: 100 * (e.perplexity / mine.perplexity - 1),
      argmax_agreement: agree,
      seconds: e.seconds,
      moe_gguf_perplexity: g.perplexity,
      moe_gguf_vs_llama_pct: 100 * (g.perplexity / e.perplexity - 1),
    });
  }
  const result = { windows: WINDOWS, seq_len: T, moe_perplexity: mine.perplexity, rows };
  if (JSON_OUT) console.log(JSON.stringify(result));
  else {
    console.log(
      `fixtures/tiny-moe, ${WINDOWS} windows × ${T} tokens of eval.txt; moe eval of the original (bf16): perplexity ${mine.perplexity.toFixed(3)}`,
    );
    const pct = (x, d = 2) => `${x >= 0 ? '+' : ''}${x.toFixed(d)}%`;
    console.log(
      '| GGUF (llama.cpp) | bits/weight | file | perplexity | vs moe eval | argmax = moe eval | moe eval of the GGUF | vs llama.cpp |',
    );
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of rows)
      console.log(
        `| ${r.label} | ${r.bpw.toFixed(3)} | ${(r.file_bytes / 1e6).toFixed(2)} MB | ${r.perplexity.toFixed(3)} | ${pct(r.vs_moe_pct)} | ${(100 * r.argmax_agreement).toFixed(1)}% | ${r.moe_gguf_perplexity.toFixed(3)} | ${pct(r.moe_gguf_vs_llama_pct, 3)} |`,
      );
  }
  const q8 = rows.find((r) => r.label === 'Q8_0');
  const q4 = rows.find((r) => r.label === 'Q4_K (imatrix)') ?? rows.find((r) => r.label === 'Q4_K');
  const lp = rows.find((r) => r.label.startsWith('LP'));
  let ok = true;
  if (q8 && (q8.argmax_agreement < 0.99 || Math.abs(q8.vs_moe_pct) > 1)) ok = false;
  if (q4 && lp && !(lp.perplexity < q4.perplexity && lp.file_bytes <= q4.file_bytes)) ok = false;
  if (rows.some((r) => Math.abs(r.moe_gguf_vs_llama_pct) > 0.5)) ok = false;
  if (!JSON_OUT) console.log(ok ? 'checks passed' : 'FAILED: a check did not hold');
  if (!ok) process.exitCode = 1;
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
