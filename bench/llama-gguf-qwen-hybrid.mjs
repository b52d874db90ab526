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
 * the file within 0.5% of llama.cpp's (bench/llama-family.mjs runs it and checks).
 */
import { runGgufBench } from './llama-family.mjs';

await runGgufBench({
  title: 'Qwen3-Next and Qwen3.5-MoE',
  cache: 'qwen-hybrid-bench',
  script: 'make_qwen_hybrid_bench.py',
  seqLen: 256,
  sources: { qwen3_next: 'qwen3_next', qwen3_5_moe: 'qwen3_5_moe' },
  // Q4_0 is reported, not gated against the source: 4-bit rounding moves the perplexity itself
  cases: ['qwen3_next', 'qwen3_5_moe'].flatMap((source) =>
    ['f32', 'bf16', 'q8_0', 'q4_0'].map((type) => ({
      source,
      label: `${source} ${type.toUpperCase()}`,
      type,
      lossy: type === 'q4_0',
    })),
  ),
});
