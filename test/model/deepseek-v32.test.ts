/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * DeepSeek-V3.2 against transformers 5.18 (fixtures/golden/deepseek_v32 and deepseek_v32-fp8, made by
 * scripts/make_golden.py --only deepseek_v32,deepseek_v32-fp8 from transformers' own save_pretrained): the experts
 * transformers' gate selects on every token, logits and loss on the onnx backend (forward-golden checks ref),
 * inspect, windows longer than index_topk refused with the exact message, the DSA indexer kept as stored by prune,
 * merge and quantize (packed and dequantized), and the GGUF export for llama.cpp's deepseek32 re-opened.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { OnnxBackend } from '../../src/backend/onnx';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { CheckpointError, UsageError } from '../../src/errors';
import { openGgufModel } from '../../src/gguf/source';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { readGguf } from '../../src/io/gguf-reader';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { forwardSpec } from '../../src/model/forward/spec';
import { architectureFor, loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, rawHeader, runMain, tmpDir } from '../helpers';
import { lossOf, maxDiff } from '../golden-math';

const DIR = path.join(GOLDEN, 'deepseek_v32');
const FP8 = path.join(GOLDEN, 'deepseek_v32-fp8');
const INDEXER = ['k_norm.weight', 'k_norm.bias', 'weights_proj.weight', 'wk.weight', 'wq_b.weight'];

function golden(dir: string) {
  const r = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  const [B, T, V] = r.ref('logits').shape;
  const logits = r.f32('logits');
  const routers: Record<string, number[]> = {};
  for (const L of [1, 2]) routers[L] = Array.from(new BigInt64Array(r.bytes(`router.${L}`).slice().buffer), Number);
  r.close();
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));
  return { ids, B, T, V, logits, routers, info };
}

/** Logits and the experts selected per MoE layer ([tokens × k], in selection order). */
async function run(dir: string, be: Backend, g: ReturnType<typeof golden>) {
  const ckpt = openCheckpoint(dir);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(g.B * g.T, g.V);
  const experts: Record<string, number[]> = {};
  await new ForwardPass(reader, loadArchitecture(ckpt), be).run(g.ids, g.B, g.T, sink, {
    router: (l, r) => (experts[l] = Array.from(r.experts)),
  });
  reader.close();
  return { logits, experts };
}

/** A tensor as stored in a one-file checkpoint: its dtype and bytes (FP8 codes and scales as they are). */
function stored(dir: string, name: string): { dtype: string; bytes: Buffer } | undefined {
  const file = path.join(dir, 'model.safetensors');
  const { n, json } = rawHeader(file);
  const t = json[name];
  if (!t) return undefined;
  const [b, e] = t.data_offsets;
  const bytes = Buffer.alloc(e - b);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, bytes, 0, bytes.length, 8 + n + b);
  fs.closeSync(fd);
  return { dtype: t.dtype, bytes };
}

/** One onnx backend for both goldens. */
let onnx: OnnxBackend | undefined;
afterAll(async () => {
  await onnx?.dispose();
});

describe.each([
  ['deepseek_v32', DIR],
  ['deepseek_v32-fp8', FP8],
])('the golden %s checkpoint', (_name, dir) => {
  const g = golden(dir);

  test("the experts selected on every token of every MoE layer are transformers' (its gate's topk_indices)", async () => {
    const { logits, experts } = await run(dir, new RefBackend(), g);
    expect(maxDiff(logits, g.logits)).toBeLessThanOrEqual(1e-3);
    const sorted = (a: number[]) => [...Array(a.length / 2).keys()].map((t) => [a[2 * t], a[2 * t + 1]].sort());
    for (const L of [1, 2]) expect(sorted(experts[L])).toEqual(sorted(g.routers[L]));
    expect(Object.keys(experts)).toEqual(['1', '2']);
  });

  test('onnx backend: logits within 1e-3, loss within 2e-4', async () => {
    onnx ??= await OnnxBackend.create({ threads: 2 });
    const { logits } = await run(dir, onnx, g);
    expect(maxDiff(logits, g.logits)).toBeLessThanOrEqual(1e-3);
    expect(Math.abs(lossOf(logits, g.ids, g.B, g.T, g.V) - g.info.loss)).toBeLessThanOrEqual(2e-4);
  });

  test('moe inspect: parameters as transformers counts them, the indexer in its layer, no extra tensor', () => {
    const r = inspect({ model: dir });
    expect(r.params_total).toBe(g.info.params_total);
    expect(r.moe_layers).toEqual([1, 2]);
    expect(r.extra_tensors).toBe(0);
    expect(r.params_experts).toBe(2 * 8 * 3 * 8 * 64);
    expect(formatInspect(r)).toMatch(
      /routing\s+sigmoid, top-2, renormalised, 2 groups, best 1, × 2\.5, selection bias/,
    );
  });
});

describe('windows longer than index_topk (32) are refused', () => {
  const work = tmpDir('moe-dsv32-');
  const ids = (n: number, len: number) =>
    [...Array(n)].map((_, w) => [...Array(len)].map((_, i) => (w * 31 + i * 7) % 256));
  const data = (len: number) => {
    const file = path.join(work, `ids-${len}.json`);
    fs.writeFileSync(file, JSON.stringify(ids(2, len)));
    return file;
  };
  const message =
    'a window of 33 tokens is longer than index_topk 32: deepseek_v32 then attends only to the 32 tokens its ' +
    `indexer selects, and moe runs dense attention only (sparse attention is not implemented) (${DIR}/config.json); ` +
    'use --seq-len 32 or less';

  test('moe eval and moe calibrate: exit 2 with one line, before any tensor is read', async () => {
    for (const cmd of ['eval', 'calibrate']) {
      const out = path.join(work, `${cmd}-out`);
      const r = await runMain([
        cmd,
        DIR,
        '--data',
        data(33),
        '--seq-len',
        '33',
        ...(cmd === 'calibrate' ? ['-o', out] : []),
      ]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`moe: ${message}\n`);
      expect(fs.existsSync(out)).toBe(false);
    }
  });

  test('the forward pass itself refuses them; a window of exactly index_topk runs', async () => {
    const ckpt = openCheckpoint(DIR);
    const reader = new TensorReader(ckpt);
    const fp = new ForwardPass(reader, loadArchitecture(ckpt), new RefBackend());
    const { sink } = fullLogits(33, 256);
    const err = await fp.run(Int32Array.from(ids(1, 33)[0]), 1, 33, sink).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).line()).toBe(message);
    const ok = await evalCommand({ model: DIR, data: data(32), seqLen: 32, backend: 'ref' }, quiet);
    expect(ok.positions).toBe(62);
    reader.close();
  });
});

describe('commands keep the DSA indexer as stored', () => {
  const work = tmpDir('moe-dsv32-cmd-');
  const data = path.join(work, 'ids.json');
  const stats: Record<string, string> = { bf16: path.join(work, 'stats'), fp8: path.join(work, 'stats-fp8') };
  beforeAll(async () => {
    const g = golden(DIR);
    fs.writeFileSync(data, JSON.stringify([0, 1].map((b) => Array.from(g.ids.subarray(b * g.T, (b + 1) * g.T)))));
    await calibrate({ model: DIR, output: stats.bf16, data, seqLen: 16, backend: 'ref' }, quiet);
    await calibrate({ model: FP8, output: stats.fp8, data, seqLen: 16, backend: 'ref' }, quiet);
  });

  /** Every indexer tensor (and an FP8 source's block scales) stored with the source's dtype and bytes. */
  const sameIndexer = (src: string, out: string) => {
    for (const L of [0, 1, 2])
      for (const t of INDEXER) {
        const name = `model.layers.${L}.self_attn.indexer.${t}`;
        const scale = name.replace(/\.weight$/, '.weight_scale_inv');
        expect(stored(out, name)).toEqual(stored(src, name));
        expect(stored(out, scale)).toEqual(stored(src, scale));
      }
    expect(stored(src, 'model.layers.1.self_attn.indexer.wq_b.weight')).toBeDefined();
  };

  test.each([
    ['bf16', DIR],
    ['fp8', FP8],
  ])('%s: prune (REAP, 6 of 8: 3 per group) and merge (4) re-open with the indexer bit-exact', async (name, src) => {
    const pruned = path.join(work, `pruned-${name}`);
    await prune({ model: src, stats: stats[name], method: 'reap', keep: 6, output: pruned }, quiet);
    const merged = path.join(work, `merged-${name}`);
    await merge({ model: src, stats: stats[name], method: 'msmoe', keep: 4, output: merged }, quiet);
    for (const [out, E] of [
      [pruned, 6],
      [merged, 4],
    ] as const) {
      expect(loadArchitecture(openCheckpoint(out)).numExperts).toBe(E);
      sameIndexer(src, out);
    }
  });

  test('quantize: packed and dequantized keep the indexer and evaluate alike', async () => {
    const ppl: number[] = [];
    for (const format of ['packed', 'dequantized'] as const) {
      const out = path.join(work, `q-${format}`);
      await quantize({ model: DIR, output: out, bits: 4, method: 'rtn', format }, quiet);
      sameIndexer(DIR, out);
      ppl.push((await evalCommand({ model: out, data, seqLen: 16, backend: 'ref' }, quiet)).perplexity);
    }
    // packed runs the 4-bit values in float32, dequantized stores them rounded to bf16
    expect(Math.abs(ppl[0] / ppl[1] - 1)).toBeLessThan(5e-3);
    expect(ppl[0]).not.toBe(ppl[1]);
  });
});

describe('GGUF for llama.cpp (deepseek32)', () => {
  const work = tmpDir('moe-dsv32-gguf-');
  const model = path.join(work, 'deepseek_v32');
  beforeAll(() => {
    fs.cpSync(DIR, model, { recursive: true });
    // a byte-level BPE tokenizer with no merges (the golden has none; only token ids are evaluated)
    const bytes = [...Array(256).keys()].map((i) =>
      String.fromCodePoint(i < 33 || (i > 126 && i < 161) || i === 173 ? 256 + i : i),
    );
    const vocab = Object.fromEntries(bytes.map((s, i) => [s, i]));
    const tok = { model: { type: 'BPE', vocab, merges: [] }, pre_tokenizer: { type: 'ByteLevel' }, added_tokens: [] };
    fs.writeFileSync(path.join(model, 'tokenizer.json'), JSON.stringify(tok));
  });

  test('names, shapes and the indexer metadata; read back, it evaluates as the source', async () => {
    const file = (await exportGguf({ model, output: path.join(work, 'm.gguf'), type: 'F32' }, quiet)).output;
    const g = readGguf(file);
    expect(g.metadata.get('general.architecture')).toBe('deepseek32');
    expect(g.metadata.get('deepseek32.attention.indexer.head_count')).toBe(2);
    expect(g.metadata.get('deepseek32.attention.indexer.key_length')).toBe(64);
    expect(g.metadata.get('deepseek32.attention.indexer.top_k')).toBe(32);
    expect(g.metadata.get('deepseek32.leading_dense_block_count')).toBe(1);
    expect(g.metadata.get('deepseek32.expert_gating_func')).toBe(2);
    const shape = (n: string) => g.tensors.find((t) => t.name === n)?.shape;
    // PyTorch order, as moe's reader gives them: [out, in]
    expect(shape('blk.1.indexer.attn_q_b.weight')).toEqual([128, 16]);
    expect(shape('blk.1.indexer.attn_k.weight')).toEqual([64, 64]);
    expect(shape('blk.1.indexer.proj.weight')).toEqual([2, 64]);
    expect(shape('blk.1.indexer.k_norm.weight')).toEqual([64]);
    expect(shape('blk.1.indexer.k_norm.bias')).toEqual([64]);
    expect(shape('blk.0.attn_k_b.weight')).toEqual([4, 16, 16]);
    const m = openGgufModel(file);
    expect(m.arch.modelType).toBe('deepseek_v32');
    expect(m.ckpt.config).toMatchObject({ index_n_heads: 2, index_head_dim: 64, index_topk: 32 });
    expect(m.ckpt.config.rope_interleave).toBeUndefined();
    const r = m.reader;
    const src = new TensorReader(openCheckpoint(DIR));
    for (const t of INDEXER) {
      const name = `model.layers.2.self_attn.indexer.${t}`;
      expect(maxDiff(r.f32(name), src.f32(name))).toBe(0);
    }
    r.close();
    src.close();
    const data = path.join(work, 'ids.json');
    const gd = golden(DIR);
    fs.writeFileSync(data, JSON.stringify([0, 1].map((b) => Array.from(gd.ids.subarray(b * gd.T, (b + 1) * gd.T)))));
    const a = await evalCommand({ model: file, data, seqLen: 16, backend: 'ref' }, quiet);
    const b = await evalCommand({ model: DIR, data, seqLen: 16, backend: 'ref' }, quiet);
    expect(Math.abs(a.perplexity / b.perplexity - 1)).toBeLessThan(1e-6);
  });

  test('an index_head_dim llama.cpp cannot rotate (not a power of two ≥ 64) is refused', () => {
    const cfg = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
    for (const dim of [32, 96]) {
      const a = architectureFor({ ...cfg, index_head_dim: dim }, DIR);
      const spec = forwardSpec(a);
      expect(() => a.ggufMapping(spec.attention, spec.rope)).toThrow(
        new CheckpointError(`GGUF output for deepseek_v32 needs index_head_dim a power of two ≥ 64, not ${dim}`),
      );
    }
  });
});
