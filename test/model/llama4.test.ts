/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * Llama 4's text model against transformers 5.18 (fixtures/golden/llama4_text; scripts/make_golden.py --only
 * llama4_text): router top-k on every token of both MoE layers, logits and loss on the ref and onnx backends, each
 * Llama 4 rule moves the logits (chunked attention, the NoPE layer's temperature, input-scaled experts, interleaved
 * rotary, the weightless q/k norm), the config rules, and the commands: REAP and NAEE prune (NAEE's reconstruction
 * loss with input-scaled experts against a direct computation), merge (--refit refused), quantize.
 * transformers' perplexity of the pruned / merged / GPTQ outputs: test/reference/architectures.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { CheckpointError, UsageError } from '../../src/errors';
import { CalibrationStats } from '../../src/calib/stats';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { loadExpert } from '../../src/model/experts';
import type { GqaSpec, LayerAttention } from '../../src/model/forward/attention';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { concatRows, sigmoid } from '../../src/model/forward/ops';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { ReconstructionProblem } from '../../src/prune/reconstruct';
import { expectLogitsMatch, expectRouterMatch, goldenWindows, readGolden, runGolden } from './golden-case';
import { GOLDEN, quiet, rawHeader, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'llama4_text');

const golden = () => readGolden(DIR);

const run = (be: Backend, patch?: (a: Architecture) => void) => runGolden(DIR, be, { patch });

describe('the golden llama4_text checkpoint', () => {
  let onnx: OnnxBackend;
  beforeAll(async () => {
    onnx = await OnnxBackend.create({ threads: 2 });
  });
  afterAll(async () => {
    await onnx.dispose();
  });

  test("router top-1 equals transformers' on every token of both MoE layers; logits within 1e-3, loss within 2e-4", async () => {
    const r = await run(new RefBackend());
    expect([r.g.L, r.g.N, r.g.k]).toEqual([2, 32, 1]);
    expectRouterMatch(r, [1, 3]);
    expectLogitsMatch(r);
  });

  test('onnx backend (its masks carry the chunks): logits within 1e-3, loss within 2e-4', async () => {
    expectLogitsMatch(await run(onnx));
  });

  test('each Llama 4 rule moves the logits by more than 10× the tolerance', async () => {
    const layer = (change: Partial<LayerAttention>) => (a: Architecture) => {
      const own = a.layerAttention.bind(a);
      a.layerAttention = (l) => ({ ...own(l), ...change });
    };
    const spec = (change: Partial<GqaSpec>) => (a: Architecture) => {
      const own = a.attentionSpec.bind(a);
      a.attentionSpec = (rope, eps) => ({ ...(own(rope, eps) as GqaSpec), ...change });
    };
    const outputScaled = (a: Architecture) =>
      Object.defineProperty(a, 'routing', { value: { ...a.routing, inputScaled: false } });
    const g = golden();
    const moved: number[] = [];
    for (const patch of [
      layer({ chunk: undefined }),
      spec({ temperature: undefined }),
      spec({ interleaved: false }),
      spec({ l2QkNorm: false }),
      outputScaled,
    ]) {
      const { logits } = await run(new RefBackend(), patch);
      moved.push(maxDiff(logits, g.logits));
    }
    for (const m of moved) expect(m).toBeGreaterThan(1e-2);
    // transformers measured the first two on the same weights (golden.json checks)
    expect(moved[0]).toBeCloseTo(g.info.checks.max_abs_logit_change_with_attention_chunk_size_64, 2);
    expect(moved[1]).toBeCloseTo(g.info.checks.max_abs_logit_change_with_attn_temperature_tuning_False, 2);
  });

  test('config: MoE and NoPE layers, chunking and the temperature as transformers 5.18 reads them', () => {
    const base = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
    const { moe_layers: _m, no_rope_layers: _n, layer_types: _t, ...hub } = base;
    const a = architectureFor(hub, DIR);
    expect(a.moeLayers).toEqual([1, 3]); // interleave_moe_layer_step 2
    expect([0, 1, 2, 3].map((l) => a.layerAttention(l))).toEqual([
      { rope: true, chunk: 8 },
      { rope: true, chunk: 8 },
      { rope: true, chunk: 8 },
      { rope: false, chunk: undefined },
    ]);
    // Scout: every layer MoE; an empty no_rope_layers is the default; attention_chunk_size null: no chunks
    const scout = architectureFor({ ...hub, interleave_moe_layer_step: 1, no_rope_layers: [] }, DIR);
    expect(scout.moeLayers).toEqual([0, 1, 2, 3]);
    expect(architectureFor({ ...hub, attention_chunk_size: null }, DIR).layerAttention(0).chunk).toBeUndefined();
    // the released configs write attn_temperature_tuning 4 (true), and Maverick use_qk_norm false
    const spec = (c: Record<string, unknown>) => architectureFor(c, DIR).attentionSpec({}, 1e-5) as GqaSpec;
    expect(spec({ ...hub, attn_temperature_tuning: 4 }).temperature).toEqual({ floorScale: 4, attnScale: 0.1 });
    expect(spec({ ...hub, attn_temperature_tuning: false }).temperature).toBeUndefined();
    expect(spec({ ...hub, use_qk_norm: false }).l2QkNorm).toBe(false);
    for (const [set, msg] of [
      [{ hidden_act: 'gelu' }, 'hidden_act "gelu" is not silu'],
      [{ layer_types: ['sliding_attention', 'full_attention', 'full_attention', 'full_attention'] }, 'layer_types[0]'],
      [{ no_rope_layers: [1, 0] }, 'no_rope_layers lists 2 of 4 layers'],
    ] as const) {
      const make = () => architectureFor({ ...hub, ...set }, DIR);
      expect(make).toThrow(CheckpointError);
      expect(make).toThrow(msg);
    }
  });

  test('moe inspect: parameters, routing and the fused experts read as per-expert views', () => {
    const r = inspect({ model: DIR });
    expect(r.params_total).toBe(golden().info.params_total);
    expect(r.params_experts).toBe(2 * 8 * 3 * 16 * 32);
    expect(r.moe_layers).toEqual([1, 3]);
    expect(formatInspect(r)).toMatch(/routing\s+sigmoid, top-1/);
    const a = architectureFor(JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8')), DIR);
    expect(a.classify('model.layers.0.feed_forward.gate_proj.weight')).toEqual({
      kind: 'dense_mlp',
      layer: 0,
      proj: 'gate',
    });
    expect(a.classify('model.layers.1.feed_forward.shared_expert.down_proj.weight')).toEqual({
      kind: 'shared',
      layer: 1,
      proj: 'down',
    });
    expect(a.expertKey(1, 3, 'up')).toBe('model.layers.1.feed_forward.experts.3.up_proj.weight');
  });
});

describe('commands on the llama4_text golden', () => {
  const work = tmpDir('moe-llama4-');
  const data = path.join(work, 'ids.json');
  const stats = path.join(work, 'stats');
  beforeAll(async () => {
    const { ids, B, T } = golden();
    const rows = goldenWindows({ ids, B, T });
    fs.writeFileSync(data, JSON.stringify([...rows, rows[0].slice().reverse(), rows[1].slice().reverse()]));
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref', naeeTokens: 64 }, quiet);
  });
  const evalOf = async (model: string) => (await evalCommand({ model, data, seqLen: 16 }, quiet)).perplexity;

  test("REAP scores each expert's mean ‖E(σ·x)‖: the routing weight is inside the output, not applied twice", async () => {
    const s = new CalibrationStats(stats);
    const ckpt = openCheckpoint(DIR);
    const arch = loadArchitecture(ckpt); // the fused experts' per-expert views
    const reader = new TensorReader(ckpt);
    const be = new RefBackend();
    // recompute layer 1's REAP from its calibrated MoE inputs (the NAEE samples hold every calibration token here)
    const x = s.f32('layers.1.moe.naee_in');
    const n = x.length / arch.hidden;
    expect(n).toBe(64);
    const logits = await be.linear(x, reader.f32(arch.routerKey(1)), n, arch.hidden, 8);
    const sum = new Float64Array(8);
    const count = new Float64Array(8);
    for (let t = 0; t < n; t++) {
      let e = 0;
      for (let j = 1; j < 8; j++) if (logits[t * 8 + j] > logits[t * 8 + e]) e = j;
      const ex = loadExpert(reader, arch, 1, e);
      const xs = x.slice(t * arch.hidden, (t + 1) * arch.hidden).map((v) => v * sigmoid(logits[t * 8 + e]));
      const y = (await be.swiglu(xs, concatRows(ex.gate, ex.up), ex.down, 1, arch.hidden, 16, false)).out;
      sum[e] += Math.hypot(...y);
      count[e]++;
    }
    const reap = s.f64('layers.1.moe.reap');
    for (let e = 0; e < 8; e++) expect(reap[e]).toBeCloseTo(count[e] ? sum[e] / count[e] : 0, 4);
    expect(Array.from(s.f64('layers.1.moe.count'))).toEqual(Array.from(count));
    reader.close();
  });

  test('NAEE: the reconstruction loss of input-scaled experts equals ‖z − z′‖² computed directly', async () => {
    const s = new CalibrationStats(stats);
    const ckpt = openCheckpoint(DIR);
    const arch = loadArchitecture(ckpt); // the fused experts' per-expert views
    const reader = new TensorReader(ckpt);
    const be = new RefBackend();
    const x = s.f32('layers.3.moe.naee_in');
    const n = x.length / arch.hidden;
    const h = arch.hidden;
    const p = await ReconstructionProblem.build(be, reader, arch, 3, x, n);
    expect(p.loss([0, 1, 2, 3, 4, 5, 6, 7])).toBeLessThan(1e-9);
    const logits = await be.linear(x, reader.f32(arch.routerKey(3)), n, h, 8);
    const keep = [0, 2, 5];
    const out = async (t: number, allowed: number[]) => {
      const e = allowed.reduce((b, j) => (logits[t * 8 + j] > logits[t * 8 + b] ? j : b), allowed[0]);
      const ex = loadExpert(reader, arch, 3, e);
      const xs = x.slice(t * h, (t + 1) * h).map((v) => v * sigmoid(logits[t * 8 + e]));
      return (await be.swiglu(xs, concatRows(ex.gate, ex.up), ex.down, 1, h, 16, false)).out;
    };
    let want = 0;
    for (let t = 0; t < n; t++) {
      const z = await out(t, [0, 1, 2, 3, 4, 5, 6, 7]);
      const zk = await out(t, keep);
      for (let j = 0; j < h; j++) want += (z[j] - zk[j]) ** 2;
    }
    expect(want / n).toBeGreaterThan(1e-3);
    expect(p.loss(keep)).toBeCloseTo(want / n, 5);
    reader.close();
  });

  test('prune (reap, naee) writes fused experts of the kept rows; merge; --refit refused; quantize', async () => {
    const srcCkpt = openCheckpoint(DIR);
    loadArchitecture(srcCkpt);
    const src = new TensorReader(srcCkpt);
    const pruned = path.join(work, 'pruned');
    const report = await prune({ model: DIR, stats, method: 'reap', keep: 5, output: pruned, backend: 'ref' }, quiet);
    const ckpt = openCheckpoint(pruned);
    expect(ckpt.config.num_local_experts).toBe(5);
    // stored fused as transformers stores them (before loadArchitecture puts per-expert views in their place)
    expect(ckpt.tensors.get('model.layers.1.feed_forward.experts.gate_up_proj')!.shape).toEqual([5, 32, 32]);
    expect(ckpt.tensors.get('model.layers.3.feed_forward.experts.down_proj')!.shape).toEqual([5, 16, 32]);
    loadArchitecture(ckpt);
    const r = new TensorReader(ckpt);
    const experts = report.layers.find((l) => l.layer === 1)!.kept;
    expect(experts).toHaveLength(5);
    experts.forEach((e, i) => {
      expect(r.f32(`model.layers.1.feed_forward.experts.${i}.gate_proj.weight`)).toEqual(
        src.f32(`model.layers.1.feed_forward.experts.${e}.gate_proj.weight`),
      );
      expect(r.f32('model.layers.1.feed_forward.router.weight').subarray(i * 32, (i + 1) * 32)).toEqual(
        src.f32('model.layers.1.feed_forward.router.weight').subarray(e * 32, (e + 1) * 32),
      );
    });
    r.close();
    src.close();
    const base = await evalOf(DIR);
    expect(Number.isFinite(await evalOf(pruned))).toBe(true);

    const naee = path.join(work, 'naee');
    const rep = await prune({ model: DIR, stats, method: 'naee', keep: 6, output: naee, backend: 'ref' }, quiet);
    expect(rep.layers.every((l) => l.reconstruction_loss! >= 0)).toBe(true);

    const merged = path.join(work, 'merged');
    await merge({ model: DIR, stats, method: 'msmoe', keep: 4, output: merged, backend: 'ref' }, quiet);
    expect(openCheckpoint(merged).tensors.get('model.layers.3.feed_forward.experts.gate_up_proj')!.shape[0]).toBe(4);
    expect(Number.isFinite(await evalOf(merged))).toBe(true);
    const refit = merge(
      { model: DIR, stats, method: 'msmoe', keep: 4, refit: true, output: path.join(work, 'r') },
      quiet,
    );
    await expect(refit).rejects.toThrow(UsageError);
    await expect(refit).rejects.toThrow('--refit is not defined for experts that take the routing weight');
    expect(fs.existsSync(path.join(work, 'r'))).toBe(false);

    const q = path.join(work, 'q8');
    await quantize({ model: DIR, stats, output: q, bits: 8, method: 'rtn', format: 'dequantized' }, quiet);
    expect(Math.abs((await evalOf(q)) / base - 1)).toBeLessThan(5e-3);
  });
});

describe('Llama 4 with its vision tower (fixtures/golden/llama4: Llama4ForConditionalGeneration)', () => {
  const NESTED = path.join(GOLDEN, 'llama4');
  const work = tmpDir('moe-llama4-nested-');
  const names = (dir: string) =>
    Object.keys(rawHeader(path.join(dir, 'model.safetensors')).json).filter((n) => n !== '__metadata__');

  test("the text model read from language_model.*: router top-1 and logits equal transformers'", async () => {
    const r = new TensorReader(openTensorFile(path.join(NESTED, 'golden.safetensors')));
    const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
    const want = r.f32('logits');
    const topk = Int32Array.from(new BigInt64Array(r.bytes('router_topk').slice().buffer), Number);
    const [B, T, V] = r.ref('logits').shape;
    r.close();
    const ckpt = openCheckpoint(NESTED);
    expect(ckpt.config.model_type).toBe('llama4_text');
    expect(ckpt.tensors.has('lm_head.weight')).toBe(true);
    expect(ckpt.tensors.has('model.layers.1.feed_forward.experts.gate_up_proj')).toBe(true);
    const arch = loadArchitecture(ckpt);
    const reader = new TensorReader(ckpt);
    const { sink, logits } = fullLogits(B * T, V);
    const experts: Int32Array[] = [];
    await new ForwardPass(reader, arch, new RefBackend()).run(ids, B, T, sink, {
      router: (_l, rt) => experts.push(rt.experts.slice()),
    });
    reader.close();
    expect(experts.map((e) => Array.from(e))).toEqual(
      [0, 1].map((i) => Array.from(topk.subarray(i * 32, i * 32 + 32))),
    );
    expect(maxDiff(logits, want)).toBeLessThanOrEqual(1e-3);
  });

  test('prune stores the names and config back: the tower copied, only text_config rewritten', async () => {
    const stats = path.join(work, 'stats');
    const data = path.join(work, 'ids.json');
    fs.writeFileSync(data, JSON.stringify([[...Array(16).keys()].map((i) => (i * 37) % 250)]));
    await calibrate({ model: NESTED, output: stats, data, seqLen: 16, backend: 'ref' }, quiet);
    const out = path.join(work, 'pruned');
    await prune({ model: NESTED, stats, method: 'reap', keep: 6, output: out, backend: 'ref' }, quiet);
    const before = names(NESTED);
    const after = names(out);
    expect(after.sort()).toEqual(before.sort());
    expect(after).toContain('language_model.lm_head.weight');
    const src = rawHeader(path.join(NESTED, 'model.safetensors')).json;
    const got = rawHeader(path.join(out, 'model.safetensors')).json;
    expect(got['language_model.model.layers.1.feed_forward.experts.gate_up_proj'].shape).toEqual([6, 32, 32]);
    const tower = before.filter((n) => !n.startsWith('language_model.'));
    expect(tower.length).toBeGreaterThan(5);
    const a = new TensorReader(openTensorFile(path.join(NESTED, 'model.safetensors')));
    const b = new TensorReader(openTensorFile(path.join(out, 'model.safetensors')));
    for (const n of tower) {
      expect(got[n].shape).toEqual(src[n].shape);
      expect(Buffer.from(b.bytes(n)).equals(Buffer.from(a.bytes(n)))).toBe(true);
    }
    a.close();
    b.close();
    const inCfg = JSON.parse(fs.readFileSync(path.join(NESTED, 'config.json'), 'utf8'));
    const outCfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(outCfg.text_config.num_local_experts).toBe(6);
    expect({ ...outCfg, text_config: undefined }).toEqual({ ...inCfg, text_config: undefined });
    expect({ ...outCfg.text_config, num_local_experts: 8 }).toEqual(inCfg.text_config);
  });
});
