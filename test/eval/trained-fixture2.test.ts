/**
 * The second trained fixture (fixtures/tiny-dsv3: DeepSeek-V3 layout, State of the Union text) against transformers:
 * the tokenizer gives transformers' ids and token counts, and `moe eval` gives transformers' perplexity
 * (fixtures/tiny-dsv3/reference-ppl.json, made by scripts/ref_ppl.py) within 0.1%, as for fixtures/tiny-moe.
 * The full-text runs in reference-ppl.json are checked by bench/quality-check.js --reference (too slow for jest).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evalCommand } from '../../src/commands/eval';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { quiet, ROOT } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-dsv3');
const ref = JSON.parse(fs.readFileSync(path.join(MODEL, 'reference-ppl.json'), 'utf8'));

test("the tokenizer gives transformers' ids and token counts", () => {
  const tok = loadTokenizer(MODEL);
  const files = Object.entries(ref.first_token_ids as Record<string, number[]>);
  expect(files.map(([f]) => f).sort()).toEqual(['fixtures/sotu/calib.txt', 'fixtures/sotu/eval.txt']);
  for (const [file, ids] of files) {
    const mine = tok.encode(fs.readFileSync(path.join(ROOT, file), 'utf8'));
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
  .filter((r) => r.text.endsWith('eval.txt') && r.max_tokens !== null && r.max_tokens <= 4096)
  .map((r) => [r.seq_len, r.max_tokens, r]);

test('reference-ppl.json holds a short held-out run for this test', () => expect(runs.length).toBeGreaterThan(0));

test.each(runs)(
  "moe eval reproduces transformers' perplexity on eval.txt (seq-len %d, max-tokens %s) within 0.1%%",
  async (seqLen, maxTokens, run) => {
    const data = path.join(ROOT, run.text);
    const r = await evalCommand({ model: MODEL, data, seqLen, maxTokens: maxTokens! }, quiet);
    expect(r.windows).toBe(run.windows);
    expect(r.positions).toBe(run.positions);
    expect(Math.abs(r.perplexity / run.perplexity - 1)).toBeLessThan(1e-3);
  },
  60_000,
);
