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
 * the file within 0.5% of llama.cpp's (bench/llama-family.mjs runs it and checks).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runGgufBench } from './llama-family.mjs';

await runGgufBench({
  title: 'deepseek_v32',
  cache: 'dsv32-bench',
  script: 'make_dsv32_bench.py',
  sources: { bf16: 'bf16', fp8: 'fp8' },
  cases: [
    { source: 'bf16', label: 'bf16 → Q8_0', type: 'q8_0' },
    { source: 'bf16', label: 'bf16 → F32', type: 'f32' },
    { source: 'fp8', label: 'FP8 → Q8_0', type: 'q8_0' },
    { source: 'fp8', label: 'FP8 → F32', type: 'f32' },
  ],
  // every layer's five indexer tensors are in the file (llama.cpp's deepseek32 loader requires them)
  check: (rows, dirs) => {
    const layers = JSON.parse(fs.readFileSync(path.join(dirs.bf16, 'config.json'), 'utf8')).num_hidden_layers;
    return rows.every((r) => r.tensor_names.filter((n) => n.includes('.indexer.')).length === 5 * layers);
  },
});
