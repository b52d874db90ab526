/**
 * The tokenizer metadata llama.cpp reads from GGUF (tokenizer.ggml.*), made from the model's tokenizer.json and
 * tokenizer_config.json: byte-level BPE as the "gpt2" model (tokens by id, token types, merges, the pre-tokenizer
 * name), SentencePiece-style BPE with byte fallback (Mixtral) as the "llama" model (tokens, scores, types).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { besideWeights } from '../io/checkpoint';
import { architectures } from '../model/registry';
import type { GgufValue } from './writer';

/** llama.cpp's token types. */
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;
const BYTE = 6;

interface TokenizerJson {
  model: {
    type: string;
    vocab: Record<string, number>;
    merges?: (string | [string, string])[];
    byte_fallback?: boolean;
    unk_token?: string | null;
  };
  added_tokens?: { id: number; content: string; special: boolean }[];
  pre_tokenizer?: { type: string; use_regex?: boolean; pretokenizers?: unknown[] } | null;
}

function readJson<T>(file: string): T | undefined {
  if (!besideWeights(path.dirname(file), path.basename(file))) return undefined;
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch (e) {
    throw new CheckpointError(`not valid JSON (${(e as Error).message})`, { file });
  }
}

/** llama.cpp's name for the pre-tokenizer (its regex split before BPE): GPT-2's, else the family's own. */
function preTokenizer(tok: TokenizerJson, modelType: string): string {
  const pre = tok.pre_tokenizer;
  if (pre?.type === 'ByteLevel' && pre.use_regex !== false) return 'gpt-2';
  return architectures.get(modelType)?.ggufPreTokenizer ?? 'default';
}

export function vocabMetadata(dir: string, modelType: string, vocabSize: number): [string, GgufValue][] {
  const file = path.join(dir, 'tokenizer.json');
  const tok = readJson<TokenizerJson>(file);
  if (!tok)
    throw new CheckpointError('no tokenizer.json beside the model; GGUF needs the tokenizer', {
      file: dir,
      hint: "copy the model's tokenizer.json into the folder",
    });
  if (tok.model?.type !== 'BPE')
    throw new CheckpointError(
      `tokenizer model ${JSON.stringify(tok.model?.type)} is not BPE; GGUF output supports BPE tokenizers`,
      { file },
    );
  const cfg = readJson<Record<string, unknown>>(path.join(dir, 'tokenizer_config.json')) ?? {};
  const tokens: string[] = new Array(vocabSize);
  const types: number[] = new Array(vocabSize).fill(UNUSED);
  const added = new Map((tok.added_tokens ?? []).map((t) => [t.id, t]));
  const spm = !!tok.model.byte_fallback;
  for (const [text, id] of Object.entries(tok.model.vocab)) {
    if (id >= vocabSize) continue;
    tokens[id] = text;
    types[id] = spm && /^<0x[0-9A-F]{2}>$/.test(text) ? BYTE : NORMAL;
  }
  for (const [id, t] of added) {
    if (id >= vocabSize) continue;
    tokens[id] = t.content;
    types[id] = t.special ? CONTROL : USER_DEFINED;
  }
  const unk = tok.model.unk_token;
  for (let i = 0; i < vocabSize; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = UNUSED;
    } else if (unk && tokens[i] === unk) types[i] = UNKNOWN;
  }
  const idOf = (key: string): number | undefined => {
    const v = cfg[key];
    const text =
      typeof v === 'string'
        ? v
        : v && typeof v === 'object' && 'content' in v
          ? String((v as { content: unknown }).content)
          : undefined;
    if (text === undefined) return undefined;
    const i = tokens.indexOf(text);
    return i >= 0 ? i : undefined;
  };
  const out: [string, GgufValue][] = [['tokenizer.ggml.model', { type: 'string', value: spm ? 'llama' : 'gpt2' }]];
  if (!spm) out.push(['tokenizer.ggml.pre', { type: 'string', value: preTokenizer(tok, modelType) }]);
  out.push(['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens }]);
  if (spm)
    out.push([
      'tokenizer.ggml.scores',
      { type: 'array', of: 'f32', value: tokens.map((_, i) => (types[i] === NORMAL ? -i : 0)) },
    ]);
  out.push(['tokenizer.ggml.token_type', { type: 'array', of: 'i32', value: types }]);
  const merges = (tok.model.merges ?? []).map((m) => (Array.isArray(m) ? `${m[0]} ${m[1]}` : m));
  if (!spm) out.push(['tokenizer.ggml.merges', { type: 'array', of: 'string', value: merges }]);
  for (const [key, name] of [
    ['bos_token', 'bos'],
    ['eos_token', 'eos'],
    ['unk_token', 'unknown'],
    ['pad_token', 'padding'],
  ] as const) {
    const id = idOf(key);
    if (id !== undefined) out.push([`tokenizer.ggml.${name}_token_id`, { type: 'u32', value: id }]);
  }
  out.push(['tokenizer.ggml.add_bos_token', { type: 'bool', value: cfg.add_bos_token === true }]);
  return out;
}
