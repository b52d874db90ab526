#!/usr/bin/env node
/**
 * llama.cpp against transformers, per architecture: each transformers-saved checkpoint in fixtures/golden is
 * written as an F32 GGUF by moe (with a stand-in byte-level BPE tokenizer: the golden models have none, and only
 * token ids are evaluated), loaded by llama.cpp through node-llama-cpp, and run on the golden input ids; its
 * logits are compared with transformers' committed logits. This checks the architecture metadata, tensor names,
 * expert stacking and (Mixtral) the q/k row permutation that moe writes.
 *
 * Architectures whose golden checkpoint llama.cpp cannot run (Qwen2-MoE with a dense layer, OLMoE with grouped
 * key/value heads, DeepSeek-V2 with mscale ≠ mscale_all_dim) are also checked on checkpoints from `moe synth`
 * without those features, against moe's own forward pass (`moe eval --dump-logits`; it matches transformers on
 * every golden case, test/model/forward-golden.test.ts).
 *
 * Needs node-llama-cpp in .cache/llama (see bench/llama-gguf.mjs).
 *   npm run build && node bench/llama-golden.mjs [--json] [--only deepseek_v32,deepseek_v32-fp8]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import lib from './lib.js';

const { LLAMA, MOE, ROOT } = lib;
const CASES = [
  'qwen3_moe',
  'qwen3_moe-rope-scaled',
  'mixtral',
  'deepseek_v3',
  'deepseek_v2',
  'qwen2_moe',
  'olmoe',
  'minimax_m2',
  'minimax_m2-fp8',
  'glm4_moe',
  'glm4_moe-fp8',
  'deepseek_v32',
  'deepseek_v32-fp8',
];
// --only NAME[,NAME]: these golden cases only (no synth ones)
const onlyAt = process.argv.indexOf('--only');
const ONLY = onlyAt >= 0 ? process.argv[onlyAt + 1].split(',') : undefined;

if (!fs.existsSync(LLAMA)) {
  console.error('node-llama-cpp is not installed in .cache/llama; see bench/llama-gguf.mjs');
  process.exit(2);
}
const { getLlama } = await import(LLAMA);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });

function safetensors(file) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  const get = (name) => {
    const t = h[name];
    const raw = b.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]);
    const copy = new Uint8Array(raw).buffer;
    return {
      shape: t.shape,
      data: t.dtype === 'I64' ? Array.from(new BigInt64Array(copy), Number) : new Float32Array(copy),
    };
  };
  return get;
}

/** A byte-level BPE tokenizer.json with `vocab` tokens: the 256 byte symbols, then merged pairs. */
function standInTokenizer(vocab) {
  const bytes = [];
  for (let i = 0; i < 256; i++)
    bytes.push(String.fromCodePoint(i < 33 || (i > 126 && i < 161) || i === 173 ? 256 + i : i));
  const v = {};
  bytes.slice(0, Math.min(256, vocab)).forEach((s, i) => (v[s] = i));
  return {
    version: '1.0',
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel' },
    model: { type: 'BPE', vocab: v, merges: [] },
  };
}

const SYNTH = {
  'qwen2_moe (synth, no dense layer)': ['qwen2_moe', ['mlp_only_layers=[]']],
  'olmoe (synth, kv heads = heads)': ['olmoe', []],
  'deepseek_v2 (synth, yarn, mscale = mscale_all_dim)': [
    'deepseek_v2',
    [
      'rope_scaling={"type":"yarn","factor":4.0,"original_max_position_embeddings":64,"mscale":0.707,"mscale_all_dim":0.707,"beta_fast":32,"beta_slow":1}',
    ],
  ],
  'deepseek_v2 (synth, no yarn, no groups)': ['deepseek_v2', ['n_group=1', 'topk_group=1', 'topk_method="greedy"']],
  'deepseek_v2 (synth, no yarn, groups)': ['deepseek_v2', []],
};

function moe(args) {
  const r = spawnSync(process.execPath, [MOE, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr.trim());
  return r.stdout;
}

/** A synthetic checkpoint, token ids, and moe's own logits for them: the same shape as a golden case. */
function synthCase(dir, arch, sets) {
  moe(['synth', '--arch', arch, '-o', dir, ...(sets.length ? ['--set', ...sets] : [])]);
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const B = 2;
  const T = 16;
  let s = 5;
  const ids = [...Array(B)].map(() =>
    [...Array(T)].map(() => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s % config.vocab_size)),
  );
  const idsFile = path.join(dir, '..', `${path.basename(dir)}-ids.json`);
  fs.writeFileSync(idsFile, JSON.stringify(ids));
  const dump = path.join(dir, '..', `${path.basename(dir)}-logits.safetensors`);
  moe(['eval', dir, '--data', idsFile, '--seq-len', String(T), '--dump-logits', dump, '--json']);
  const logits = safetensors(dump)(
    Object.keys(
      JSON.parse(
        fs
          .readFileSync(dump)
          .subarray(8, 8 + Number(fs.readFileSync(dump).readBigUInt64LE(0)))
          .toString('utf8'),
      ),
    ).find((k) => k !== '__metadata__'),
  );
  return (name) =>
    name === 'input_ids'
      ? { shape: [B, T], data: ids.flat() }
      : { shape: [B, T, config.vocab_size], data: logits.data };
}

const rows = [];
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-llama-golden-'));
try {
  for (const name of ONLY ?? [...CASES, ...Object.keys(SYNTH)]) {
    const synth = SYNTH[name];
    const src = path.join(ROOT, 'fixtures', 'golden', name);
    const dir = path.join(work, name.replace(/[^a-z0-9_]/gi, '_'));
    let golden;
    if (synth) golden = synthCase(dir, ...synth);
    else fs.cpSync(src, dir, { recursive: true });
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(standInTokenizer(config.vocab_size)));
    const out = path.join(work, `${path.basename(dir)}.gguf`);
    const r = spawnSync(process.execPath, [MOE, 'quantize', dir, '--format', 'gguf', '--type', 'f32', '-o', out], {
      encoding: 'utf8',
    });
    if (r.status !== 0) {
      rows.push({ name, error: r.stderr.trim() });
      continue;
    }
    golden ??= safetensors(path.join(src, 'golden.safetensors'));
    const ids = golden('input_ids');
    const ref = golden('logits');
    const [B, T] = ids.shape;
    const V = ref.shape[2];
    let maxDiff = 0;
    let maxRef = 0;
    for (const v of ref.data) maxRef = Math.max(maxRef, Math.abs(v));
    let agree = 0;
    try {
      const model = await llama.loadModel({ modelPath: out });
      const ctx = await model.createContext({ contextSize: Math.max(32, T), batchSize: Math.max(32, T) });
      const seq = ctx.getSequence();
      for (let b = 0; b < B; b++) {
        await seq.clearHistory();
        const w = ids.data.slice(b * T, (b + 1) * T);
        const res = await seq.controlledEvaluate(w.map((t) => [t, { generateNext: { logits: true } }]));
        for (let t = 0; t < T; t++) {
          const m = res[t].next.logits;
          let best = -1;
          let bestRef = 0;
          let bestV = -Infinity;
          for (let v = 0; v < V; v++) {
            const mine = m.get(v);
            const theirs = ref.data[(b * T + t) * V + v];
            maxDiff = Math.max(maxDiff, Math.abs(mine - theirs));
            if (mine > bestV) [bestV, best] = [mine, v];
            if (theirs > ref.data[(b * T + t) * V + bestRef]) bestRef = v;
          }
          if (best === bestRef) agree++;
        }
      }
      await ctx.dispose();
      await model.dispose();
      rows.push({
        name,
        max_abs_logit_diff: maxDiff,
        max_abs_logit: maxRef,
        argmax_agreement: agree / (B * T),
        positions: B * T,
      });
    } catch (e) {
      rows.push({ name, error: String(e.message ?? e).split('\n')[0] });
    }
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
if (process.argv.includes('--json')) console.log(JSON.stringify(rows));
else
  for (const r of rows)
    console.log(
      r.error
        ? `${r.name}: ERROR ${r.error}`
        : `${r.name}: llama.cpp vs ${SYNTH[r.name] ? 'moe' : 'transformers'} max |Δlogit| ${r.max_abs_logit_diff.toExponential(2)} (logits up to ${r.max_abs_logit.toFixed(1)}), argmax agreement ${(100 * r.argmax_agreement).toFixed(1)}% of ${r.positions} positions`,
    );
