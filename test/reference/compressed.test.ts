/**
 * Pruned, merged and (dequantized) quantized checkpoints are real Hugging Face checkpoints: scripts/check_hf_outputs.py
 * made them with
 * moe, loaded them in transformers and committed transformers' perplexities (fixtures/reference). Here moe makes
 * the same outputs again (the commands are deterministic) and moe eval must give the same perplexity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HessianWeighting } from '../../src/calib/affinity';
import { calibrate, CalibrateOptions } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { fixtureStats, quiet, ROOT, tmpDir } from '../helpers';
const { fixtureCalibration } = require('../fixture-stats') as {
  fixtureCalibration: () => { options: Record<string, unknown> };
};

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const TEXT = path.join(ROOT, 'fixtures', 'text');
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'compressed-ppl.json'), 'utf8'));

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

describe('compressed checkpoints: moe eval equals transformers', () => {
  let stats: string;

  beforeAll(async () => {
    // The shared calibration (test/fixture-stats.js) is made with ref.calibrate's flags; checked below.
    stats = await fixtureStats();
  }, 60_000);

  test("the shared stats were calibrated with the reference's options", () => {
    const c: string[] = ref.calibrate;
    expect(fixtureCalibration().options).toEqual({
      model: MODEL,
      data: path.join(TEXT, 'calib.txt'),
      seqLen: Number(flag(c, '--seq-len')),
      maxTokens: Number(flag(c, '--max-tokens')),
      naeeTokens: Number(flag(c, '--naee-tokens')),
      hessians: c.includes('--hessians'),
    });
    const recorded = JSON.parse(fs.readFileSync(path.join(stats, 'stats.json'), 'utf8'));
    expect(JSON.stringify(recorded)).toContain('"seq_len":' + flag(c, '--seq-len'));
  });

  /** Stats calibrated with the shared options plus `extra` (a case's calibrate_extra), made once per set. */
  const extraStats = new Map<string, string>();
  async function statsFor(extra: string[] | undefined): Promise<string> {
    if (!extra?.length) return stats;
    const key = extra.join(' ');
    if (!extraStats.has(key)) {
      const out = path.join(tmpDir(), 'stats');
      await calibrate(
        {
          ...(fixtureCalibration().options as unknown as CalibrateOptions),
          output: out,
          allExperts: extra.includes('--all-experts'),
          hessianWeighting: flag(extra, '--hessian-weighting') as HessianWeighting | undefined,
        },
        quiet,
      );
      extraStats.set(key, out);
    }
    return extraStats.get(key)!;
  }

  type Case = { args: string[]; calibrate_extra?: string[]; perplexity: number; windows: number };
  test.each(Object.entries(ref.cases as Record<string, Case>))('%s', async (_name, c) => {
    let dir = MODEL;
    if (c.args.length > 0) {
      dir = path.join(tmpDir(), 'out');
      const recal = flag(c.args, '--recalibrate-router') as 'ls' | 'kl' | undefined;
      const topK = flag(c.args, '--top-k');
      const common = {
        model: MODEL,
        stats,
        method: flag(c.args, '--method')!,
        ratio: Number(flag(c.args, '--ratio')),
        output: dir,
        recalibrateRouter: recal,
      };
      if (c.args[0] === 'prune') await prune({ ...common, topK: topK ? Number(topK) : undefined }, quiet);
      else if (c.args[0] === 'merge')
        await merge({ ...common, refit: flag(c.args, '--refit') === 'on' ? true : undefined }, quiet);
      else {
        // transformers evaluated the dequantized format; moe evaluates the packed one made with the same arguments.
        expect(flag(c.args, '--format')).toBe('dequantized');
        const allocate = flag(c.args, '--allocate') as 'lp' | undefined;
        await quantize(
          {
            model: MODEL,
            stats: await statsFor(c.calibrate_extra),
            output: dir,
            bits: Number(flag(c.args, '--bits')),
            method: flag(c.args, '--method') as 'rtn' | 'gptq',
            allocate,
            alignRouter: c.args.includes('--align-router'),
            awq: c.args.includes('--awq'),
            format: 'packed',
          },
          quiet,
        );
        const r = await evalCommand(
          { model: dir, data: path.join(TEXT, 'eval.txt'), seqLen: ref.seq_len, maxTokens: ref.max_tokens },
          quiet,
        );
        expect(r.windows).toBe(c.windows);
        expect(Math.abs(r.perplexity / c.perplexity - 1)).toBeLessThan(1e-3);
        return;
      }
    }
    const r = await evalCommand(
      { model: dir, data: path.join(TEXT, 'eval.txt'), seqLen: ref.seq_len, maxTokens: ref.max_tokens },
      quiet,
    );
    expect(r.windows).toBe(c.windows);
    expect(Math.abs(r.perplexity / c.perplexity - 1)).toBeLessThan(1e-4);
  });
});
