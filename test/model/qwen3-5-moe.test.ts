/**
 * Qwen3.5-MoE's text model against transformers 5.18 (fixtures/golden/qwen3_5_moe_text, made by
 * scripts/make_golden.py --only qwen3_5_moe_text from Qwen3_5MoeForCausalLM's own save_pretrained: 3 Gated DeltaNet
 * layers with separate in_proj_qkv / in_proj_z / in_proj_b / in_proj_a, 1 gated full-attention layer, bf16): router
 * top-k on every token and layer, inspect, the split projections' layout, synth, calibration and prune.
 * forward-golden checks logits and loss on the reference backend. fixtures/golden/qwen3_5_moe holds the same text
 * model under text_config beside a vision tower: read as its text model, and prune / merge / quantize keep the tower.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { quantize } from '../../src/commands/quantize';
import { mergeMethodNames } from '../../src/merge/methods';
import { prune } from '../../src/commands/prune';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { GOLDEN, makeSynth, quiet, rawHeader, tmpDir } from '../helpers';
import { maxDiff } from '../golden-math';
import { goldenWindows } from './golden-case';

const DIR = path.join(GOLDEN, 'qwen3_5_moe_text');
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

async function run(patch?: (a: Architecture) => void, router?: (l: number, e: Int32Array) => void) {
  const ckpt = openCheckpoint(DIR);
  const arch = loadArchitecture(ckpt);
  patch?.(arch);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(golden.B * golden.T, golden.V);
  const observer = router ? { router: (l: number, r: { experts: Int32Array }) => router(l, r.experts.slice()) } : {};
  await new ForwardPass(reader, arch, new RefBackend()).run(golden.ids, golden.B, golden.T, sink, observer);
  reader.close();
  return logits;
}

describe('the golden qwen3_5_moe_text checkpoint', () => {
  test("router top-k equals the top-k of transformers' router_logits on every token of every layer", async () => {
    const { N, k, L } = golden;
    expect([L, N, k]).toEqual([4, golden.B * golden.T, 2]);
    const got: Int32Array[] = [];
    const logits = await run(undefined, (l, e) => (got[l] = e));
    expect(maxDiff(logits, golden.logits)).toBeLessThanOrEqual(1e-3);
    for (let l = 0; l < L; l++)
      expect(Array.from(got[l])).toEqual(Array.from(golden.topk.subarray(l * N * k, (l + 1) * N * k)));
  });

  test('without renormalising the top-k, the (1 + weight) norms or the partial rotary, the logits move > 0.05', async () => {
    const unnormalised = (a: Architecture) =>
      Object.defineProperty(a, 'routing', { value: { ...a.routing, normTopK: false } });
    const plainNorms = (a: Architecture) => Object.defineProperty(a, 'normOffset', { value: 0 });
    const fullRotary = (a: Architecture) => {
      a.config.partial_rotary_factor = 1;
      (a.config.rope_parameters as Record<string, unknown>).partial_rotary_factor = 1;
    };
    for (const patch of [unnormalised, plainNorms, fullRotary]) {
      const logits = await run(patch);
      expect(maxDiff(logits, golden.logits)).toBeGreaterThan(0.05);
    }
  });
});

describe('the qwen3_5_moe_text architecture', () => {
  test('moe inspect: parameters and routing as transformers counts them', () => {
    const r = inspect({ model: DIR });
    expect(r.params_total).toBe(info.params_total);
    expect(r.params_experts).toBe(4 * 8 * 3 * 8 * 64);
    expect(r.extra_tensors).toBe(0);
    expect(formatInspect(r)).toMatch(/routing\s+softmax, top-2, renormalised/);
  });

  test('the separate projections, MoE on every layer, renormalised top-k whatever norm_topk_prob says', () => {
    const config = require(path.join(DIR, 'config.json'));
    const a = architectureFor({ ...config, norm_topk_prob: false, mlp_only_layers: [1] }, DIR);
    expect([0, 1, 2, 3].map((l) => a.linearAttention(l)?.split)).toEqual([true, true, true, undefined]);
    expect([0, 1, 2, 3].map((l) => a.isMoeLayer(l))).toEqual([true, true, true, true]);
    expect(a.routing).toMatchObject({ scoring: 'softmax', topK: 2, normTopK: true });
    const p = 'model.layers.0.linear_attn';
    for (const name of ['in_proj_qkv', 'in_proj_z', 'in_proj_b', 'in_proj_a'])
      expect(a.classify(`${p}.${name}.weight`)).toEqual({ kind: 'attn', layer: 0, name });
    expect(a.classify(`${p}.in_proj_qkvz.weight`)).toBeUndefined();
    // llama.cpp's qwen35moe (test/gguf/qwen-hybrid-gguf.test.ts): in_proj_qkv as attn_qkv, in_proj_b as ssm_beta
    const names = a.ggufMapping(a.attentionSpec({}, 1e-6), {})!.attentionTensors(0, 'blk.0');
    expect(names.map((t) => [t.name, t.from.slice(p.length + 1)])).toEqual(
      expect.arrayContaining([
        ['blk.0.attn_qkv.weight', 'in_proj_qkv.weight'],
        ['blk.0.ssm_beta.weight', 'in_proj_b.weight'],
      ]),
    );
  });

  test('moe synth --arch qwen3_5_moe_text writes the tensors transformers saves, and the forward runs', async () => {
    const dir = await makeSynth('qwen3_5_moe_text', path.join(tmpDir(), 'synth'), { dtype: 'BF16' });
    const names = Object.keys(rawHeader(path.join(dir, 'model.safetensors')).json);
    const saved = Object.keys(rawHeader(path.join(DIR, 'model.safetensors')).json);
    const strip = (l: number) => (n: string) =>
      n.startsWith(`model.layers.${l}.`) && !/experts\.[4-7]\./.test(n) ? [n.slice(`model.layers.${l}.`.length)] : [];
    expect(names.flatMap(strip(0)).sort()).toEqual(saved.flatMap(strip(0)).sort());
    expect(names.flatMap(strip(1)).sort()).toEqual(saved.flatMap(strip(3)).sort());
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

describe('commands on the golden', () => {
  const work = tmpDir('moe-q35-');
  const stats = path.join(work, 'stats');
  const data = path.join(work, 'ids.json');
  beforeAll(async () => {
    const { ids, B, T } = golden;
    const rows = goldenWindows({ ids, B, T });
    fs.writeFileSync(data, JSON.stringify(rows));
    await calibrate({ model: DIR, output: stats, data, seqLen: T, backend: 'ref', hessians: true }, quiet);
  });

  test('calibrate observes the four separate projections and out_proj', () => {
    const s = new CalibrationStats(stats);
    const p = 'imatrix/model.layers.0.linear_attn';
    for (const proj of ['in_proj_qkv', 'in_proj_z', 'in_proj_b', 'in_proj_a', 'out_proj'])
      expect(s.reader.has(`${p}.${proj}.weight`)).toBe(true);
    for (const t of ['in_proj_qkvz.weight', 'conv1d.weight', 'A_log']) expect(s.reader.has(`${p}.${t}`)).toBe(false);
    s.reader.close();
  });

  test('prune halves the experts on every layer; the linear attention is copied bit-exact', async () => {
    const out = path.join(work, 'pruned');
    await prune({ model: DIR, stats, ratio: 0.5, output: out, backend: 'ref', method: 'frequency' }, quiet);
    const ckpt = openCheckpoint(out);
    expect(loadArchitecture(ckpt).numExperts).toBe(4);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'))).toMatchObject({
      model_type: 'qwen3_5_moe_text',
      num_experts: 4,
    });
    const a = new TensorReader(ckpt);
    const b = new TensorReader(openCheckpoint(DIR));
    for (const t of ['conv1d.weight', 'in_proj_qkv.weight', 'in_proj_z.weight', 'in_proj_a.weight'])
      expect(Buffer.from(a.f32(`model.layers.1.linear_attn.${t}`).buffer)).toEqual(
        Buffer.from(b.f32(`model.layers.1.linear_attn.${t}`).buffer),
      );
    a.close();
    b.close();
  });
});

describe('qwen3_5_moe: the text model under text_config beside a vision tower', () => {
  const NESTED = path.join(GOLDEN, 'qwen3_5_moe');
  const work = tmpDir('moe-q35-nested-');
  const stats = path.join(work, 'stats');
  const stored = (dir: string) => rawHeader(path.join(dir, 'model.safetensors')).json as Record<string, unknown>;
  const outer = JSON.parse(fs.readFileSync(path.join(NESTED, 'config.json'), 'utf8'));
  beforeAll(async () => {
    const data = path.join(work, 'ids.json');
    const { ids, B, T } = golden;
    fs.writeFileSync(data, JSON.stringify(goldenWindows({ ids, B, T })));
    await calibrate({ model: NESTED, output: stats, data, seqLen: T, backend: 'ref' }, quiet);
  });

  test('is read as its text model: text_config, model.language_model.* shown as model.*, the tower kept aside', () => {
    const ckpt = openCheckpoint(NESTED);
    expect(outer.model_type).toBe('qwen3_5_moe');
    expect(ckpt.config).toMatchObject({ model_type: 'qwen3_5_moe_text', num_experts: 8, hidden_size: 64 });
    expect(ckpt.tensors.has('model.layers.0.linear_attn.in_proj_qkv.weight')).toBe(true);
    expect([...ckpt.tensors.keys()].filter((n) => n.includes('language_model'))).toEqual([]);
    const r = inspect({ model: NESTED });
    const visual = Object.keys(stored(NESTED)).filter((n) => n.startsWith('model.visual.'));
    expect(visual.length).toBeGreaterThan(0);
    expect(r.extra_tensors).toBe(visual.length);
    expect(r.params_total).toBe(info.params_total + (require(path.join(NESTED, 'golden.json')).params_total - 140432));
  });

  test("router top-k equals transformers' on every token of every layer (the language model alone on text)", async () => {
    const r = new TensorReader(openTensorFile(path.join(NESTED, 'golden.safetensors')));
    const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
    const [B, T, V] = r.ref('logits').shape;
    const [L, N, k] = r.ref('router_topk').shape;
    const want = Int32Array.from(new BigInt64Array(r.bytes('router_topk').slice().buffer), Number);
    const wantLogits = r.f32('logits');
    r.close();
    const ckpt = openCheckpoint(NESTED);
    const reader = new TensorReader(ckpt);
    const { sink, logits } = fullLogits(B * T, V);
    const got: Int32Array[] = [];
    const observer = { router: (l: number, x: { experts: Int32Array }) => (got[l] = x.experts.slice()) };
    await new ForwardPass(reader, loadArchitecture(ckpt), new RefBackend()).run(ids, B, T, sink, observer);
    reader.close();
    expect(maxDiff(logits, wantLogits)).toBeLessThanOrEqual(1e-3);
    for (let l = 0; l < L; l++)
      expect(Array.from(got[l])).toEqual(Array.from(want.subarray(l * N * k, (l + 1) * N * k)));
  });

  for (const cmd of ['prune', 'merge', 'quantize'] as const) {
    test(`${cmd}: the tower and lm_head copied bit-exact under their names, only text_config's expert count rewritten`, async () => {
      const out = path.join(work, cmd);
      if (cmd === 'prune')
        await prune({ model: NESTED, stats, ratio: 0.5, output: out, backend: 'ref', method: 'frequency' }, quiet);
      else if (cmd === 'merge')
        await merge(
          { model: NESTED, stats, ratio: 0.5, output: out, backend: 'ref', method: mergeMethodNames()[0] },
          quiet,
        );
      else await quantize({ model: NESTED, output: out, bits: 4, method: 'rtn', format: 'dequantized' }, quiet);
      const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
      const experts = cmd === 'quantize' ? 8 : 4;
      expect(config).toEqual({ ...outer, text_config: { ...outer.text_config, num_experts: experts } });
      const names = Object.keys(stored(out)).filter((n) => n !== '__metadata__');
      const before = Object.keys(stored(NESTED)).filter((n) => n !== '__metadata__');
      const lm = (n: string) => n.startsWith('model.language_model.');
      expect(names.filter((n) => !lm(n)).sort()).toEqual(before.filter((n) => !lm(n)).sort());
      expect(names.filter(lm).length).toBe(before.filter(lm).length - (8 - experts) * 4 * 3);
      const a = new TensorReader(openTensorFile(path.join(out, 'model.safetensors')));
      const b = new TensorReader(openTensorFile(path.join(NESTED, 'model.safetensors')));
      for (const n of [...before.filter((x) => x.startsWith('model.visual.')), 'lm_head.weight'])
        expect(Buffer.from(a.bytes(n))).toEqual(Buffer.from(b.bytes(n)));
      a.close();
      b.close();
      expect(loadArchitecture(openCheckpoint(out)).numExperts).toBe(experts);
    });
  }

  test('quantize --format packed: the packed parts and their metadata under the stored names, re-opens', async () => {
    const out = path.join(work, 'packed');
    await quantize({ model: NESTED, output: out, bits: 4, method: 'rtn', format: 'packed' }, quiet);
    const header = stored(out);
    const w = 'model.language_model.layers.0.linear_attn.in_proj_qkv';
    expect(Object.keys(header)).toContain(`${w}.qweight`);
    expect(Object.keys(openTensorFile(path.join(out, 'model.safetensors')).metadata)).toContain(
      `moe.quant.${w}.weight`,
    );
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config.quantization_config.quant_method).toBe('moe-packed');
    expect(config.text_config.quantization_config).toBeUndefined();
    const ckpt = openCheckpoint(out);
    expect(ckpt.tensors.get('model.layers.0.linear_attn.in_proj_qkv.weight')?.packed?.info.bits).toBe(4);
    expect(loadArchitecture(ckpt).numExperts).toBe(8);
  });
});
