/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * GLM-4.5 (glm4_moe) against transformers 5.18: fixtures/golden/glm4_moe (bf16, 3 layers: layer 0 dense, q/k norm,
 * q/k/v biases, head_dim 24 with partial rotary 0.5, 8 experts in 2 routing groups, one shared expert) and
 * glm4_moe-fp8 (the same weights block-scaled FP8), made by scripts/make_golden.py --only glm4_moe,glm4_moe-fp8.
 * Router top-k equal on every token of every MoE layer, logits and loss on the ref, onnx and tfjs backends; each
 * GLM rule moves the logits; the rotary dimension rule; prune keeps the per-group quotas; an MTP layer
 * (model.layers.{num_hidden_layers}.*) is kept untouched by prune and ignored by the forward pass.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { TfjsBackend, type TfLike } from '../../src/backend/tfjs';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { forwardSpec } from '../../src/model/forward/spec';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { resolveKeep } from '../../src/prune/keep';
import { GOLDEN, quiet, rawHeader, tmpDir, writeRaw } from '../helpers';
import { lossOf, maxDiff } from '../golden-math';
import { goldenWindows } from './golden-case';

const DIR = path.join(GOLDEN, 'glm4_moe');
const FP8 = path.join(GOLDEN, 'glm4_moe-fp8');

function readGolden(dir: string) {
  const r = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  const [B, T, V] = r.ref('logits').shape;
  const [L, N, k] = r.ref('router_topk').shape;
  const topk = Int32Array.from(new BigInt64Array(r.bytes('router_topk').slice().buffer), Number);
  const logits = r.f32('logits');
  r.close();
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));
  return { ids, logits, B, T, V, L, N, k, topk, info };
}
const golden = readGolden(DIR);

async function run(
  dir: string,
  be: Backend,
  patch?: (a: Architecture) => void,
  router?: (l: number, e: Int32Array) => void,
) {
  const g = dir === DIR ? golden : readGolden(dir);
  const ckpt = openCheckpoint(dir);
  const arch = loadArchitecture(ckpt);
  patch?.(arch);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(g.B * g.T, g.V);
  const observer = router ? { router: (l: number, r: { experts: Int32Array }) => router(l, r.experts.slice()) } : {};
  await new ForwardPass(reader, arch, be).run(g.ids, g.B, g.T, sink, observer);
  reader.close();
  return logits;
}

describe('the golden glm4_moe checkpoints', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  test.each([DIR, FP8])(
    "%s: router top-k equals transformers' selected experts on every token of layers 1-2; logits and loss",
    async (dir) => {
      const g = readGolden(dir);
      expect([g.L, g.N, g.k]).toEqual([2, g.B * g.T, 2]);
      const got: Int32Array[] = [];
      const logits = await run(dir, new RefBackend(), undefined, (l, e) => (got[l] = e));
      expect(Object.keys(got).map(Number)).toEqual([1, 2]);
      for (let i = 0; i < g.L; i++) {
        const want = g.topk.subarray(i * g.N * g.k, (i + 1) * g.N * g.k);
        // the same experts per token, in the same order (the golden orders transformers' unsorted topk_indices by
        // selection score, as moe's top-k returns them)
        expect(Array.from(got[i + 1])).toEqual(Array.from(want));
      }
      expect(maxDiff(logits, g.logits)).toBeLessThanOrEqual(1e-3);
      expect(Math.abs(lossOf(logits, g.ids, g.B, g.T, g.V) - g.info.loss)).toBeLessThanOrEqual(2e-4);
    },
  );

  test('onnx backend: logits within 1e-3, loss within 2e-4', async () => {
    const logits = await run(DIR, onnx);
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, golden.ids, golden.B, golden.T, golden.V) - golden.info.loss)).toBeLessThan(2e-4);
  });

  test('tfjs backend (wasm): logits within 1e-3, loss within 2e-4', async () => {
    const tf = require('@tensorflow/tfjs-core');
    if (tf.getBackend() !== 'wasm') {
      require('@tensorflow/tfjs-backend-wasm').setWasmPaths(
        path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep,
      );
      expect(await tf.setBackend('wasm')).toBe(true);
    }
    await tf.ready();
    const logits = await run(DIR, new TfjsBackend(tf as TfLike));
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, golden.ids, golden.B, golden.T, golden.V) - golden.info.loss)).toBeLessThan(2e-4);
  });

  test('full rotary, no q/k norm, no correction bias or no groups each move the logits > 0.05', async () => {
    const set = (key: string, value: unknown) => (a: Architecture) => {
      a.config[key] = value;
      if (key === 'partial_rotary_factor') (a.config.rope_parameters as Record<string, unknown>)[key] = value;
    };
    const noBias = (a: Architecture) => {
      const rule = a.routing;
      Object.defineProperty(a, 'routing', { value: { ...rule, correctionBias: false } });
    };
    for (const patch of [set('partial_rotary_factor', 1), set('use_qk_norm', false), set('n_group', 1), noBias]) {
      const logits = await run(DIR, new RefBackend(), patch);
      expect(maxDiff(logits, golden.logits)).toBeGreaterThan(0.05);
    }
  });
});

describe('the glm4_moe architecture', () => {
  const config = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));

  test("rotary dimension: rope_parameters' partial_rotary_factor, else the top-level one, else 0.5", () => {
    const rot = (c: Record<string, unknown>) => forwardSpec(architectureFor(c, DIR)).ropeDim;
    expect(rot(config)).toBe(12);
    const rope = { rope_type: 'default', rope_theta: 10000 };
    expect(
      rot({ ...config, partial_rotary_factor: 0.25, rope_parameters: { ...rope, partial_rotary_factor: 1 } }),
    ).toBe(24);
    expect(rot({ ...config, partial_rotary_factor: 0.25, rope_parameters: rope })).toBe(6);
    const { partial_rotary_factor: _, ...none } = config;
    expect(rot({ ...none, rope_parameters: rope })).toBe(12);
    expect(() => rot({ ...config, partial_rotary_factor: 2, rope_parameters: rope })).toThrow(/partial_rotary_factor/);
  });

  test('routing, layers and tensors: sigmoid, 2 groups, renormalised × 2.5; layer 0 dense; q/k norm only if use_qk_norm', () => {
    const a = architectureFor(config, DIR);
    expect(a.routing).toMatchObject({
      scoring: 'sigmoid',
      topK: 2,
      normTopK: true,
      nGroup: 2,
      topkGroup: 1,
      groupScore: 'top2sum',
      groupMask: 'neg_inf',
      scalingFactor: 2.5,
      correctionBias: true,
    });
    expect(a.moeLayers).toEqual([1, 2]);
    expect(a.sharedMode).toBe('plain');
    expect(a.classify('model.layers.1.mlp.gate.e_score_correction_bias')).toEqual({ kind: 'router_bias', layer: 1 });
    expect(a.classify('model.layers.0.self_attn.q_proj.bias')).toEqual({
      kind: 'attn',
      layer: 0,
      name: 'q_proj',
      bias: true,
    });
    expect(a.classify('model.layers.0.self_attn.o_proj.bias')).toBeUndefined();
    const b = architectureFor({ ...config, use_qk_norm: false, attention_bias: false }, DIR);
    expect(b.schema().filter((s) => /q_norm|k_norm|proj\.bias/.test(s.name))).toEqual([]);
  });

  test('moe inspect: parameters, routing and layers as transformers counts them', () => {
    const r = inspect({ model: DIR });
    expect(r.params_total).toBe(golden.info.params_total);
    expect(r.moe_layers).toEqual([1, 2]);
    expect(r.params_experts).toBe(2 * 8 * 3 * 8 * 64);
    expect(r.shared_experts).toBe(1);
    expect(r.extra_tensors).toBe(0);
    expect(formatInspect(r)).toMatch(/routing\s+sigmoid.*2 groups, best 1/);
    const f = inspect({ model: FP8 });
    expect(f.params_total).toBe(golden.info.params_total);
    expect(f.fp8?.tensors).toBe(JSON.parse(fs.readFileSync(path.join(FP8, 'golden.json'), 'utf8')).fp8_weights);
  });

  test('prune refuses a count that breaks the 2 routing groups and names one that works', () => {
    const a = architectureFor(config, DIR);
    expect(resolveKeep(a, 6, undefined)).toBe(6);
    expect(() => resolveKeep(a, 5, undefined)).toThrow(/breaks the 2 routing groups.*/);
    expect(() => resolveKeep(a, 2, undefined)).toThrow(/at least 2/);
  });
});

/** The golden plus an MTP layer (model.layers.3.*: GLM-4.5's num_nextn_predict_layers) in a second shard. */
function withMtp(dir: string): string[] {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors', 'golden.safetensors'])
    fs.copyFileSync(path.join(DIR, f), path.join(dir, f));
  const p = 'model.layers.3.';
  const shapes: Record<string, number[]> = {
    [`${p}eh_proj.weight`]: [64, 128],
    [`${p}enorm.weight`]: [64],
    [`${p}hnorm.weight`]: [64],
    [`${p}shared_head.norm.weight`]: [64],
    [`${p}mlp.gate.weight`]: [8, 64],
    [`${p}mlp.gate.e_score_correction_bias`]: [8],
  };
  for (let e = 0; e < 8; e++) shapes[`${p}mlp.experts.${e}.down_proj.weight`] = [64, 8];
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((x, y) => x * y, 1) * 2;
    header[name] = { dtype: 'BF16', shape, data_offsets: [off, off + n] };
    off += n;
  }
  const data = new Uint8Array(off).map((_, i) => (i % 2 ? 0x3f : (i * 7) & 0xff)); // bf16 values around 1
  writeRaw(path.join(dir, 'mtp.safetensors'), header, data);
  const weightMap: Record<string, string> = {};
  for (const name of Object.keys(rawHeader(path.join(DIR, 'model.safetensors')).json))
    weightMap[name] = 'model.safetensors';
  for (const name of Object.keys(shapes)) weightMap[name] = 'mtp.safetensors';
  fs.writeFileSync(
    path.join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  return Object.keys(shapes);
}

describe('commands on the golden', () => {
  const work = tmpDir('moe-glm-');
  const stats = path.join(work, 'stats');
  const data = path.join(work, 'ids.json');
  beforeAll(async () => {
    const { ids, B, T } = golden;
    const rows = goldenWindows({ ids, B, T });
    fs.writeFileSync(data, JSON.stringify(rows));
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref' }, quiet);
  });

  test('prune keeps 3 experts of each routing group (per-group quotas) and the output re-opens', async () => {
    const out = path.join(work, 'pruned');
    const report = await prune({ model: DIR, stats, method: 'frequency', keep: 6, output: out, backend: 'ref' }, quiet);
    expect(report.layers.map((l) => l.layer)).toEqual([1, 2]);
    for (const l of report.layers) {
      expect(l.kept.filter((e) => e < 4)).toHaveLength(3);
      expect(l.kept.filter((e) => e >= 4)).toHaveLength(3);
    }
    const arch = loadArchitecture(openCheckpoint(out));
    expect(arch.numExperts).toBe(6);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).n_routed_experts).toBe(6);
  });

  test('quantize the FP8 golden (RTN 4-bit), packed and dequantized: both re-open and moe eval gives the same perplexity', async () => {
    const ppl: number[] = [];
    for (const format of ['packed', 'dequantized'] as const) {
      const out = path.join(work, `q-${format}`);
      await quantize({ model: FP8, output: out, bits: 4, method: 'rtn', format }, quiet);
      expect(loadArchitecture(openCheckpoint(out)).numExperts).toBe(8);
      const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
      expect(config.quantization_config?.quant_method).not.toBe('fp8');
      ppl.push((await evalCommand({ model: out, data, seqLen: golden.T, backend: 'ref' }, quiet)).perplexity);
    }
    // the dequantized weights are rounded to the checkpoint's bf16, the packed ones are not (README: within 1e-3 on
    // the trained fixture, test/reference/compressed.test.ts)
    expect(Math.abs(ppl[0] / ppl[1] - 1)).toBeLessThan(2e-3);
    expect(ppl[0]).not.toBe(ppl[1]);
  });

  test('an MTP layer is outside the layout: inspect counts it, eval ignores it, prune copies it bit-exact', async () => {
    const src = path.join(work, 'mtp');
    const names = withMtp(src);
    const r = inspect({ model: src });
    expect(r.extra_tensors).toBe(names.length);
    expect(r.num_layers).toBe(3);
    const base = await evalCommand({ model: DIR, data, seqLen: golden.T, backend: 'ref' }, quiet);
    const mtp = await evalCommand({ model: src, data, seqLen: golden.T, backend: 'ref' }, quiet);
    expect(mtp.perplexity).toBe(base.perplexity);
    const out = path.join(work, 'mtp-pruned');
    const mtpStats = path.join(work, 'mtp-stats');
    await calibrate({ model: src, output: mtpStats, data, seqLen: golden.T, backend: 'ref' }, quiet);
    await prune({ model: src, stats: mtpStats, method: 'frequency', keep: 6, output: out, backend: 'ref' }, quiet);
    const a = new TensorReader(openCheckpoint(src));
    const b = new TensorReader(openCheckpoint(out));
    for (const n of names) expect(Buffer.from(b.bytes(n))).toEqual(Buffer.from(a.bytes(n)));
    a.close();
    b.close();
  });
});
