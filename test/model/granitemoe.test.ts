/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * GraniteMoE against transformers 5.18 (fixtures/golden/granitemoe; scripts/make_golden.py --only granitemoe): router
 * top-k on every token, logits and loss on the ref and onnx backends, each of the four multipliers moving the logits
 * as transformers measured, and the experts fused in nn.Linear orientation (input_linear [E, 2I, H], output_linear
 * [E, H, I]) read as per-expert views and written back fused by prune (kept slices bit-exact), merge and quantize.
 * transformers' perplexity of the pruned / merged / GPTQ outputs: test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { loadArchitecture } from '../../src/model/registry';
import { goldenMatchTests, goldenWindows, readGolden, runGolden } from './golden-case';
import { GOLDEN, quiet, rawHeader, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'granitemoe');
const CONFIG = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));

const golden = () => readGolden(DIR);

const run = (be: Backend, config?: Record<string, unknown>) => runGolden(DIR, be, { config });

describe('the golden granitemoe checkpoint', () => {
  goldenMatchTests(DIR, [2, 32, 2], [0, 1], "router top-2 equals transformers' on every token of every layer");

  test.each(['embedding_multiplier', 'residual_multiplier', 'attention_multiplier', 'logits_scaling'])(
    'with %s 1 the logits move as they do in transformers',
    async (key) => {
      const g = golden();
      const want = g.info.checks[`max_abs_logit_change_with_${key}_1`] as number;
      expect(want).toBeGreaterThan(5e-3); // well above the 1e-3 agreement
      const moved = maxDiff((await run(new RefBackend(), { ...CONFIG, [key]: 1 })).logits, g.logits);
      expect(Math.abs(moved - want)).toBeLessThan(1e-3);
    },
  );
});

describe('commands on the fused [out, in] experts', () => {
  const work = tmpDir('moe-granite-');
  const data = path.join(work, 'ids.json');
  const stats = path.join(work, 'stats');
  const stored = (dir: string) => rawHeader(path.join(dir, 'model.safetensors')).json;
  beforeAll(async () => {
    const { ids, B, T } = golden();
    fs.writeFileSync(data, JSON.stringify(goldenWindows({ ids, B, T })));
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref' }, quiet);
  });

  test('prune writes input_linear / output_linear of the kept experts, their slices bit-exact', async () => {
    const out = path.join(work, 'pruned');
    const report = await prune({ model: DIR, stats, method: 'reap', keep: 6, output: out, backend: 'ref' }, quiet);
    const h = stored(out);
    expect(h['model.layers.0.block_sparse_moe.input_linear.weight'].shape).toEqual([6, 32, 32]);
    expect(h['model.layers.0.block_sparse_moe.output_linear.weight'].shape).toEqual([6, 32, 16]);
    const a = new TensorReader(openTensorFile(path.join(out, 'model.safetensors')));
    const b = new TensorReader(openTensorFile(path.join(DIR, 'model.safetensors')));
    for (const { layer, kept } of report.layers) {
      for (const name of ['input_linear', 'output_linear']) {
        const key = `model.layers.${layer}.block_sparse_moe.${name}.weight`;
        const slice = a.bytes(key).byteLength / 6;
        kept.forEach((e, i) =>
          expect(
            Buffer.from(a.bytes(key).subarray(i * slice, (i + 1) * slice)).equals(
              Buffer.from(b.bytes(key).subarray(e * slice, (e + 1) * slice)),
            ),
          ).toBe(true),
        );
      }
    }
    a.close();
    b.close();
  });

  test('merge and quantize --format dequantized write the fused tensors in the same orientation', async () => {
    const merged = path.join(work, 'merged');
    await merge({ model: DIR, stats, method: 'msmoe', keep: 4, output: merged, backend: 'ref' }, quiet);
    expect(stored(merged)['model.layers.1.block_sparse_moe.input_linear.weight'].shape).toEqual([4, 32, 32]);
    const q = path.join(work, 'q8');
    await quantize({ model: DIR, output: q, bits: 8, method: 'rtn', format: 'dequantized' }, quiet);
    expect(stored(q)['model.layers.1.block_sparse_moe.output_linear.weight'].shape).toEqual([8, 32, 16]);
    // the per-expert views of the written tensor are the source's experts to 8-bit precision, in the same places
    const src = openCheckpoint(DIR);
    const dst = openCheckpoint(q);
    loadArchitecture(src);
    loadArchitecture(dst);
    const [a, b] = [new TensorReader(src), new TensorReader(dst)];
    const key = 'model.layers.1.block_sparse_moe.experts.5.up_proj.weight';
    const [x, y] = [a.f32(key), b.f32(key)];
    const scale = Math.max(...x.map(Math.abs));
    expect(maxDiff(x, y)).toBeLessThan(scale / 100);
    expect(maxDiff(x, b.f32('model.layers.1.block_sparse_moe.experts.5.gate_proj.weight'))).toBeGreaterThan(scale / 10);
    a.close();
    b.close();
    const ppl = async (m: string) => (await evalCommand({ model: m, data, seqLen: 16 }, quiet)).perplexity;
    expect(Math.abs((await ppl(q)) / (await ppl(DIR)) - 1)).toBeLessThan(5e-3);
  });
});
