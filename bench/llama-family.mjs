/**
 * What the per-family llama.cpp benches share (bench/llama-gguf-{oss,glm,minimax,deepseek_v32,qwen-hybrid}.mjs):
 * small trained models made once by a scripts/ dev script into .cache/, written as GGUF by `moe quantize --format
 * gguf`, loaded by llama.cpp (node-llama-cpp 3.22.1's prebuilt CPU binary; install: bench/llama-gguf.mjs) and
 * evaluated window by window on the held-out text's token ids. Each row compares llama.cpp's perplexity with `moe
 * eval` of the source on the same windows, and `moe eval FILE.gguf` (moe reading the file back) with llama.cpp's.
 *
 * Options of every such bench: [--windows 8] [--seq-len T] [--model DIR] [--json]. Exit 1 when a check fails:
 * llama.cpp within 0.5% of moe eval of the source (rows marked `lossy` skip this one: a 4-bit file moves the
 * perplexity itself) and moe eval of the file within 0.5% of llama.cpp, plus the family's own check.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import lib from './lib.js';

const { flag, LLAMA, MOE, option: opt, PYTHON, ROOT } = lib;

function moe(argv) {
  const r = spawnSync(process.execPath, [MOE, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Perplexity of llama.cpp on `windows` (each evaluated on its own, from an empty context). */
export async function llamaPerplexity(llama, file, windows, T) {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: T, batchSize: T, sequences: 1 });
  let nll = 0;
  let count = 0;
  const seq = ctx.getSequence();
  for (const w of windows) {
    await seq.clearHistory();
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
  return Math.exp(nll / count);
}

const pct = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(3)}%`;

/**
 * Runs one family's bench. `spec`: title; cache (folder name under .cache/); script (scripts/ file making the
 * models); sources (name → sub-folder of the cache folder; the first one's tokenizer makes the ids); cases
 * ({ source, label, type, lossy? }); seqLen (default window); check(rows, dir) → extra condition (optional).
 */
export async function runGgufBench(spec) {
  const WINDOWS = Number(opt('--windows', '8'));
  const T = Number(opt('--seq-len', String(spec.seqLen ?? 128)));
  const MODEL = path.resolve(opt('--model', path.join(ROOT, '.cache', spec.cache)));
  const JSON_OUT = flag('--json');
  const dirs = Object.fromEntries(Object.entries(spec.sources).map(([k, v]) => [k, path.join(MODEL, v)]));

  if (!fs.existsSync(LLAMA)) {
    console.error('node-llama-cpp is not installed in .cache/llama; see the header of bench/llama-gguf.mjs');
    process.exit(2);
  }
  if (!Object.values(dirs).every((d) => fs.existsSync(path.join(d, 'config.json')))) {
    console.error(`making the bench models in ${MODEL} (scripts/${spec.script})`);
    const r = spawnSync(PYTHON, [path.join(ROOT, 'scripts', spec.script), MODEL], { stdio: 'inherit' });
    if (r.status !== 0) process.exit(1);
  }
  const { getLlama } = await import(LLAMA);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `moe-llama-${spec.cache}-`));
  try {
    const { loadTokenizer } = await import(path.join(ROOT, 'dist', 'eval', 'tokenizer.js'));
    const { readGguf } = await import(path.join(ROOT, 'dist', 'io', 'gguf-reader.js'));
    const { GGML_TYPE_ID } = await import(path.join(ROOT, 'dist', 'gguf', 'quants.js'));
    const typeName = new Map(Object.entries(GGML_TYPE_ID).map(([t, id]) => [id, t]));
    const text = fs.readFileSync(path.join(ROOT, 'fixtures', 'text', 'eval.txt'), 'utf8');
    const ids = loadTokenizer(Object.values(dirs)[0]).encode(text);
    const windows = [...Array(WINDOWS).keys()].map((w) => ids.slice(w * T, (w + 1) * T));
    const idsFile = path.join(work, 'ids.json');
    fs.writeFileSync(idsFile, JSON.stringify(windows));
    const evalArgs = ['--data', idsFile, '--seq-len', String(T), '--json'];
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });

    const sourcePpl = {};
    const rows = [];
    for (const c of spec.cases) {
      sourcePpl[c.source] ??= moe(['eval', dirs[c.source], ...evalArgs]).perplexity;
      const file = path.join(work, `${c.source}-${c.type}.gguf`);
      const q = moe(['quantize', dirs[c.source], '--format', 'gguf', '--type', c.type, '-o', file, '--json']);
      const tensors = readGguf(file).tensors;
      const experts = [
        ...new Set(tensors.filter((t) => /_exps\.weight$/.test(t.name)).map((t) => typeName.get(t.type))),
      ];
      const perplexity = await llamaPerplexity(llama, file, windows, T);
      const g = moe(['eval', file, ...evalArgs]).perplexity;
      const source = sourcePpl[c.source];
      rows.push({
        source: c.source,
        label: c.label,
        lossy: !!c.lossy,
        arch: q.arch,
        bpw: q.bpw,
        experts: experts.join(','),
        tensor_names: tensors.map((t) => t.name),
        file_bytes: fs.statSync(file).size,
        source_perplexity: source,
        perplexity,
        vs_moe_pct: 100 * (perplexity / source - 1),
        moe_gguf_perplexity: g,
        moe_gguf_vs_llama_pct: 100 * (g / perplexity - 1),
      });
    }
    const ok =
      rows.every((r) => (r.lossy || Math.abs(r.vs_moe_pct) <= 0.5) && Math.abs(r.moe_gguf_vs_llama_pct) <= 0.5) &&
      (spec.check ? spec.check(rows, dirs) : true);
    const shown = rows.map(({ tensor_names, ...r }) => r); // eslint-disable-line no-unused-vars
    if (JSON_OUT) console.log(JSON.stringify({ windows: WINDOWS, seq_len: T, rows: shown }));
    else {
      console.log(`${spec.title} (scripts/${spec.script}), ${WINDOWS} windows × ${T} tokens of eval.txt`);
      console.log(
        '| GGUF | llama.cpp arch | experts | bits/weight | file | moe eval of the source | llama.cpp | vs moe eval | moe eval of the GGUF | vs llama.cpp |',
      );
      console.log('|---|---|---|---|---|---|---|---|---|---|');
      for (const r of shown)
        console.log(
          `| ${r.label} | ${r.arch} | ${r.experts} | ${r.bpw.toFixed(3)} | ${(r.file_bytes / 1e6).toFixed(2)} MB | ${r.source_perplexity.toFixed(3)} | ${r.perplexity.toFixed(3)} | ${pct(r.vs_moe_pct)} | ${r.moe_gguf_perplexity.toFixed(3)} | ${pct(r.moe_gguf_vs_llama_pct)} |`,
        );
      console.log(ok ? 'checks passed' : 'FAILED: a check did not hold');
    }
    if (!ok) process.exitCode = 1;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
