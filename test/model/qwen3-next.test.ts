/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * Qwen3-Next against transformers 5.18 (fixtures/golden/qwen3_next, made by scripts/make_golden.py --only qwen3_next
 * from transformers' own save_pretrained: 3 Gated DeltaNet layers and 1 gated full-attention layer, bf16): router
 * top-k on every token and layer, logits and loss on the onnx and tfjs backends (forward-golden checks the
 * reference backend), each Qwen3-Next rule changes the logits, calibration observes the linear attention's
 * projections, and prune / merge / quantize outputs re-open.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { TfjsBackend, type TfLike } from '../../src/backend/tfjs';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { mergeMethodNames } from '../../src/merge/methods';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { PRESETS } from '../../src/synth/presets';
import { GOLDEN, makeSynth, quiet, rawHeader, tmpDir } from '../helpers';
import { lossOf, maxDiff } from '../golden-math';
import { goldenWindows } from './golden-case';

const DIR = path.join(GOLDEN, 'qwen3_next');
const info = require(path.join(DIR, 'golden.json'));

const golden = (() => {
  const r = new TensorReader(openTensorFile(path.join(DIR, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  const [B, T, V] = r.ref('logits').shape;
  const [L, N, k] = r.ref('router_topk').shape;
  const topk = Int32Array.from(new BigInt64Array(r.bytes('router_topk').slice().buffer), Number);
  const logits = r.f32('logits');
  r.close();
  return { ids, logits, B, T, V, L, N, k, topk };
})();

async function run(be: Backend, patch?: (a: Architecture) => void, router?: (l: number, e: Int32Array) => void) {
  const ckpt = openCheckpoint(DIR);
  const arch = loadArchitecture(ckpt);
  patch?.(arch);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(golden.B * golden.T, golden.V);
  const observer = router ? { router: (l: number, r: { experts: Int32Array }) => router(l, r.experts.slice()) } : {};
  await new ForwardPass(reader, arch, be).run(golden.ids, golden.B, golden.T, sink, observer);
  reader.close();
  return logits;
}

describe('the golden qwen3_next checkpoint', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  test("router top-k equals the top-k of transformers' router_logits on every token of every layer", async () => {
    const { N, k, L } = golden;
    expect([L, N, k]).toEqual([4, golden.B * golden.T, 2]);
    const got: Int32Array[] = [];
    const logits = await run(new RefBackend(), undefined, (l, e) => (got[l] = e));
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    for (let l = 0; l < L; l++)
      expect(Array.from(got[l])).toEqual(Array.from(golden.topk.subarray(l * N * k, (l + 1) * N * k)));
  });

  test('onnx backend (linear attention in JS, projections on onnx): logits within 1e-3, loss within 2e-4', async () => {
    const logits = await run(onnx);
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, golden.ids, golden.B, golden.T, golden.V) - info.loss)).toBeLessThanOrEqual(2e-4);
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
    const logits = await run(new TfjsBackend(tf as TfLike));
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, golden.ids, golden.B, golden.T, golden.V) - info.loss)).toBeLessThanOrEqual(2e-4);
  });

  test('without the (1 + weight) norms or the partial rotary, or with another gated-norm eps, the logits move > 0.05', async () => {
    const plainNorms = (a: Architecture) => Object.defineProperty(a, 'normOffset', { value: 0 });
    const fullRotary = (a: Architecture) => (a.config.partial_rotary_factor = 1);
    const otherEps = (a: Architecture) => {
      const spec = a.linearAttention.bind(a);
      a.linearAttention = (l) => {
        const s = spec(l);
        return s && { ...s, eps: 1 }; // a different gated-norm epsilon: the linear layers matter
      };
    };
    for (const patch of [plainNorms, fullRotary, otherEps]) {
      const logits = await run(new RefBackend(), patch);
      expect(maxDiff(logits, golden.logits)).toBeGreaterThan(0.05);
    }
  });
});

describe('the qwen3_next architecture', () => {
  test('moe inspect: parameters and routing as transformers counts them', () => {
    const r = inspect({ model: DIR });
    expect(r.params_total).toBe(info.params_total);
    expect(r.params_experts).toBe(4 * 8 * 3 * 8 * 64);
    expect(r.extra_tensors).toBe(0);
    expect(formatInspect(r)).toMatch(/routing\s+softmax, top-2, renormalised/);
  });

  test('reads layer_types (default: every full_attention_interval-th layer full) and the linear attention shape', () => {
    const a = architectureFor(require(path.join(DIR, 'config.json')), DIR);
    expect([0, 1, 2, 3].map((l) => a.linearAttention(l)?.kind)).toEqual([
      'gated_deltanet',
      'gated_deltanet',
      'gated_deltanet',
      undefined,
    ]);
    expect(a.linearAttention(0)).toMatchObject({ keyHeads: 2, valueHeads: 4, keyDim: 8, valueDim: 8, convKernel: 4 });
    expect(a.classify('model.layers.0.linear_attn.conv1d.weight')).toEqual({ kind: 'attn', layer: 0, name: 'conv1d' });
    expect(a.routing).toMatchObject({ scoring: 'softmax', topK: 2, normTopK: true });
    const { layer_types: _, ...rest } = PRESETS.qwen3_next;
    const d = architectureFor({ ...rest, num_hidden_layers: 8, full_attention_interval: 4 }, DIR);
    expect([...Array(8).keys()].filter((l) => !d.linearAttention(l))).toEqual([3, 7]);
  });

  test('moe synth --arch qwen3_next writes the tensors transformers saves, and the forward runs on them', async () => {
    const dir = await makeSynth('qwen3_next', path.join(tmpDir(), 'synth'), { dtype: 'BF16' });
    const names = Object.keys(rawHeader(path.join(dir, 'model.safetensors')).json);
    const saved = Object.keys(rawHeader(path.join(DIR, 'model.safetensors')).json);
    const strip = (l: number) => (n: string) =>
      n.startsWith(`model.layers.${l}.`) && !/experts\.[4-7]\./.test(n) ? [n.slice(`model.layers.${l}.`.length)] : [];
    expect(names.flatMap(strip(0)).sort()).toEqual(saved.flatMap(strip(0)).sort());
    expect(names.flatMap(strip(1)).sort()).toEqual(saved.flatMap(strip(3)).sort());
    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    const reader = new TensorReader(ckpt);
    // the (1 + weight) norms are written zero-centred, the gated norm around 1
    const mean = (n: string) => reader.f32(n).reduce((a, b) => a + b, 0) / reader.f32(n).length;
    expect(Math.abs(mean('model.layers.0.input_layernorm.weight'))).toBeLessThan(0.05);
    expect(Math.abs(mean('model.norm.weight'))).toBeLessThan(0.05);
    expect(Math.abs(mean('model.layers.0.linear_attn.norm.weight') - 1)).toBeLessThan(0.1);
    const { sink, logits } = fullLogits(2 * 12, arch.vocab);
    const ids = Int32Array.from({ length: 24 }, (_, i) => (i * 37) % arch.vocab);
    await new ForwardPass(reader, arch, new RefBackend()).run(ids, 2, 12, sink);
    reader.close();
    expect(logits.every(Number.isFinite)).toBe(true);
    expect(Math.max(...logits.map(Math.abs))).toBeGreaterThan(0);
  });
});

describe('commands on the golden', () => {
  const work = tmpDir('moe-qnext-');
  const stats = path.join(work, 'stats');
  const data = path.join(work, 'ids.json');
  beforeAll(async () => {
    const { ids, B, T } = golden;
    const rows = goldenWindows({ ids, B, T });
    fs.writeFileSync(data, JSON.stringify(rows));
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref', hessians: true }, quiet);
  });

  test('calibrate observes the linear attention projections, not conv1d / A_log / dt_bias', () => {
    const s = new CalibrationStats(stats);
    const p = 'imatrix/model.layers.0.linear_attn';
    for (const proj of ['in_proj_qkvz', 'in_proj_ba', 'out_proj'])
      expect(s.reader.has(`${p}.${proj}.weight`)).toBe(true);
    for (const t of ['conv1d.weight', 'A_log', 'dt_bias', 'norm.weight']) expect(s.reader.has(`${p}.${t}`)).toBe(false);
    expect(s.reader.has('imatrix/model.layers.3.self_attn.q_proj.weight')).toBe(true);
    s.reader.close();
  });

  const reopen = (dir: string) => {
    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    return { ckpt, arch };
  };

  test('prune and merge halve the experts; the linear attention is copied bit-exact', async () => {
    for (const [cmd, out] of [
      ['prune', path.join(work, 'pruned')],
      ['merge', path.join(work, 'merged')],
    ] as const) {
      const opts = { model: DIR, stats, ratio: 0.5, output: out, backend: 'ref' as const };
      await (cmd === 'prune'
        ? prune({ ...opts, method: 'frequency' }, quiet)
        : merge({ ...opts, method: mergeMethodNames()[0] }, quiet));
      const { ckpt, arch } = reopen(out);
      expect(arch.numExperts).toBe(4);
      const a = new TensorReader(ckpt);
      const b = new TensorReader(openCheckpoint(DIR));
      for (const t of ['linear_attn.conv1d.weight', 'linear_attn.A_log', 'linear_attn.in_proj_qkvz.weight'])
        expect(Buffer.from(a.f32(`model.layers.1.${t}`).buffer)).toEqual(
          Buffer.from(b.f32(`model.layers.1.${t}`).buffer),
        );
      a.close();
      b.close();
    }
  });

  test('quantize (GPTQ) writes a model that re-opens and keeps the conv and decay tensors', async () => {
    const out = path.join(work, 'q');
    await quantize({ model: DIR, output: out, bits: 4, method: 'gptq', stats, format: 'dequantized' }, quiet);
    const { ckpt } = reopen(out);
    const r = new TensorReader(ckpt);
    const b = new TensorReader(openCheckpoint(DIR));
    const name = 'model.layers.0.linear_attn.A_log';
    expect(Array.from(r.f32(name))).toEqual(Array.from(b.f32(name)));
    const q = 'model.layers.0.linear_attn.in_proj_qkvz.weight';
    expect(Buffer.from(r.f32(q).buffer)).not.toEqual(Buffer.from(b.f32(q).buffer));
    r.close();
    b.close();
  });
});
