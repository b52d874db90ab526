import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpDir } from '../helpers';

/** A byte-level BPE tokenizer.json with no merges (GPT-2's byte → character map), for goldens that have none. */
export function byteTokenizer(): Record<string, unknown> {
  const bs: number[] = [];
  for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) bs.push(b);
  const cs = [...bs];
  for (let b = 0, n = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const vocab = Object.fromEntries(bs.map((b, i) => [String.fromCharCode(cs[i]), b]));
  return {
    model: { type: 'BPE', vocab, merges: [] },
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    normalizer: null,
    post_processor: null,
    added_tokens: [],
  };
}

/** A copy of the checkpoint `src` with byteTokenizer() as its tokenizer.json (GGUF export needs a tokenizer). */
export function withByteTokenizer(src: string): string {
  const dir = path.join(tmpDir(), path.basename(src));
  fs.cpSync(src, dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
  return dir;
}
