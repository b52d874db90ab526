#!/usr/bin/env node
/**
 * llama.cpp runs moe's MiniMax-M2 GGUF files (issue 20): a small trained MiniMax-M2 (scripts/make_minimax_bench.py:
 * bf16, and the same model block-scaled FP8 as MiniMaxAI publishes it) written as GGUF ("minimax-m2": experts
 * stacked, the selection bias as exp_probs_b, sigmoid gating, q/k norms over all heads, rope.dimension_count = the
 * rotary dims), loaded by llama.cpp (node-llama-cpp 3.22.1's prebuilt CPU binary; install: bench/llama-gguf.mjs)
 * and evaluated window by window on the held-out text's token ids; its perplexity compared with `moe eval` of the
 * source on the same windows, and with `moe eval FILE.gguf` (moe reading the file back).
 *
 *   npm run build && node bench/llama-gguf-minimax.mjs [--windows 8] [--seq-len 128] [--model DIR] [--json]
 *
 * DIR holds bf16/ and fp8/ (default .cache/minimax-bench, made once with .venv's python, a few minutes).
 * The FP8 source is read dequantized (bf16, its config's dtype) and written with --type.
 *
 * Acceptance (issue): llama.cpp's perplexity within 0.5% of moe eval's of the source for every file, and moe eval of
 * the file within 0.5% of llama.cpp's (bench/llama-family.mjs runs it and checks).
 */
import { runGgufBench } from './llama-family.mjs';

await runGgufBench({
  title: 'MiniMax-M2',
  cache: 'minimax-bench',
  script: 'make_minimax_bench.py',
  sources: { bf16: 'bf16', fp8: 'fp8' },
  cases: [
    { source: 'bf16', label: 'bf16 → Q8_0', type: 'q8_0' },
    { source: 'bf16', label: 'bf16 → F32', type: 'f32' },
    { source: 'fp8', label: 'FP8 → Q8_0', type: 'q8_0' },
    { source: 'fp8', label: 'FP8 → F32', type: 'f32' },
  ],
});
