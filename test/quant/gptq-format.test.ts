/**
 * `moe quantize --format gptq` against fixtures/reference/gptq.json (scripts/check_gptq.py: GPTQModel's own
 * decoder gave moe's dequantized weights exactly, and vLLM's dynamic-override rule gave the stored bits). Each case
 * is re-written here: the config must equal the reference's, the TypeScript decode of the written tensors must
 * hash to the reference and equal moe's own dequantized weights (the packed output of the same options, decoded
 * by TensorReader) bit for bit. Plus the refusals: other bit widths, fused experts.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { quantize, QuantizeOptions } from '../../src/commands/quantize';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { gptqModules, readGptqWeight } from '../../src/io/gptq';
import { fixtureStats, quiet, ROOT, runMain, tmpDir } from '../helpers';

interface Case {
  model: string;
  args: string[];
  modules: number;
  decoded_sha256: string;
  quantization_config: Record<string, unknown>;
}
const REF = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'gptq.json'), 'utf8')) as {
  cases: Record<string, Case>;
};
// The fixture through its LP case (every width); the goldens at each width (the 3-bit ones leave the experts,
// whose 8-wide dimensions GPTQ cannot pack at 3 bits, unquantized).
// One golden of every other architecture at 4 bits (gpt_oss's fused experts are refused below).
const ARCHS = ['deepseek_v2', 'deepseek_v3', 'deepseek_v32', 'glm4_moe', 'minimax_m2', 'olmoe', 'qwen2_moe'].concat([
  'qwen3_5_moe',
  'qwen3_5_moe_text',
  'qwen3_next',
]);
const CASES = [
  'tiny-moe-lp',
  'qwen3_moe-3bit',
  'qwen3_moe-4bit',
  'qwen3_moe-8bit',
  'mixtral-3bit',
  'mixtral-8bit',
].concat(ARCHS.map((a) => `${a}-4bit`));

/** The reference's command-line flags as quantize() options. */
async function options(c: Case): Promise<Omit<QuantizeOptions, 'output' | 'format'>> {
  const flag = (name: string) => c.args[c.args.indexOf(name) + 1];
  const lp = c.args.includes('--allocate');
  return {
    model: path.join(ROOT, c.model),
    bits: Number(flag('--bits')),
    backend: lp ? undefined : ('ref' as const), // uniform RTN without stats never calls the backend
    ...(lp
      ? {
          allocate: 'lp' as const,
          bitChoices: flag('--bit-choices').split(',').map(Number),
          method: flag('--method') as 'rtn',
          granularity: flag('--granularity') as 'expert',
          stats: await fixtureStats(),
        }
      : {}),
  };
}

describe('moe quantize --format gptq', () => {
  const tmp = tmpDir('moe-gptq-');

  it.each(CASES)(
    '%s: config and decoded weights equal the GPTQModel-checked reference and moe dequantized',
    async (name) => {
      const c = REF.cases[name];
      const o = await options(c);
      const gq = path.join(tmp, `${name}-gptq`);
      const pk = path.join(tmp, `${name}-packed`);
      await quantize({ ...o, output: gq, format: 'gptq' }, quiet);
      // The LP's measuring pass is the slow part: its case is checked by the reference's hash (which check_gptq.py
      // found equal to moe's dequantized weights), without a second run in the packed layout.
      const compare = !o.allocate;
      if (compare) await quantize({ ...o, output: pk, format: 'packed' }, quiet);
      const config = JSON.parse(fs.readFileSync(path.join(gq, 'config.json'), 'utf8'));
      expect(config.quantization_config).toEqual(c.quantization_config);
      const modules = gptqModules(gq).sort((a, b) => (a.weight < b.weight ? -1 : 1));
      expect(modules.length).toBe(c.modules);
      const h = createHash('sha256');
      const reader = compare ? new TensorReader(openCheckpoint(pk)) : undefined;
      try {
        for (const m of modules) {
          const w = readGptqWeight(m);
          if (reader) {
            // stored names (a nested language model's model.language_model.…) as the reader shows them
            const want = reader.f32(m.weight.replace(/^model\.language_model\./, 'model.'));
            expect(Buffer.from(w.buffer).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))).toBe(true);
          }
          h.update(Buffer.from(w.buffer));
        }
      } finally {
        reader?.close();
      }
      expect(h.digest('hex')).toBe(c.decoded_sha256);
    },
  );

  it('refuses bit widths GPTQ v1 does not pack, and fused experts naming GGUF', async () => {
    const model = path.join(ROOT, 'fixtures', 'tiny-moe');
    const five = await runMain(['quantize', model, '--bits', '5', '--format', 'gptq', '-o', path.join(tmp, 'x')]);
    expect(five.code).toBe(2);
    expect(five.stderr).toContain('moe: --format gptq stores 2, 3, 4 or 8 bits, not 5');
    const oss = path.join(ROOT, 'fixtures', 'golden', 'gpt_oss');
    const fused = await runMain(['quantize', oss, '--bits', '4', '--format', 'gptq', '-o', path.join(tmp, 'y')]);
    expect(fused.code).toBe(3);
    expect(fused.stderr).toMatch(/gpt_oss stores its experts fused.*--format gguf/);
    expect(fs.existsSync(path.join(tmp, 'x')) || fs.existsSync(path.join(tmp, 'y'))).toBe(false);
  });
});
