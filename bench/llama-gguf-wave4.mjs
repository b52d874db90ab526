/**
 * llama.cpp on the GGUF files of issue 26's families (the 2026 wave, part 4), side by side with moe eval: each family
 * is a `moe synth` model in the shapes llama.cpp's loader accepts (random weights, a byte-level tokenizer of 256
 * ids), written by `moe quantize --format gguf` (F32, and Q8_0 as a lossy row), loaded by llama.cpp (node-llama-cpp
 * 3.22.1's prebuilt CPU binary; install: bench/llama-gguf.mjs) and evaluated window by window on seeded random ids.
 * A random model's perplexity is near the vocabulary size; what the rows check is that llama.cpp computes the same
 * forward pass as moe: llama.cpp within 0.5% of moe eval of the source (F32 rows) and moe eval of the file within 0.5%
 * of llama.cpp. Families without a GGUF writer yet are not listed.
 *
 *   node bench/llama-gguf-wave4.mjs [--windows 8] [--seq-len 64] [--only llama4_text,phimoe] [--json]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import lib from './lib.js';
import { llamaPerplexity } from './llama-family.mjs';

const { flag, LLAMA, MOE, option: opt, ROOT } = lib;
const WINDOWS = Number(opt('--windows', '8'));
const T = Number(opt('--seq-len', '64'));

/** The families and the config keys that give llama.cpp's shapes (dots.llm1: as many k/v heads as query heads). */
const ONLY = opt('--only', '');
const FAMILIES = [
  { arch: 'dots1', set: { num_key_value_heads: 4, sliding_window: null, max_window_layers: 3 } },
  { arch: 'hunyuan_v1_moe', set: {} },
  { arch: 'ernie4_5_moe', set: {} },
  // logits_scaling below 1 (the logits × 2): random weights' logits are otherwise nearly uniform over 256 ids
  { arch: 'granitemoe', set: { logits_scaling: 0.5, embedding_multiplier: 2, residual_multiplier: 0.5 } },
  // llama.cpp fixes Llama 4's chunk and temperature floor at 8192 (the released models' values); the synth preset's
  // llama3 scaling (original 64 positions) makes rope_freqs differ from 1
  { arch: 'llama4_text', set: { attention_chunk_size: 8192, floor_scale: 8192 } },
  // longrope with short factors ≠ 1 and short_mscale ≠ 1; llama.cpp takes the long factors when its context (padded
  // to 256) exceeds original_max_position_embeddings, so the original is the released model's 4096. llama.cpp routes
  // phimoe by softmax top-2, not sparsemixer: it differs from the source by design (not checked); moe eval of the file
  // runs llama.cpp's routing and is checked against it (README).
  {
    arch: 'phimoe',
    routingDiffers: true,
    set: {
      rope_parameters: JSON.stringify({
        rope_type: 'longrope',
        rope_theta: 10000,
        short_factor: [1, 1.1, 1.3, 1.6, 2, 2.5, 3, 4],
        long_factor: [1, 2, 3, 4, 5, 6, 7, 8],
        short_mscale: 1.2,
        long_mscale: 1.2,
        original_max_position_embeddings: 4096,
      }),
    },
  },
];

function moe(argv) {
  const r = spawnSync(process.execPath, [MOE, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`moe ${argv.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** GPT-2's byte → character map as a BPE vocabulary without merges: 256 ids, one per byte. */
function byteTokenizer() {
  const bs = [];
  for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) bs.push(b);
  const cs = [...bs];
  for (let b = 0, n = 0; b < 256; b++) if (!bs.includes(b)) (bs.push(b), cs.push(256 + n++));
  const vocab = Object.fromEntries(bs.map((b, i) => [String.fromCharCode(cs[i]), b]));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return { model: { type: 'BPE', vocab, merges: [] }, pre_tokenizer: byteLevel, decoder: byteLevel, added_tokens: [] };
}

if (!fs.existsSync(LLAMA)) {
  console.error('node-llama-cpp is not installed in .cache/llama; see the header of bench/llama-gguf.mjs');
  process.exit(2);
}
const { getLlama } = await import(LLAMA);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-llama-wave4-'));
const pct = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(4)}%`;
try {
  let s = 7;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s % 256);
  const windows = [...Array(WINDOWS)].map(() => [...Array(T)].map(rnd));
  const ids = path.join(work, 'ids.json');
  fs.writeFileSync(ids, JSON.stringify(windows));
  const evalArgs = ['--data', ids, '--seq-len', String(T), '--json'];
  const rows = [];
  for (const f of FAMILIES.filter((x) => !ONLY || ONLY.split(',').includes(x.arch))) {
    const dir = path.join(work, f.arch);
    const sets = Object.entries({ vocab_size: 256, ...f.set }).flatMap(([k, v]) => ['--set', `${k}=${v}`]);
    moe(['synth', '--arch', f.arch, ...sets, '-o', dir, '--json']);
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    const source = moe(['eval', dir, ...evalArgs]).perplexity;
    for (const type of ['f32', 'q8_0']) {
      const file = path.join(work, `${f.arch}-${type}.gguf`);
      const q = moe(['quantize', dir, '--format', 'gguf', '--type', type, '-o', file, '--json']);
      const llamaPpl = await llamaPerplexity(llama, file, windows, T);
      const gguf = moe(['eval', file, ...evalArgs]).perplexity;
      rows.push({
        family: f.arch,
        arch: q.arch,
        type,
        lossy: type !== 'f32',
        routing_differs: !!f.routingDiffers,
        source_perplexity: source,
        perplexity: llamaPpl,
        vs_moe_pct: 100 * (llamaPpl / source - 1),
        moe_gguf_perplexity: gguf,
        moe_gguf_vs_llama_pct: 100 * (gguf / llamaPpl - 1),
      });
    }
  }
  const ok = rows.every(
    (r) =>
      r.routing_differs || ((r.lossy || Math.abs(r.vs_moe_pct) <= 0.5) && Math.abs(r.moe_gguf_vs_llama_pct) <= 0.5),
  );
  if (flag('--json')) console.log(JSON.stringify({ windows: WINDOWS, seq_len: T, rows, ok }));
  else {
    console.log(`llama.cpp on issue 26's GGUF files: ${WINDOWS} windows × ${T} seeded random ids, synth models`);
    console.log(
      '| family | llama.cpp arch | type | moe eval of the source | llama.cpp | vs moe eval | moe eval of the GGUF | vs llama.cpp |',
    );
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of rows)
      console.log(
        `| ${r.family} | ${r.arch} | ${r.type} | ${r.source_perplexity.toFixed(3)} | ${r.perplexity.toFixed(3)} | ` +
          `${pct(r.vs_moe_pct)} | ${r.moe_gguf_perplexity.toFixed(3)} | ${pct(r.moe_gguf_vs_llama_pct)} |` +
          (r.routing_differs ? ' (llama.cpp routes by softmax top-2: vs the source not checked)' : ''),
      );
    console.log(ok ? 'checks passed' : 'CHECK FAILED');
  }
  process.exitCode = ok ? 0 : 1;
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
