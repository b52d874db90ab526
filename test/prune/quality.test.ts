/**
 * On the trained fixture at 50% of the experts, the informed methods beat random pruning (mean of 3 seeds),
 * measured by moe eval on held-out text: REAP, NAEE and frequency pruning; M-SMoE and HC-SMoE merging.
 */
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quiet, ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');
const KEEP = 4; // of 8

async function perplexity(dir: string): Promise<number> {
  return (await evalCommand({ model: dir, data: path.join(TEXT, 'eval.txt'), seqLen: 256, maxTokens: 8192 }, quiet))
    .perplexity;
}

describe('compression quality on the trained fixture (4 of 8 experts)', () => {
  let stats: string;
  let random: number;
  const ppl: Record<string, number> = {};

  beforeAll(async () => {
    stats = path.join(tmpDir(), 'stats');
    await calibrate(
      {
        model: MODEL,
        output: stats,
        data: path.join(TEXT, 'calib.txt'),
        seqLen: 256,
        maxTokens: 16384,
        naeeTokens: 512,
      },
      quiet,
    );
    const seeds = [];
    for (const seed of [0, 1, 2]) {
      const out = path.join(tmpDir(), `random-${seed}`);
      await prune({ model: MODEL, stats, method: 'random', seed, keep: KEEP, output: out }, quiet);
      seeds.push(await perplexity(out));
    }
    random = seeds.reduce((s, x) => s + x, 0) / seeds.length;
  }, 120_000);

  test.each(['reap', 'naee', 'frequency'])('prune --method %s beats random pruning', async (method) => {
    const out = path.join(tmpDir(), method);
    await prune({ model: MODEL, stats, method, keep: KEEP, output: out }, quiet);
    ppl[method] = await perplexity(out);
    expect(ppl[method]).toBeLessThan(random);
  });

  test.each(['msmoe', 'hcsmoe'])('merge --method %s beats random pruning', async (method) => {
    const out = path.join(tmpDir(), method);
    await merge({ model: MODEL, stats, method, keep: KEEP, output: out }, quiet);
    ppl[method] = await perplexity(out);
    expect(ppl[method]).toBeLessThan(random);
  });
});
