/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * gpt-oss against transformers 5.18 (fixtures/golden/gpt_oss, made by scripts/make_golden.py from transformers' own
 * save_pretrained: experts stored fused, bf16): the router's top-k on every token and layer equals the top-k of
 * transformers' router_logits, logits and loss on the onnx backend (test/model/forward-golden.test.ts checks the
 * reference backend), each gpt-oss feature changes the logits (so the golden would catch its loss), the expert
 * output that observers see includes its down bias, and `moe synth --arch gpt_oss` writes the fused layout.
 */
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { linearRef, RefBackend, swigluRef } from '../../src/backend/ref';
import * as fs from 'node:fs';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import type { AttentionSpec } from '../../src/model/forward/attention';
import { ForwardObserver, ForwardPass, fullLogits } from '../../src/model/forward/model';
import type { Routing } from '../../src/model/forward/moe';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { ReconstructionProblem } from '../../src/prune/reconstruct';
import { PRESETS } from '../../src/synth/presets';
import { GOLDEN, makeSynth, quiet, rawHeader, tmpDir } from '../helpers';
import { lossOf, maxDiff } from '../golden-math';
import { goldenWindows } from './golden-case';

const DIR = path.join(GOLDEN, 'gpt_oss');
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

/** The golden model's logits on `be`, with `patch` applied to its architecture first. */
async function run(
  be: Backend,
  observer?: ForwardObserver,
  patch?: (a: Architecture) => void,
): Promise<{ logits: Float32Array; arch: Architecture; reader: TensorReader }> {
  const ckpt = openCheckpoint(DIR);
  const arch = loadArchitecture(ckpt);
  patch?.(arch);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(golden.B * golden.T, golden.V);
  await new ForwardPass(reader, arch, be).run(golden.ids, golden.B, golden.T, sink, observer);
  return { logits, arch, reader };
}

describe('the golden gpt_oss checkpoint', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  test("router top-k equals the top-k of transformers' router_logits on every token of every layer", async () => {
    const { N, k, L } = golden;
    expect([L, N, k]).toEqual([3, golden.B * golden.T, 4]);
    const got: Int32Array[] = [];
    const { reader } = await run(new RefBackend(), { router: (l, r) => (got[l] = r.experts.slice()) });
    reader.close();
    for (let l = 0; l < L; l++)
      expect(Array.from(got[l])).toEqual(Array.from(golden.topk.subarray(l * N * k, (l + 1) * N * k)));
  });

  test('onnx backend (its sink attention and glu graphs): logits within 1e-3, loss within 2e-4', async () => {
    const { logits, reader } = await run(onnx);
    reader.close();
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, golden.ids, golden.B, golden.T, golden.V) - info.loss)).toBeLessThanOrEqual(2e-4);
    const sessions = (onnx as unknown as { sessions: Map<string, unknown> }).sessions;
    expect([...sessions.keys()]).toEqual(expect.arrayContaining(['attentionSinks', 'glu']));
  });

  test('without the sliding window, the sinks or the SwiGLU clamp the logits move by more than 0.05', async () => {
    const noWindow = (a: Architecture) => (a.slidingWindow = () => undefined);
    const noSinks = (a: Architecture) => {
      const spec = a.attentionSpec.bind(a);
      a.attentionSpec = (r, eps): AttentionSpec => ({ ...spec(r, eps), sinks: false }) as AttentionSpec;
    };
    const noClamp = (a: Architecture) =>
      Object.defineProperty(a, 'expertGlu', { value: { alpha: 1.702, limit: Infinity } });
    for (const patch of [noWindow, noSinks, noClamp]) {
      const { logits, reader } = await run(onnx, undefined, patch);
      reader.close();
      expect(maxDiff(logits, golden.logits)).toBeGreaterThan(0.05);
    }
  });

  test('routing: the router bias is in the logits, the weights are the softmax of the top-k logits', async () => {
    let seen: { r: Routing; x: Float32Array; n: number } | undefined;
    const { arch, reader } = await run(new RefBackend(), {
      router: (l, r, x, n) => {
        if (l === 1) seen = { r, x: x.slice(), n };
      },
    });
    const { r, x, n } = seen!;
    const E = arch.numExperts;
    const k = arch.topK;
    const bias = reader.f32('model.layers.1.mlp.router.bias');
    expect(Math.max(...bias.map(Math.abs))).toBeGreaterThan(0.1);
    const want = linearRef(x, reader.f32('model.layers.1.mlp.router.weight'), n, arch.hidden, E, bias);
    expect(maxDiff(r.logits, want)).toBeLessThan(1e-6);
    // NAEE's reconstruction problem routes by the same logits
    const naee = await ReconstructionProblem.build(new RefBackend(), reader, arch, 1, x, n);
    expect(maxDiff((naee as unknown as { logits: Float32Array }).logits, want)).toBeLessThan(1e-6);
    for (let t = 0; t < n; t++) {
      const sel = Array.from(r.experts.subarray(t * k, (t + 1) * k), (e) => r.logits[t * E + e]);
      const z = sel.reduce((s, v) => s + Math.exp(v - sel[0]), 0);
      sel.forEach((v, j) => expect(r.weights[t * k + j]).toBeCloseTo(Math.exp(v - sel[0]) / z, 6));
    }
    reader.close();
  });

  test('an expert observer sees the expert output including its down bias; the block sums the weighted outputs', async () => {
    const layer = 2;
    let input: Float32Array | undefined;
    let routing: Routing | undefined;
    const outputs = new Map<number, { y: Float32Array; tokens: Int32Array; slots: Int32Array }>();
    let block: Float32Array | undefined;
    const { arch, reader } = await run(new RefBackend(), {
      router: (l, r, x) => {
        if (l === layer) [routing, input] = [r, x.slice()];
      },
      expert: (l, e, y, tokens, slots) => {
        if (l === layer) outputs.set(e, { y: y.slice(), tokens: tokens.slice(), slots: slots.slice() });
      },
      moe: (l, _x, out) => {
        if (l === layer) block = out.slice();
      },
    });
    const [h, I, k] = [arch.hidden, arch.expertWidth, arch.topK];
    const e = 5;
    const { y, tokens } = outputs.get(e)!;
    const x = new Float32Array(tokens.length * h);
    tokens.forEach((t, i) => x.set(input!.subarray(t * h, (t + 1) * h), i * h));
    const w = (p: 'gate' | 'up' | 'down') => reader.f32(arch.expertKey(layer, e, p));
    const b = (p: 'gate' | 'up' | 'down') => reader.f32(arch.expertBiasKey(layer, e, p)!);
    const gateUp = new Float32Array(2 * I * h);
    gateUp.set(w('gate'));
    gateUp.set(w('up'), I * h);
    const gateUpBias = new Float32Array(2 * I);
    gateUpBias.set(b('gate'));
    gateUpBias.set(b('up'), I);
    const clamp = { alpha: 1.702, limit: 7 };
    const want = swigluRef(x, gateUp, w('down'), tokens.length, h, I, { gateUpBias, downBias: b('down'), clamp });
    expect(maxDiff(y, want.out)).toBeLessThan(1e-5);
    const noBias = swigluRef(x, gateUp, w('down'), tokens.length, h, I, { gateUpBias, clamp });
    expect(Math.abs(y[0] - noBias.out[0] - b('down')[0])).toBeLessThan(1e-5);
    // token 0's block output: Σ_j weight_j · y_j over its k experts, down biases included
    const sum = new Float64Array(h);
    for (let j = 0; j < k; j++) {
      const o = outputs.get(routing!.experts[j])!;
      const i = Array.from(o.tokens).findIndex((t, m) => t === 0 && o.slots[m] === j);
      for (let c = 0; c < h; c++) sum[c] += routing!.weights[j] * o.y[i * h + c];
    }
    expect(maxDiff(block!.subarray(0, h), Float32Array.from(sum))).toBeLessThan(1e-5);
    reader.close();
  });
});

test("calibrate: REAP's score is g · ‖expert output‖ with the output's down bias; sinks get no input statistics", async () => {
  const work = tmpDir();
  const data = path.join(work, 'ids.json');
  const { ids, B, T } = golden;
  fs.writeFileSync(data, JSON.stringify(goldenWindows({ ids, B, T })));
  await calibrate({ model: DIR, output: path.join(work, 'stats'), data, seqLen: T }, quiet);
  const stats = new CalibrationStats(path.join(work, 'stats'));
  expect(stats.reader.has('imatrix/model.layers.0.self_attn.q_proj.weight')).toBe(true);
  expect(stats.reader.has('imatrix/model.layers.0.self_attn.sinks')).toBe(false);
  const reap = stats.vector(2, 'reap');
  stats.reader.close();
  // the same scores from the forward's observers, with and without the down bias
  const E = 8;
  const k = 4;
  const seen: { e: number; y: Float32Array; g: number[] }[] = [];
  let routing: Routing | undefined;
  const { arch, reader } = await run(new RefBackend(), {
    router: (l, r) => {
      if (l === 2) routing = r;
    },
    expert: (l, e, y, tokens, slots) => {
      if (l === 2) seen.push({ e, y: y.slice(), g: Array.from(tokens, (t, i) => routing!.weights[t * k + slots[i]]) });
    },
  });
  const [withBias, noBias, count] = [new Float64Array(E), new Float64Array(E), new Float64Array(E)];
  for (const { e, y, g } of seen) {
    const b = reader.f32(arch.expertBiasKey(2, e, 'down')!);
    const h = b.length;
    g.forEach((gi, i) => {
      let [sq, sq0] = [0, 0];
      for (let j = 0; j < h; j++) [sq, sq0] = [sq + y[i * h + j] ** 2, sq0 + (y[i * h + j] - b[j]) ** 2];
      withBias[e] += gi * Math.sqrt(sq);
      noBias[e] += gi * Math.sqrt(sq0);
      count[e]++;
    });
  }
  reader.close();
  for (let e = 0; e < E; e++) {
    expect(Math.abs(reap[e] / (withBias[e] / count[e]) - 1)).toBeLessThan(1e-5); // calibrate ran on onnx
    expect(Math.abs(reap[e] - noBias[e] / count[e])).toBeGreaterThan(1e-3);
  }
});

describe('the gpt_oss architecture', () => {
  test('moe inspect: the stored fused experts are counted as experts, the routing line names the router bias', () => {
    const r = inspect({ model: DIR });
    expect(r.params_total).toBe(info.params_total);
    // per layer: 8 experts × (gate, up [16, 64], down [64, 16] and their biases 16 + 16 + 64)
    expect(r.params_experts).toBe(3 * 8 * (3 * 16 * 64 + 96));
    expect(r.extra_tensors).toBe(0);
    expect(formatInspect(r)).toMatch(/routing\s+softmax, top-4, renormalised, router bias\n/);
  });

  test('reads layer_types, sliding_window and the routing rule from config.json', () => {
    const a = architectureFor(require(path.join(DIR, 'config.json')), DIR);
    expect([0, 1, 2].map((l) => a.slidingWindow(l))).toEqual([4, undefined, 4]);
    expect(a.routing).toMatchObject({ scoring: 'softmax', topK: 4, normTopK: true, logitBias: true });
    expect(a.routing.correctionBias).toBe(false);
    expect(a.correctionBiasKey(1)).toBe('model.layers.1.mlp.router.bias');
    expect(a.fusedExperts?.gateUp(1)).toBe('model.layers.1.mlp.experts.gate_up_proj');
    expect(a.schema().filter((s) => s.role.kind === 'expert_bias' && s.role.layer === 0)).toHaveLength(3 * 8);
    expect(a.classify('model.layers.0.mlp.experts.7.down_proj.bias')).toEqual({
      kind: 'expert_bias',
      layer: 0,
      expert: 7,
      proj: 'down',
    });
    // transformers' defaults: no layer_types → sliding on even layers; sliding_window null → no window
    const { layer_types: _, ...rest } = PRESETS.gpt_oss;
    const d = architectureFor({ ...rest, num_hidden_layers: 3 }, DIR);
    expect([0, 1, 2].map((l) => d.slidingWindow(l))).toEqual([8, undefined, 8]);
    expect(architectureFor({ ...PRESETS.gpt_oss, sliding_window: null }, DIR).slidingWindow(0)).toBeUndefined();
  });

  test('moe synth --arch gpt_oss writes the fused tensors transformers saves, and the forward runs on them', async () => {
    const dir = await makeSynth('gpt_oss', path.join(tmpDir(), 'synth'), { dtype: 'BF16' });
    const names = Object.keys(rawHeader(path.join(dir, 'model.safetensors')).json);
    const saved = Object.keys(rawHeader(path.join(DIR, 'model.safetensors')).json);
    const layer = (l: number) => (n: string) => n.startsWith(`model.layers.${l}.`);
    expect(names.filter(layer(0)).sort()).toEqual(saved.filter(layer(0)).sort());
    const json = rawHeader(path.join(dir, 'model.safetensors')).json;
    expect(json['model.layers.1.mlp.experts.gate_up_proj'].shape).toEqual([4, 64, 64]);
    expect(json['model.layers.1.mlp.experts.down_proj'].shape).toEqual([4, 32, 64]);
    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    const reader = new TensorReader(ckpt);
    const { sink, logits } = fullLogits(2 * 12, arch.vocab);
    const ids = Int32Array.from({ length: 24 }, (_, i) => (i * 37) % arch.vocab);
    await new ForwardPass(reader, arch, new RefBackend()).run(ids, 2, 12, sink);
    reader.close();
    expect(logits.every(Number.isFinite)).toBe(true);
    expect(Math.max(...logits.map(Math.abs))).toBeGreaterThan(0);
  });
});
