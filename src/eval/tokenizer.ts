/** The model's own tokenizer, from its local tokenizer.json (and tokenizer_config.json); never the network. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { CheckpointError } from '../errors';
import { besideWeights } from '../io/checkpoint';

export interface TextTokenizer {
  /** Token ids of `text` with no special tokens added. */
  encode(text: string): number[];
  /** Token ids with the tokenizer's own special tokens (its post-processor's BOS …), as `tokenizer.encode` in HF. */
  encodeWithSpecial?(text: string): number[];
  decode(ids: number[]): string;
  /** Ids of the special added tokens (BOS, EOS, chat markers …). */
  specialIds?(): number[];
  /** Whether `id` is a token of the tokenizer (models often have embedding rows past the tokenizer's last id). */
  hasId?(id: number): boolean;
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(`cannot read ${path.basename(file)} (${(e as Error).message})`, {
      file,
      hint: 'fix or re-save the tokenizer files',
    });
  }
}

export function loadTokenizer(modelDir: string): TextTokenizer {
  const file = besideWeights(modelDir, 'tokenizer.json');
  if (!file) {
    throw new CheckpointError('no tokenizer.json in the model folder', {
      file: modelDir,
      hint: 'copy the tokenizer files next to the weights, or pass pre-tokenized data (a .json array of id arrays)',
    });
  }
  const cfgFile = besideWeights(modelDir, 'tokenizer_config.json');
  return tokenizerFromJson(readJson(file), cfgFile ? readJson(cfgFile) : {}, file);
}

/**
 * A tokenizer from a tokenizer.json object (a file's, or one rebuilt from a GGUF header); `file` names it in errors.
 */
export function tokenizerFromJson(
  json: Record<string, unknown>,
  config: Record<string, unknown>,
  file: string,
): TextTokenizer {
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, config);
  } catch (e) {
    throw new CheckpointError(`tokenizer.json is not supported (${(e as Error).message})`, {
      file,
      hint: 'pass pre-tokenized data instead',
    });
  }
  return {
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    encodeWithSpecial: (text) => tok.encode(text).ids,
    decode: (ids) => tok.decode(ids),
    specialIds: () => [...tok.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id),
    hasId: (id) => tok.id_to_token(id) !== undefined,
  };
}
