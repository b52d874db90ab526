/**
 * The quality claims of fixtures/tiny-moe's tests, on the second trained fixture (fixtures/tiny-dsv3: DeepSeek-V3
 * layout, State of the Union text), measured by moe eval on its held-out text (fixtures/sotu/eval.txt):
 * - at 4 of 8 experts, REAP, NAEE and frequency pruning and M-SMoE and HC-SMoE merging beat random pruning (mean of
 *   seeds 0, 1, 2), as test/prune/quality.test.ts claims on fixture 1;
 * - GPTQ at 3 bits beats RTN at 3 bits, and LP allocation at 3 bits on average beats uniform 3 bits (RTN and GPTQ),
 *   as test/commands/quantize.test.ts claims on fixture 1. On this fixture, in this test's setting, LP's perplexity is
 *   NOT below uniform's, with RTN (309.99 against 309.73 when measured) nor with GPTQ (309.21 against 309.09): a
 *   finding, kept as `test.failing` so that it is seen and the suite tells when it changes. LP's predicted cost (the
 *   objective it minimises) is below uniform's, asserted. (bench/quality-check.js, with 4,096 eval tokens and 16,384
 *   calibration tokens, finds LP better with GPTQ, 334.59 against 334.88, and worse with RTN, 335.32 against 335.07.)
 * Short texts and windows keep it cheap: one calibration (with Hessians) of 8,192 tokens, evals of 2,048 tokens in
 * windows of 128. bench/quality-check.js runs the same claims on longer texts and on WikiText-2.
 */
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize, QuantizeOptions } from '../../src/commands/quantize';
import { quiet, ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-dsv3');
const TEXT = path.join(ROOT, 'fixtures', 'sotu');
const KEEP = 4; // of 8
const EVAL = { data: path.join(TEXT, 'eval.txt'), seqLen: 128, maxTokens: 2048 };

async function perplexity(dir: string): Promise<number> {
  return (await evalCommand({ model: dir, ...EVAL }, quiet)).perplexity;
}

let stats: string;
beforeAll(async () => {
  stats = path.join(tmpDir(), 'stats');
  const data = path.join(TEXT, 'calib.txt');
  const opts = { model: MODEL, output: stats, data, seqLen: 128, maxTokens: 8192, naeeTokens: 256, hessians: true };
  await calibrate(opts, quiet);
}, 120_000);

describe('expert reduction on the second trained fixture (4 of 8 experts)', () => {
  let random: number;

  beforeAll(async () => {
    const seeds = [];
    for (const seed of [0, 1, 2]) {
      const out = path.join(tmpDir(), `random-${seed}`);
      await prune({ model: MODEL, stats, method: 'random', seed, keep: KEEP, output: out }, quiet);
      seeds.push(await perplexity(out));
    }
    random = seeds.reduce((s, x) => s + x, 0) / seeds.length;
  }, 120_000);

  test.each(['reap', 'naee', 'frequency'])(
    'prune --method %s beats random pruning',
    async (method) => {
      const out = path.join(tmpDir(), method);
      await prune({ model: MODEL, stats, method, keep: KEEP, output: out }, quiet);
      expect(await perplexity(out)).toBeLessThan(random);
    },
    60_000,
  );

  test.each(['msmoe', 'hcsmoe'])(
    'merge --method %s beats random pruning',
    async (method) => {
      const out = path.join(tmpDir(), method);
      await merge({ model: MODEL, stats, method, keep: KEEP, output: out }, quiet);
      expect(await perplexity(out)).toBeLessThan(random);
    },
    60_000,
  );
});

describe('quantization on the second trained fixture', () => {
  const done = new Map<string, Promise<{ ppl: number; cost: number; bits: number; status?: string }>>();
  /** Each configuration is quantized and evaluated once, whichever test asks first. */
  function run(method: 'rtn' | 'gptq', allocate?: 'lp') {
    const key = `${method}-${allocate ?? 'uniform'}`;
    if (!done.has(key)) {
      const output = path.join(tmpDir(), key);
      const o: QuantizeOptions = { model: MODEL, stats, output, bits: 3, method, allocate };
      done.set(
        key,
        quantize(o, quiet).then(async (r) => {
          if (method === 'gptq') expect(r.gptq_fallbacks).toEqual([]);
          const ppl = await perplexity(output);
          return { ppl, cost: r.predicted_cost!, bits: r.average_bits, status: r.solver?.status };
        }),
      );
    }
    return done.get(key)!;
  }

  test('GPTQ at 3 bits beats RTN at 3 bits on the same calibration', async () => {
    const [rtn, gptq] = [await run('rtn'), await run('gptq')];
    expect(gptq.cost).toBeLessThan(rtn.cost);
    expect(gptq.ppl).toBeLessThan(rtn.ppl);
  }, 300_000);

  const lpCost = 'at 3 bits on average, LP allocation has a lower predicted cost than uniform 3-bit (%s)';
  test.each(['rtn', 'gptq'] as const)(
    lpCost,
    async (method) => {
      const [uniform, lp] = [await run(method), await run(method, 'lp')];
      expect(lp.status).toBe('optimal');
      expect(lp.bits).toBeLessThanOrEqual(3 + 1e-9);
      expect(lp.bits).toBeGreaterThan(2.9);
      expect(lp.cost).toBeLessThan(uniform.cost);
    },
    300_000,
  );

  // Known not to hold on this fixture (see the header); the tests above with the same runs assert that they succeed.
  const lpPpl = 'at 3 bits on average, LP allocation beats uniform 3-bit in perplexity (%s)';
  test.failing.each(['rtn', 'gptq'] as const)(
    lpPpl,
    async (method) => {
      const [uniform, lp] = [await run(method), await run(method, 'lp')];
      expect(lp.ppl).toBeLessThan(uniform.ppl);
    },
    300_000,
  );
});
