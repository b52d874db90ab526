/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * AWQ (src/quant/awq.ts): the fold alone leaves an F32 model's logits unchanged within 1e-5 (and leaving one norm
 * unfolded does not: the check can fail) on nine architectures (shared experts gated or plain, qkv and expert biases,
 * fused experts, w1/w2/w3 names, zero-centred norms, linear attention, MLA, clip_qkv, dense layers); α = 0 is the
 * identity; the searched loss is never above plain quantization's, whose value is recomputed independently; the
 * search's fused round trip is bit-identical to rtn.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { fromFloat32 } from '../../src/io/dtype';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { plainWriter } from '../../src/model/fused';
import { loadArchitecture } from '../../src/model/registry';
import { AwqFold, searchAwq } from '../../src/quant/awq';
import { roundTripScaled } from '../../src/quant/awq-loss';
import { layerRanges } from '../../src/quant/awq-run';
import { scaleGroups } from '../../src/quant/awq-groups';
import { dequantize, outputError, quantizeRtn } from '../../src/quant/rtn';
import { Weighting } from '../../src/quant/weighting';
import { fixtureStats, makeSynth, quiet, ROOT, tmpDir } from '../helpers';

const be = new RefBackend();
const T = 16;
const WINDOWS = 2;

/** Token ids of `windows` windows of T, deterministic. */
function ids(vocab: number, windows: number, seed: number): number[][] {
  let x = seed;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648) % vocab;
  return [...Array(windows)].map(() => [...Array(T)].map(next));
}

async function logitsOf(dir: string, tokens: number[][]): Promise<Float32Array> {
  const ckpt = openCheckpoint(dir);
  const arch = loadArchitecture(ckpt);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(tokens.length * T, arch.vocab);
  await new ForwardPass(reader, arch, be).run(Int32Array.from(tokens.flat()), tokens.length, T, sink);
  reader.close();
  return logits;
}

/** The model with the fold applied and nothing quantized (`except`: tensors left as stored). */
function writeFolded(src: string, dst: string, fold: AwqFold, except: string[] = []): number {
  const ckpt = openCheckpoint(src);
  const arch = loadArchitecture(ckpt); // fused experts (gpt_oss) become per-expert views, written back fused
  const reader = new TensorReader(ckpt);
  fs.mkdirSync(dst);
  fs.copyFileSync(path.join(src, 'config.json'), path.join(dst, 'config.json'));
  const plan = [...ckpt.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
  const w = plainWriter(dst, arch, plan, { maxShardBytes: Number.MAX_SAFE_INTEGER });
  let folded = 0;
  for (const t of plan) {
    const f = fold.has(t.name) && !except.includes(t.name);
    folded += f ? 1 : 0;
    w.write(t.name, f ? fromFloat32(fold.weight(t.name, reader), t.dtype) : reader.bytes(t.name));
  }
  w.finish();
  reader.close();
  return folded;
}

/** max |a − b| / max |a|. */
function relDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return d / m;
}

const bitsOf = () => 3;

test("the search's fused round trip equals rtn.ts's dequantize(quantizeRtn(W·diag(s)))·diag(s)⁻¹ bit for bit", () => {
  const [rows, cols] = [7, 100]; // the last group of each row shorter than the group
  const w = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 1.7) * (1 + (i % 13)));
  const s = Float32Array.from({ length: cols }, (_, i) => 0.25 + ((i * 37) % 11) / 7);
  for (const spec of [
    { bits: 3, groupSize: 32, symmetric: false },
    { bits: 4, groupSize: 64, symmetric: true },
    { bits: 8, groupSize: 128, symmetric: false },
  ]) {
    const ws = w.map((v, i) => v * s[i % cols]);
    const ref = dequantize(quantizeRtn(ws, rows, cols, spec)).map((v, i) => v / s[i % cols]);
    expect(Buffer.from(roundTripScaled(w, rows, cols, s, spec).buffer).equals(Buffer.from(ref.buffer))).toBe(true);
  }
});

test('groups not formed are reported by layer ranges', () => {
  expect(layerRanges([7, 0, 1, 2, 5, 8])).toBe('0-2,5,7-8');
});

describe('AWQ fold on F32 models', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['qwen2_moe', {}], // shared expert with its gate, qkv biases, a dense layer, GQA 4 heads / 2 kv heads
    ['mixtral', {}], // block_sparse_moe w1/w2/w3
    ['qwen3_next', {}], // zero-centred norms, linear-attention layers (skipped), gated full attention
    ['olmoe', { clip_qkv: 8 }], // clip_qkv: v_o not formed
    ['deepseek_v3', {}], // MLA, plain shared experts, a dense first layer
    ['deepseek_v2', { q_lora_rank: null }], // MLA with q_proj
    ['deepseek_v32', {}], // MLA with the DSA indexer
    ['gpt_oss', {}], // fused experts with biases, router bias, sinks; clamped SwiGLU: up_down not formed
    ['glm4_moe', {}], // partial rotary, shared experts, a dense first layer
    ['minimax_m2', {}], // q/k norm over the whole projection
    ['qwen3_5_moe_text', {}], // zero-centred norms, linear attention, gated shared expert
    ['qwen3_moe', {}], // q/k norm per head
  ];
  test.each(cases)('%s: folded logits equal the original within 1e-5 relative', async (type, set) => {
    const dir = await makeSynth(type, path.join(tmpDir(), 'model'), { dtype: 'F32', set });
    const ckpt = openCheckpoint(dir);
    const arch = loadArchitecture(ckpt);
    const data = path.join(tmpDir(), 'ids.json');
    fs.writeFileSync(data, JSON.stringify(ids(arch.vocab, 4, 7)));
    const stats = path.join(tmpDir(), 'stats');
    await calibrate({ model: dir, output: stats, data, seqLen: T, backend: 'ref', hessians: true }, quiet);
    const s = new CalibrationStats(stats);
    const reader = new TensorReader(ckpt);
    const fold = await searchAwq(arch, reader, new Weighting(s, 1, 1.5), {
      groupSize: 32,
      symmetric: false,
      bitsOf: () => undefined, // the fold alone: no loss to measure, the consumers are not read
      alpha: 0.5,
      backend: be,
    });
    reader.close();
    s.close();
    const kinds = new Set(scaleGroups(arch).groups.map((g) => g.kind));
    // every group is searched, or has no calibrated inputs (an expert no token of the few windows chose)
    const unreached = fold.result.skipped.filter((k) => k.reason.startsWith('no calibrated inputs')).length;
    expect(fold.result.groups.length + unreached).toBe(scaleGroups(arch).groups.length);
    expect(fold.result.groups.length).toBeGreaterThan(unreached);
    const gqa = ['attn_in', 'v_o', 'mlp_in', 'up_down'];
    const want: Record<string, string[]> = {
      olmoe: ['attn_in', 'mlp_in', 'up_down'],
      deepseek_v3: ['attn_in', 'q_latent', 'kv_latent', 'v_o', 'mlp_in', 'up_down'],
      deepseek_v2: ['attn_in', 'kv_latent', 'v_o', 'mlp_in', 'up_down'], // q_proj without a q latent
      deepseek_v32: ['kv_latent', 'v_o', 'mlp_in', 'up_down'],
      gpt_oss: ['attn_in', 'v_o', 'mlp_in'],
    };
    expect(kinds).toEqual(new Set(want[type] ?? gqa));

    const tokens = ids(arch.vocab, WINDOWS, 11);
    const before = await logitsOf(dir, tokens);
    const out = path.join(tmpDir(), 'folded');
    expect(writeFolded(dir, out, fold)).toBeGreaterThan(10);
    expect(relDiff(before, await logitsOf(out, tokens))).toBeLessThanOrEqual(1e-5);
    // The check can fail: one norm left unfolded moves the logits by far more.
    const norm = `model.layers.${arch.numLayers - 1}.post_attention_layernorm.weight`;
    expect(fold.has(norm)).toBe(true);
    const broken = path.join(tmpDir(), 'broken');
    writeFolded(dir, broken, fold, [norm]);
    expect(relDiff(before, await logitsOf(broken, tokens))).toBeGreaterThan(1e-3);
  });
});

describe('AWQ search on the trained fixture (layer 0)', () => {
  const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
  const layer0 = (name: string) => name.startsWith('model.layers.0.');
  let stats: CalibrationStats;
  let reader: TensorReader;
  let onnx: OnnxBackend;
  const ckpt = openCheckpoint(MODEL);
  const arch = loadArchitecture(ckpt);
  beforeAll(async () => {
    stats = new CalibrationStats(await fixtureStats());
    reader = new TensorReader(ckpt);
    onnx = await OnnxBackend.create({ threads: 2 });
  }, 120_000);
  afterAll(async () => {
    await onnx.dispose();
    reader.close();
    stats.close();
  });
  const search = (alpha?: number) =>
    searchAwq(
      arch,
      reader,
      new Weighting(stats, 1, 1.5),
      { groupSize: 128, symmetric: false, bitsOf, alpha, backend: onnx },
      layer0,
    );

  test('α = 0 is the identity: no tensor changes', async () => {
    const fold = await search(0);
    expect(fold.result.groups.length).toBe(3 + 8); // attn_in, v_o, mlp_in, and up_down of each of the 8 experts
    for (const name of ckpt.tensors.keys()) expect(fold.has(name)).toBe(false);
  });

  test("the chosen loss is at most α = 0's, which equals plain RTN's output error recomputed", async () => {
    const fold = await search();
    const byKey = new Map(fold.result.groups.map((g) => [g.group, g]));
    for (const g of fold.result.groups) expect(g.loss).toBeLessThanOrEqual(g.loss_alpha0);
    expect(fold.result.groups.some((g) => g.alpha > 0 && g.loss < g.loss_alpha0)).toBe(true);
    // v_o's only consumer is o_proj: its α = 0 loss is ‖(RTN(W) − W)X‖² with the stats' Hessian.
    const o = 'model.layers.0.self_attn.o_proj.weight';
    const [rows, cols] = reader.ref(o).shape;
    const w = reader.f32(o);
    const dq = dequantize(quantizeRtn(w, rows, cols, { bits: 3, groupSize: 128 }));
    const plain = await outputError(w, dq, rows, cols, { full: stats.f32(`hessian/${o}`) }, onnx);
    expect(Math.abs(byKey.get('layers.0.v_o')!.loss_alpha0 - plain)).toBeLessThanOrEqual(1e-6 * plain);
    // The Hessian the quantizer sees is diag(s)⁻¹·H·diag(s)⁻¹ (o_proj's columns scaled by s when α > 0).
    if (byKey.get('layers.0.v_o')!.alpha > 0) expect(fold.has(o)).toBe(true);
  });
});
