import * as fs from 'node:fs';
import * as path from 'node:path';
import { convert } from '../../src/commands/convert';
import { evalCommand } from '../../src/commands/eval';
import { cutWindows } from '../../src/eval/data';
import { openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { GOLDEN, quiet, runMain, tmpDir } from '../helpers';

function goldenIds(c: string): number[][] {
  const r = new TensorReader(openTensorFile(path.join(GOLDEN, c, 'golden.safetensors')));
  const [B, T] = r.ref('input_ids').shape;
  const ids = Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  r.close();
  return [...Array(B).keys()].map((b) => ids.slice(b * T, (b + 1) * T));
}

function writeJson(value: unknown): string {
  const f = path.join(tmpDir(), 'data.json');
  fs.writeFileSync(f, JSON.stringify(value));
  return f;
}

function readLogits(file: string): { data: Float32Array; shape: number[] } {
  const r = new TensorReader(openTensorFile(file));
  const out = { data: r.f32('logits'), shape: r.ref('logits').shape };
  r.close();
  return out;
}

function logSoftmax(x: Float32Array, o: number, V: number): Float64Array {
  let m = -Infinity;
  for (let v = 0; v < V; v++) m = Math.max(m, x[o + v]);
  let s = 0;
  for (let v = 0; v < V; v++) s += Math.exp(x[o + v] - m);
  const out = new Float64Array(V);
  for (let v = 0; v < V; v++) out[v] = x[o + v] - m - Math.log(s);
  return out;
}

describe('moe eval', () => {
  test.each(['qwen3_moe', 'deepseek_v3', 'qwen2_moe'])(
    "%s: pre-tokenized windows give transformers' loss (onnx backend)",
    async (c) => {
      const data = writeJson(goldenIds(c));
      const r = await runMain(['eval', path.join(GOLDEN, c), '--data', data, '--json']);
      expect(r.code).toBe(0);
      const report = JSON.parse(r.stdout);
      const want = JSON.parse(fs.readFileSync(path.join(GOLDEN, c, 'golden.json'), 'utf8')).loss;
      expect(Math.abs(report.loss - want)).toBeLessThan(1e-4);
      expect(report.perplexity).toBeCloseTo(Math.exp(report.loss), 6);
      expect(report).toMatchObject({ windows: 2, tokens: 32, positions: 30, backend: 'onnx' });
      // the forward pass alone: part of the whole run, and its tokens/s from the same token count
      expect(report.forward_seconds).toBeGreaterThan(0);
      expect(report.forward_seconds).toBeLessThanOrEqual(report.seconds);
      expect(report.forward_tokens_per_second).toBeCloseTo(32 / report.forward_seconds, 6);
    },
  );

  test('against a baseline: KL, top-1 agreement and perplexity match a direct computation from the dumped logits', async () => {
    const base = path.join(GOLDEN, 'qwen3_moe');
    const work = tmpDir();
    const bf16 = path.join(work, 'bf16');
    await convert({ model: base, output: bf16, dtype: 'bf16' }, quiet); // a slightly different model
    const data = writeJson(goldenIds('qwen3_moe'));
    const dumpA = path.join(work, 'a.safetensors');
    const dumpB = path.join(work, 'b.safetensors');
    await evalCommand({ model: base, data, seqLen: 16, backend: 'ref', dumpLogits: dumpA }, quiet);
    const report = await evalCommand(
      { model: bf16, data, seqLen: 16, backend: 'ref', baseline: base, dumpLogits: dumpB },
      quiet,
    );
    const a = readLogits(dumpA);
    const b = readLogits(dumpB);
    const [W, T, V] = a.shape;
    const ids = goldenIds('qwen3_moe');
    let kl = 0;
    let agree = 0;
    let nllA = 0;
    let nllB = 0;
    for (let w = 0; w < W; w++) {
      for (let t = 0; t < T - 1; t++) {
        const o = (w * T + t) * V;
        const la = logSoftmax(a.data, o, V);
        const lb = logSoftmax(b.data, o, V);
        for (let v = 0; v < V; v++) kl += Math.exp(la[v]) * (la[v] - lb[v]);
        const argmax = (l: Float64Array) => l.indexOf(Math.max(...l));
        if (argmax(la) === argmax(lb)) agree++;
        nllA -= la[ids[w][t + 1]];
        nllB -= lb[ids[w][t + 1]];
      }
    }
    const n = W * (T - 1);
    expect(report.baseline!.kl_mean).toBeGreaterThan(1e-7); // the bf16 copy does differ
    expect(report.baseline!.kl_mean).toBeCloseTo(kl / n, 8);
    expect(report.baseline!.top1_agreement).toBeCloseTo(agree / n, 10);
    expect(report.baseline!.loss).toBeCloseTo(nllA / n, 8);
    expect(report.loss).toBeCloseTo(nllB / n, 8);
    expect(report.baseline!.routing_agreement.map((x) => x.layer)).toEqual([0, 1]);
    for (const x of report.baseline!.routing_agreement) expect(x.agreement).toBeGreaterThan(0.5);
  });

  test('a model against itself: KL 0, full agreement, gate passes (exit 0)', async () => {
    const m = path.join(GOLDEN, 'olmoe');
    const r = await runMain([
      'eval',
      m,
      '--baseline',
      m,
      '--data',
      writeJson(goldenIds('olmoe')),
      '--max-ppl-increase',
      '0',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.baseline.kl_mean).toBeCloseTo(0, 10);
    expect(report.baseline.top1_agreement).toBe(1);
    expect(report.baseline.routing_agreement.every((x: { agreement: number }) => x.agreement === 1)).toBe(true);
    expect(report.gate).toEqual({ max_ppl_increase_pct: 0, passed: true });
  });

  test('--max-ppl-increase fails the CI gate with exit 1 when the model is worse', async () => {
    const base = path.join(GOLDEN, 'mixtral');
    const worse = path.join(tmpDir(), 'worse');
    fs.cpSync(base, worse, { recursive: true });
    // Zero one expert's down projection: the model gets worse on these ids.
    const { openCheckpoint } = await import('../../src/io/checkpoint');
    const t = openCheckpoint(worse).tensors.get('model.layers.1.block_sparse_moe.experts.0.w2.weight')!;
    const fd = fs.openSync(t.file, 'r+');
    fs.writeSync(fd, Buffer.alloc(t.end - t.begin), 0, t.end - t.begin, t.begin);
    fs.closeSync(fd);
    const data = writeJson(goldenIds('mixtral'));
    const r = await runMain(['eval', worse, '--baseline', base, '--data', data, '--max-ppl-increase', '0.1', '--json']);
    const report = JSON.parse(r.stdout); // the report is still printed in full
    expect(report.baseline.ppl_increase_pct).toBeGreaterThan(0.1);
    expect(report.gate).toEqual({ max_ppl_increase_pct: 0.1, passed: false });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/perplexity rose .* above the allowed 0.1%/);
    const lenient = await runMain(['eval', worse, '--baseline', base, '--data', data, '--max-ppl-increase', '1000000']);
    expect(lenient.code).toBe(0);
  });

  test('text windows follow the perplexity rule: first max-tokens, consecutive, last partial dropped', () => {
    const ids = [...Array(23).keys()];
    expect(cutWindows(ids, { seqLen: 5 }).map((w) => Array.from(w))).toEqual([
      [0, 1, 2, 3, 4],
      [5, 6, 7, 8, 9],
      [10, 11, 12, 13, 14],
      [15, 16, 17, 18, 19],
    ]);
    expect(cutWindows(ids, { seqLen: 5, maxTokens: 12 }).length).toBe(2);
  });

  test('bad data is a clear error', async () => {
    const m = path.join(GOLDEN, 'mixtral');
    const r1 = await runMain(['eval', m, '--data', writeJson([[1, 2, 99999]])]);
    expect(r1.code).toBe(3);
    expect(r1.stderr).toMatch(/window 0 is not an array of token ids below the vocabulary size 256/);
    const r2 = await runMain(['eval', m, '--data', path.join(tmpDir(), 'missing.txt')]);
    expect(r2.code).toBe(3); // a missing data file is bad input, like a missing model folder
    const txt = path.join(tmpDir(), 'a.txt');
    fs.writeFileSync(txt, 'hello');
    const r3 = await runMain(['eval', m, '--data', txt]);
    expect(r3.code).toBe(3);
    expect(r3.stderr).toMatch(/no tokenizer\.json/);
    expect((await runMain(['eval', m, '--data', txt, '--max-ppl-increase', '5'])).code).toBe(2); // gate needs a baseline
  });
});
