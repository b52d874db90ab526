#!/usr/bin/env node
/**
 * llama.cpp runs moe's GLM-4.5 GGUF files (issue 20): a small trained glm4_moe (scripts/make_glm_bench.py: bf16, and
 * the same model with its layer weights block-scaled FP8 as zai-org/GLM-4.5-FP8-style checkpoints store them)
 * written as GGUF, loaded by llama.cpp ("glm4moe", through node-llama-cpp 3.22.1's prebuilt CPU binary; install:
 * bench/llama-gguf.mjs) and evaluated window by window on the held-out text's token ids; its perplexity compared
 * with `moe eval` of the source on the same windows, and with `moe eval FILE.gguf` (moe reading the file back).
 *
 *   npm run build && node bench/llama-gguf-glm.mjs [--windows 8] [--seq-len 128] [--model DIR] [--json]
 *
 * DIR holds bf16/ and fp8/ (default .cache/glm-bench, made once with .venv's python, about 3 min). The model has
 * GLM's partial rotary (24 of 48 dims per head), q/k norm, q/k/v biases, a dense first layer, sigmoid routing with a
 * selection bias over 2 groups (topk_group 1), × 2.5 and a shared expert: llama.cpp runs every one of them.
 *
 * Acceptance (issue): llama.cpp's perplexity within 0.5% of moe eval's of the source for every file, and moe eval of
 * the file within 0.5% of llama.cpp's (bench/llama-family.mjs runs it and checks).
 */
import { runGgufBench } from './llama-family.mjs';

await runGgufBench({
  title: 'glm4_moe',
  cache: 'glm-bench',
  script: 'make_glm_bench.py',
  sources: { bf16: 'bf16', fp8: 'fp8' },
  cases: [
    { source: 'bf16', label: 'bf16 → Q8_0', type: 'q8_0' },
    { source: 'bf16', label: 'bf16 → F32', type: 'f32' },
    // lossy: its row shows llama.cpp and moe reading the same 4-bit file alike, not the source's perplexity
    { source: 'bf16', label: 'bf16 → Q4_K', type: 'q4_k', lossy: true },
    { source: 'fp8', label: 'FP8 → Q8_0', type: 'q8_0' },
    { source: 'fp8', label: 'FP8 → F32', type: 'f32' },
  ],
});
