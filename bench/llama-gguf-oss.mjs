#!/usr/bin/env node
/**
 * llama.cpp runs moe's gpt-oss GGUF files (issue 18): a small trained gpt-oss (scripts/make_gptoss_bench.py: bf16,
 * and the same model with its experts stored as MXFP4 as openai/gpt-oss-* publish them) written as GGUF, loaded by
 * llama.cpp ("gpt-oss", through node-llama-cpp 3.22.1's prebuilt CPU binary; install: bench/llama-gguf.mjs) and
 * evaluated window by window on the held-out text's token ids; its perplexity compared with `moe eval` of the
 * source on the same windows, and with `moe eval FILE.gguf` (moe reading the file back).
 *
 *   npm run build && node bench/llama-gguf-oss.mjs [--windows 8] [--seq-len 128] [--model DIR] [--json]
 *
 * DIR holds bf16/ and mxfp4/ (default .cache/gptoss-bench, made once with .venv's python, about 4 min).
 * The MXFP4 source's experts go into the file as ggml MXFP4, repacked without re-quantizing; --type applies to the
 * other weights. The windows (128 tokens) are longer than the sliding window (32), so both kinds of layers count.
 *
 * Acceptance (issue): llama.cpp's perplexity within 0.5% of moe eval's of the source for every file, and moe eval of
 * the file within 0.5% of llama.cpp's (bench/llama-family.mjs runs it and checks).
 */
import { runGgufBench } from './llama-family.mjs';

await runGgufBench({
  title: 'gpt-oss',
  cache: 'gptoss-bench',
  script: 'make_gptoss_bench.py',
  sources: { bf16: 'bf16', mxfp4: 'mxfp4' },
  cases: [
    { source: 'bf16', label: 'bf16 → Q8_0', type: 'q8_0' },
    { source: 'bf16', label: 'bf16 → F32', type: 'f32' },
    { source: 'mxfp4', label: 'MXFP4 → MXFP4 experts, Q8_0', type: 'q8_0' },
    { source: 'mxfp4', label: 'MXFP4 → MXFP4 experts, F32', type: 'f32' },
  ],
  // the MXFP4 source's experts are repacked into ggml MXFP4, whatever --type says
  check: (rows) => rows.filter((r) => r.source === 'mxfp4').every((r) => r.experts === 'MXFP4'),
});
