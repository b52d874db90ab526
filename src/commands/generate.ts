/**
 * `moe generate MODEL --prompt TEXT`: text after a prompt with the KV-cache decoder (src/model/forward/decode.ts),
 * on every input `moe eval` reads (model folders incl. FP8 / MXFP4 / packed, GGUF files). Greedy at temperature 0,
 * seeded sampling otherwise; stops at the model's EOS (generation_config.json, else config.json; GGUF: its
 * tokenizer.ggml.eos_token_id), a --stop string (cut before it) or --max-new-tokens. --chat sends the prompt through
 * the model's chat template.
 */
import * as path from 'node:path';
import { createBackend } from '../backend/index';
import type { BackendName } from '../backend/backend';
import { UsageError } from '../errors';
import { generate, promptIds, StopReason } from '../eval/generate';
import type { TextTokenizer } from '../eval/tokenizer';
import { isGgufPath } from '../gguf/source';
import { Decoder } from '../model/forward/decode';
import type { Context } from '../ui/progress';
import { openModel } from './open-model';
import { BACKEND, CommandSpec, JSON_OUTPUT, THREADS } from './spec';

export interface GenerateCommandOptions {
  model: string;
  prompt: string;
  maxNewTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  /** Send the prompt as a user message through the model's chat template. */
  chat?: boolean;
  /** Bytes of float32 weights kept in memory across steps (default: the forward pass's layer budget). */
  cacheBytes?: number;
  backend?: BackendName;
  threads?: number;
}

export interface GenerateReport {
  model: string;
  prompt: string;
  prompt_tokens: number;
  text: string;
  token_ids: number[];
  stop_reason: StopReason;
  new_tokens: number;
  prefill_seconds: number;
  /** Decode steps per second (the prefill excluded). */
  tokens_per_second: number;
  backend: string;
}

/**
 * The prompt's token ids. With --chat, the prompt is one user message rendered by the model's chat template
 * (src/eval/chat.ts) and encoded as transformers' apply_chat_template encodes it: the template writes the special
 * tokens itself, so none are added.
 */
function promptTokens(o: GenerateCommandOptions, tok: TextTokenizer, m: ReturnType<typeof openModel>): number[] {
  if (!o.chat) return promptIds(tok, o.prompt);
  return tok.encode(m.chat([{ role: 'user', content: o.prompt }], { addGenerationPrompt: true }));
}

/** --stop text as typed on a command line: \n, \t and \\ stand for a newline, a tab and a backslash. */
export function unescapeStop(text: string): string {
  return text.replace(/\\([nt\\])/g, (_, c: string) => (c === 'n' ? '\n' : c === 't' ? '\t' : '\\'));
}

function validate(o: GenerateCommandOptions): void {
  if (typeof o.prompt !== 'string' || !o.prompt)
    throw new UsageError('--prompt is empty', { hint: 'pass the text to continue, e.g. --prompt "Once upon a time"' });
  const n = o.maxNewTokens ?? 64;
  if (!(Number.isInteger(n) && n >= 1)) throw new UsageError(`--max-new-tokens ${n} must be an integer ≥ 1`);
  if (o.temperature !== undefined && !(o.temperature >= 0))
    throw new UsageError(`--temperature ${o.temperature} must be a number ≥ 0`, { hint: '0 is greedy decoding' });
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new UsageError(`--top-p ${o.topP} must be in (0, 1]`);
  if (o.topP !== undefined && !o.temperature)
    throw new UsageError('--top-p needs --temperature above 0', { hint: 'greedy decoding (temperature 0) ignores it' });
  if (o.stop?.some((s) => !s)) throw new UsageError('--stop strings must not be empty');
}

export async function generateCommand(o: GenerateCommandOptions, _ctx?: Context): Promise<GenerateReport> {
  validate(o);
  const maxNewTokens = o.maxNewTokens ?? 64;
  const m = openModel(o.model);
  try {
    const tok = m.tokenizer();
    const prompt = promptTokens(o, tok, m);
    if (!prompt.length) throw new UsageError('the prompt encodes to no tokens', { hint: 'pass a longer --prompt' });
    const bad = prompt.find((id) => id < 0 || id >= m.arch.vocab);
    if (bad !== undefined)
      throw new UsageError(`the prompt's token id ${bad} is outside the model's vocabulary (${m.arch.vocab})`, {
        file: m.ckpt.dir,
        hint: "the tokenizer does not match the model's embeddings",
      });
    checkLength(m.arch, prompt.length, maxNewTokens, m.ckpt.dir);
    const be = await createBackend(o.backend ?? 'onnx', { threads: o.threads });
    try {
      const dec = new Decoder(m.reader, m.arch, be, { cacheBytes: o.cacheBytes });
      const g = await generate(dec, tok, prompt, {
        maxNewTokens,
        temperature: o.temperature ?? 0,
        topP: o.topP,
        seed: o.seed,
        stop: o.stop?.map(unescapeStop),
        eos: m.eos(),
      });
      const steps = Math.max(0, g.ids.length - 1);
      return {
        model: isGgufPath(o.model) ? path.resolve(o.model) : m.ckpt.dir,
        prompt: o.prompt,
        prompt_tokens: prompt.length,
        text: g.text,
        token_ids: g.ids,
        stop_reason: g.stopReason,
        new_tokens: g.ids.length,
        prefill_seconds: g.prefillSeconds,
        tokens_per_second: steps && g.decodeSeconds > 0 ? steps / g.decodeSeconds : 0,
        backend: be.name,
      };
    } finally {
      await be.dispose();
    }
  } finally {
    m.reader.close();
  }
}

/** DeepSeek-V3.2 runs dense attention, exact only up to index_topk tokens: refuse a longer generation up front. */
function checkLength(arch: ReturnType<typeof openModel>['arch'], prompt: number, maxNew: number, file: string): void {
  try {
    arch.checkWindow(prompt + maxNew);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    throw new UsageError(`the prompt (${prompt} tokens) plus --max-new-tokens ${maxNew}: ${e.message}`, {
      file,
      hint: 'use a shorter --prompt or a smaller --max-new-tokens',
    });
  }
}

export function formatGenerate(r: GenerateReport): string {
  return [
    r.text,
    '',
    `${r.new_tokens} new tokens after ${r.prompt_tokens} prompt tokens (stopped: ${r.stop_reason}), ` +
      `${r.tokens_per_second.toFixed(1)} tokens/s, prefill ${r.prefill_seconds.toFixed(2)} s (${r.backend} backend)`,
  ].join('\n');
}

export const generateSpec: CommandSpec<GenerateReport> = {
  name: 'generate',
  summary: 'continue a prompt with the model (KV-cache decoding; greedy or seeded sampling)',
  args: [{ name: '<model>', description: 'model folder (also packed, FP8, MXFP4) or a .gguf file' }],
  options: [
    { flag: '--prompt <text>', type: 'string', required: true, description: 'the text to continue' },
    { flag: '--max-new-tokens <n>', type: 'int', min: 1, default: '64', description: 'tokens to generate at most' },
    {
      flag: '--temperature <t>',
      type: 'number',
      default: '0',
      description: 'sampling temperature (0: greedy, the most likely token each step)',
    },
    { flag: '--top-p <p>', type: 'number', description: 'sample only from the most likely tokens of mass P' },
    { flag: '--seed <n>', type: 'int', default: '0', description: 'seed of the sampling' },
    {
      flag: '--stop <text...>',
      type: 'list',
      description: 'stop when the text contains one of these strings (cut before it; \\n is a newline); repeatable',
    },
    {
      flag: '--chat',
      type: 'bool',
      description: "send the prompt as a user message through the model's chat template (tokenizer_config.json)",
    },
    {
      flag: '--weight-cache <size>',
      key: 'cacheBytes',
      type: 'size',
      default: '1GiB',
      description: 'float32 weights kept in memory across decoding steps; the rest are read again at every step',
    },
    BACKEND,
    THREADS,
    JSON_OUTPUT,
  ],
  examples: [
    'moe generate fixtures/tiny-moe --prompt "The whale" --max-new-tokens 32',
    'moe generate ./model-int4 --prompt "Q: 2+2=" --stop "\\n" --json',
    'moe generate model.gguf --prompt "Call me" --temperature 0.8 --top-p 0.95 --seed 7',
    'moe generate ./Qwen3-30B-A3B-pruned --prompt "Name three whales." --chat --stop "<|im_end|>"',
  ],
  run: ([model], o, ctx) => generateCommand({ ...(o as Omit<GenerateCommandOptions, 'model'>), model }, ctx),
  format: formatGenerate,
};
