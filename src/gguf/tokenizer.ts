/**
 * A Hugging Face tokenizer.json rebuilt from a GGUF file's tokenizer.ggml.* metadata, for the byte-level BPE
 * ("gpt2") tokenizers moe writes (./vocab.ts): the vocabulary by id, the merges in rank order, the control and
 * user-defined tokens as added tokens, and the pre-tokenizer regex named by tokenizer.ggml.pre as llama.cpp
 * defines it (llama-vocab.cpp). Other tokenizer models (SentencePiece "llama", …) are refused: text data needs
 * the model's own tokenizer then, or pre-tokenized input.
 */
import { CheckpointError } from '../errors';
import type { GgufFile } from '../io/gguf-reader';

/** llama.cpp's token types (./vocab.ts). */
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;

/** GPT-2's split (llama.cpp LLAMA_VOCAB_PRE_TYPE_GPT2). */
const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
/** Qwen2's split (llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2), case-insensitive contractions spelled out. */
const QWEN2_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** Qwen3.5's split (llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN35): Qwen2's with combining marks (\p{M}) in words. */
const QWEN35_REGEX =
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const splitThenBytes = (regex: string) => ({
  type: 'Sequence',
  pretokenizers: [
    { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
  ],
});

const PRE_TOKENIZERS: Record<string, unknown> = {
  'gpt-2': BYTE_LEVEL,
  olmo: BYTE_LEVEL,
  qwen2: splitThenBytes(QWEN2_REGEX),
  qwen35: splitThenBytes(QWEN35_REGEX),
};

export function ggufTokenizerJson(g: GgufFile): Record<string, unknown> {
  const m = g.metadata;
  const model = m.get('tokenizer.ggml.model');
  const hint = 'pass pre-tokenized data (a .json array of id arrays), or evaluate the original model folder';
  if (model !== 'gpt2')
    throw new CheckpointError(
      `the GGUF tokenizer model ${JSON.stringify(model ?? null)} is not rebuilt by moe (it rebuilds byte-level BPE, "gpt2")`,
      { file: g.file, hint },
    );
  const pre = String(m.get('tokenizer.ggml.pre') ?? 'default');
  const preTokenizer = PRE_TOKENIZERS[pre];
  if (!preTokenizer)
    throw new CheckpointError(
      `the GGUF pre-tokenizer "${pre}" is not rebuilt by moe (it rebuilds ${Object.keys(PRE_TOKENIZERS).join(', ')})`,
      { file: g.file, hint },
    );
  const tokens = m.get('tokenizer.ggml.tokens');
  const types = m.get('tokenizer.ggml.token_type');
  const merges = m.get('tokenizer.ggml.merges');
  if (
    !Array.isArray(tokens) ||
    !Array.isArray(merges) ||
    (types !== undefined && (!Array.isArray(types) || types.length !== tokens.length))
  ) {
    throw new CheckpointError('the GGUF tokenizer metadata is incomplete (tokens, token_type, merges)', {
      file: g.file,
      hint,
    });
  }
  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  tokens.forEach((text, id) => {
    const type = types ? Number(types[id]) : 1;
    if (type === UNUSED) return; // ids the original vocabulary did not use ([PADn])
    vocab[String(text)] = id;
    if (type === CONTROL || type === USER_DEFINED)
      added.push({
        id,
        content: String(text),
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: type === CONTROL,
      });
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map((s) => {
        const i = String(s).indexOf(' ');
        return [String(s).slice(0, i), String(s).slice(i + 1)];
      }),
    },
  };
}
