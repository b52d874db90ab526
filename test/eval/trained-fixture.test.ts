/**
 * The trained fixture against transformers: the tokenizer gives transformers' ids, and `moe eval` gives
 * transformers' perplexity (fixtures/tiny-moe/reference-ppl.json, made by scripts/ref_ppl.py) within 0.1%.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { ROOT, runMain } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const ref = JSON.parse(fs.readFileSync(path.join(MODEL, 'reference-ppl.json'), 'utf8'));

test("the tokenizer gives transformers' ids and token counts", () => {
  const tok = loadTokenizer(MODEL);
  for (const [file, ids] of Object.entries(ref.first_token_ids as Record<string, number[]>)) {
    const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
    const mine = tok.encode(text);
    expect(mine.slice(0, ids.length)).toEqual(ids);
    expect(mine.length).toBe(ref.token_counts[file]);
  }
});

interface Run {
  text: string;
  seq_len: number;
  max_tokens: number | null;
  windows: number;
  positions: number;
  perplexity: number;
}

const runs: [number, number | null, Run][] = (ref.runs as Run[])
  .filter((r) => r.text.endsWith('eval.txt'))
  .map((r) => [r.seq_len, r.max_tokens, r]);

test.each(runs)(
  "moe eval reproduces transformers' perplexity on eval.txt (seq-len %d, max-tokens %s) within 0.1%%",
  async (seqLen, maxTokens, run) => {
    const args = ['eval', MODEL, '--data', path.join(ROOT, run.text), '--seq-len', String(seqLen), '--json'];
    if (maxTokens !== null) args.push('--max-tokens', String(maxTokens));
    const r = await runMain(args);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.windows).toBe(run.windows);
    expect(report.positions).toBe(run.positions);
    expect(Math.abs(report.perplexity / run.perplexity - 1)).toBeLessThan(1e-3);
  },
);
