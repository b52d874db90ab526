/** Opening a model for the commands that run it (eval, generate): a folder or a .gguf file, its tokenizer and size. */
import * as fs from 'node:fs';
import { applyChatTemplate, ChatMessage, renderChatTemplate } from '../eval/chat';
import { tokenizerFromJson, loadTokenizer } from '../eval/tokenizer';
import { UsageError } from '../errors';
import { isGgufPath, openGgufModel } from '../gguf/source';
import { ggufTokenizerJson } from '../gguf/tokenizer';
import { besideWeights, Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import { quantSummary } from '../io/packed';
import { numel } from '../io/safetensors';
import { fileBytes } from '../io/size';
import { loadArchitecture } from '../model/registry';

export interface SizeReport {
  params: number;
  /** The bytes of the weight files (src/io/size.ts). */
  bytes: number;
  bits_per_param: number;
  /** Packed models: mean code bits of the quantized weights (moe quantize). */
  quantized_average_bits?: number;
}

/** From the checkpoint already opened: parameters from its headers, bytes of its weight files. */
function size(ckpt: Checkpoint): SizeReport {
  let params = 0;
  for (const t of ckpt.tensors.values()) params += numel(t.shape);
  const bytes = fileBytes(ckpt.shards);
  return {
    params,
    bytes,
    bits_per_param: params ? (8 * bytes) / params : 0,
    quantized_average_bits: quantSummary(ckpt.tensors)?.average_bits,
  };
}

/** A model folder, or a .gguf file read back into the same shape (tensors by their Hugging Face names). */
export function openModel(dir: string) {
  if (isGgufPath(dir)) {
    const g = openGgufModel(dir);
    const params = g.tensors.reduce((s, t) => s + t.params, 0);
    const bytes = g.gguf.fileSize; // the size is the weight file's bytes (src/io/size.ts)
    return {
      ckpt: g.ckpt,
      arch: g.arch,
      reader: g.reader as TensorReader,
      tokenizer: () => tokenizerFromJson(ggufTokenizerJson(g.gguf), {}, g.file),
      eos: () => ids(g.gguf.metadata.get('tokenizer.ggml.eos_token_id')),
      chat: (messages: ChatMessage[], opts: { addGenerationPrompt: boolean }) =>
        renderChatTemplate(
          ggufChatTemplate(g.gguf.metadata, g.file),
          ggufSpecialTokens(g.gguf.metadata),
          messages,
          opts,
        ),
      size: (): SizeReport => ({ params, bytes, bits_per_param: (8 * bytes) / params }),
    };
  }
  const ckpt = openCheckpoint(dir);
  const arch = loadArchitecture(ckpt);
  return {
    ckpt,
    arch,
    reader: new TensorReader(ckpt),
    tokenizer: () => loadTokenizer(ckpt.dir),
    eos: () => eosIds(ckpt.dir, ckpt.config as Record<string, unknown>),
    chat: (messages: ChatMessage[], opts: { addGenerationPrompt: boolean }) =>
      applyChatTemplate(ckpt.dir, messages, opts),
    size: () => size(ckpt),
  };
}

const ids = (v: unknown): number[] =>
  (Array.isArray(v) ? v : [v]).filter((x) => x !== null && x !== undefined).map(Number);

/** A model folder's end-of-sequence ids: generation_config.json's eos_token_id (one or a list), else config.json's. */
function eosIds(model: string, config: Record<string, unknown>): number[] {
  const file = besideWeights(model, 'generation_config.json');
  if (file) {
    const gen = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    if (gen.eos_token_id !== undefined) return ids(gen.eos_token_id);
  }
  const text = (config.text_config ?? {}) as Record<string, unknown>;
  return ids(config.eos_token_id ?? text.eos_token_id);
}

/** A GGUF file's chat template (tokenizer.chat_template, as llama.cpp's converter and moe's export write it). */
function ggufChatTemplate(m: Map<string, unknown>, file: string): { template: string; file: string } {
  const t = m.get('tokenizer.chat_template');
  if (typeof t !== 'string' || !t)
    throw new UsageError('the GGUF file has no chat template (no tokenizer.chat_template)', {
      file,
      hint: 'drop --chat',
    });
  return { template: t, file };
}

/** bos_token and eos_token as a template sees them: the texts of the GGUF's BOS and EOS ids. */
function ggufSpecialTokens(m: Map<string, unknown>): Record<string, string> {
  const tokens = m.get('tokenizer.ggml.tokens') as string[] | undefined;
  const out: Record<string, string> = {};
  for (const [key, name] of [
    ['tokenizer.ggml.bos_token_id', 'bos_token'],
    ['tokenizer.ggml.eos_token_id', 'eos_token'],
  ]) {
    const id = m.get(key);
    if (tokens && typeof id === 'number' && tokens[id] !== undefined) out[name] = tokens[id];
  }
  return out;
}
