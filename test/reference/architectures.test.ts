/**
 * Pruned, merged and dequantized outputs of every checkpoint transformers 5.18 saved in fixtures/golden (mixtral,
 * qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, and the bf16 sharded / tied YaRN variants) load in
 * transformers: scripts/check_hf_outputs.py made them with moe, loaded each strictly (no missing, unexpected or
 * mismatched tensor; the config passes transformers' strict validation) and committed transformers' perplexity on
 * pre-tokenized windows (fixtures/reference/architectures-ppl.json). Here moe makes the same outputs again (the
 * commands are deterministic) and moe eval must give the same perplexity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { modelTypes } from '../../src/model/registry';
import { GOLDEN, quiet, ROOT, tmpDir } from '../helpers';

const DATA = path.join(ROOT, 'fixtures', 'reference', 'golden-data');
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'architectures-ppl.json'), 'utf8'));

interface Case {
  args: string[];
  perplexity: number;
  windows: number;
  positions: number;
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

const rows = Object.entries(ref.models as Record<string, { model_type: string; cases: Record<string, Case> }>).flatMap(
  ([model, m]) => Object.entries(m.cases).map(([name, c]) => [`${model} (${m.model_type}) ${name}`, model, c] as const),
);

test('every supported model_type is covered by pruned, merged and dequantized outputs', () => {
  const covered = new Set(
    Object.values(ref.models as Record<string, { model_type: string; cases: Record<string, Case> }>)
      .filter((m) => ['prune', 'merge', 'quantize'].every((v) => Object.values(m.cases).some((c) => c.args[0] === v)))
      .map((m) => m.model_type),
  );
  expect([...covered].sort()).toEqual(modelTypes().sort());
  expect(ref.transformers_version).toMatch(/^5\.18\./);
});

describe('golden checkpoints: moe eval of its outputs equals transformers', () => {
  const stats = new Map<string, string>();
  const work = tmpDir();

  test.each(rows)(
    '%s',
    async (_label, model, c) => {
      const src = path.join(GOLDEN, model);
      if (!stats.has(model)) {
        const dir = path.join(work, `${model}-stats`);
        await calibrate(
          {
            model: src,
            output: dir,
            data: path.join(DATA, 'calib.json'),
            seqLen: Number(flag(ref.calibrate, '--seq-len')),
            hessians: ref.calibrate.includes('--hessians'),
          },
          quiet,
        );
        stats.set(model, dir);
      }
      let dir = src;
      if (c.args.length > 0) {
        dir = path.join(work, `${model}-${c.args.join('_')}`);
        const common = {
          model: src,
          stats: stats.get(model)!,
          method: flag(c.args, '--method')!,
          keep: Number(flag(c.args, '--keep')),
          output: dir,
        };
        if (c.args[0] === 'prune') await prune(common, quiet);
        else if (c.args[0] === 'merge') await merge(common, quiet);
        else {
          expect(flag(c.args, '--format')).toBe('dequantized');
          await quantize(
            {
              model: src,
              stats: stats.get(model),
              output: dir,
              bits: Number(flag(c.args, '--bits')),
              method: flag(c.args, '--method') as 'rtn' | 'gptq',
              format: 'dequantized',
            },
            quiet,
          );
        }
      }
      if (dir !== src) {
        // The config transformers accepted: the source text, only the expert count changed (prune, merge).
        const text = fs.readFileSync(path.join(src, 'config.json'), 'utf8');
        const keep = flag(c.args, '--keep');
        const method = JSON.parse(text).quantization_config?.quant_method;
        if (keep === undefined && (method === 'fp8' || method === 'mxfp4')) {
          // An FP8 or MXFP4 source quantized: every tensor is written floating, so its quantization_config goes.
          const { quantization_config: _, ...want } = JSON.parse(text);
          expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'))).toEqual(want);
        } else {
          const want =
            keep === undefined
              ? text
              : text.replace(
                  /("(?:num_experts|num_local_experts|n_routed_experts|moe_num_experts)": )\d+/,
                  `$1${keep}`,
                );
          expect(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).toBe(want);
        }
      }
      const r = await evalCommand({ model: dir, data: path.join(DATA, 'eval.json'), seqLen: ref.seq_len }, quiet);
      expect([r.windows, r.positions]).toEqual([c.windows, c.positions]);
      // Measured: within 3e-7 on every case (the acceptance bound is 1e-3); 1e-5 still catches a wrong tensor or
      // routing.
      expect(Math.abs(r.perplexity / c.perplexity - 1)).toBeLessThan(1e-5);
    },
    30_000,
  );
});
