/**
 * `moe eval --top-k K` (src/model/top-k.ts) on both trained fixtures: K equal to the model's own is plain eval
 * exactly; K = 1 is exactly the eval of the same weights with num_experts_per_tok = 1 written in config.json (the
 * config path and the override path must route alike); DeepSeek-style group limiting bounds K with a clear error;
 * `moe prune --top-k` writes the count into config.json and the GGUF, and its model evaluates as --top-k does;
 * --top-p and --skip-ratio drop experts token by token (exact weights on hand-made logits; P = 1 and β = 0 change
 * nothing; the active-expert count).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { prune } from '../../src/commands/prune';
import { readGguf } from '../../src/io/gguf-reader';
import { softmaxTopK } from '../../src/model/arch';
import { route } from '../../src/model/forward/moe';
import { UsageError } from '../../src/errors';
import { quiet, ROOT, tmpDir } from '../helpers';

const CASES = [
  { name: 'tiny-moe', data: path.join(ROOT, 'fixtures', 'text', 'eval.txt'), own: 2 },
  { name: 'tiny-dsv3', data: path.join(ROOT, 'fixtures', 'sotu', 'eval.txt'), own: 2 },
];
const run = (model: string, data: string, topK?: number) =>
  evalCommand({ model, data, seqLen: 64, maxTokens: 256, topK }, quiet);

/** A copy of the fixture whose config.json routes each token to k experts. */
function withConfigTopK(name: string, k: number): string {
  const src = path.join(ROOT, 'fixtures', name);
  const dir = path.join(tmpDir(), name);
  fs.mkdirSync(dir);
  for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const config = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
  expect(config.num_experts_per_tok).not.toBe(k);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, num_experts_per_tok: k }));
  return dir;
}

describe.each(CASES)('$name', ({ name, data, own }) => {
  const model = path.join(ROOT, 'fixtures', name);

  test("--top-k equal to the model's own is plain eval exactly; --top-k 1 is the config's k = 1", async () => {
    const plain = await run(model, data);
    const same = await run(model, data, own);
    expect(same.loss).toBe(plain.loss);
    expect(same.perplexity).toBe(plain.perplexity);
    const one = await run(model, data, 1);
    const configured = await run(withConfigTopK(name, 1), data);
    expect(one.loss).toBe(configured.loss);
    expect(one.perplexity).not.toBe(plain.perplexity);
  });
});

test('group-limited routing bounds --top-k (tiny-dsv3: 1 of 2 groups of 4 experts)', async () => {
  const model = path.join(ROOT, 'fixtures', 'tiny-dsv3');
  await expect(run(model, CASES[1].data, 5)).rejects.toThrow(UsageError);
  await expect(run(model, CASES[1].data, 5)).rejects.toThrow(
    '--top-k 5 is not possible for this deepseek_v3 model: its group-limited routing selects from 1 of 2 groups of 4 experts',
  );
  const four = await run(model, CASES[1].data, 4);
  expect(Number.isFinite(four.perplexity)).toBe(true);
});

test('prune --top-k writes num_experts_per_tok (and GGUF expert_used_count); its eval equals eval --top-k', async () => {
  const model = path.join(ROOT, 'fixtures', 'tiny-moe');
  const data = path.join(tmpDir(), 'd.json');
  let x = 7;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648) % 1000;
  fs.writeFileSync(data, JSON.stringify([...Array(4)].map(() => [...Array(32)].map(next))));
  const stats = path.join(tmpDir(), 'stats');
  await calibrate({ model, output: stats, data, seqLen: 32 }, quiet);
  const [plain, top1] = [path.join(tmpDir(), 'plain'), path.join(tmpDir(), 'top1')];
  await prune({ model, stats, method: 'reap', keep: 6, output: plain }, quiet);
  const r = await prune({ model, stats, method: 'reap', keep: 6, topK: 1, output: top1 }, quiet);
  expect([r.top_k_before, r.top_k]).toEqual([2, 1]);
  expect(JSON.parse(fs.readFileSync(path.join(top1, 'config.json'), 'utf8')).num_experts_per_tok).toBe(1);
  expect(JSON.parse(fs.readFileSync(path.join(top1, 'moe-compression.json'), 'utf8')).params.top_k).toBe(1);
  const evalData = CASES[0].data;
  expect((await run(top1, evalData)).loss).toBe((await run(plain, evalData, 1)).loss);
  const gguf = await exportGguf({ model: top1, output: path.join(tmpDir(), 'top1.gguf'), type: 'F32' }, quiet);
  const meta = [...readGguf(gguf.output).metadata];
  expect(meta.filter(([k]) => k.endsWith('.expert_used_count'))).toEqual([[expect.any(String), 1]]);
  // K kept must still reach the top-k asked for
  await expect(
    prune({ model, stats, method: 'reap', keep: 2, topK: 3, output: path.join(tmpDir(), 'x') }, quiet),
  ).rejects.toThrow('keeping 2 experts is fewer than the 3 each token routes to');
});

describe('--top-p and --skip-ratio (dynamic experts per token)', () => {
  // softmax over 4 experts: probabilities 0.5, 0.3, 0.15, 0.05 (in that order of logits)
  const probs = [0.5, 0.3, 0.15, 0.05];
  const logits = Float32Array.from(probs.map(Math.log));

  test('route(): top-p keeps the fewest most probable selected experts reaching P; weights otherwise unchanged', () => {
    const plain = route(logits, 1, 4, softmaxTopK(3, false));
    expect(Array.from(plain.experts)).toEqual([0, 1, 2]);
    const w = (d: object, norm = false) =>
      Array.from(route(logits, 1, 4, { ...softmaxTopK(3, norm), dynamic: d }).weights);
    const close = (a: number[], b: number[]) => a.forEach((x, i) => expect(x).toBeCloseTo(b[i], 6));
    close(w({ topP: 0.49 }), [0.5, 0, 0]);
    close(w({ topP: 0.6 }), [0.5, 0.3, 0]);
    close(w({ topP: 0.81 }), [0.5, 0.3, 0.15]);
    close(w({ topP: 1 }), [0.5, 0.3, 0.15]);
    // renormalised top-k (norm_topk_prob): the mass is still of all experts; kept weights stay renormalised ones
    close(w({ topP: 0.6 }, true), [0.5 / 0.95, 0.3 / 0.95, 0]);
    // skip-ratio: drop weights below β × the largest
    close(w({ skipRatio: 0.5 }), [0.5, 0.3, 0]);
    close(w({ skipRatio: 0.7 }), [0.5, 0, 0]);
    close(w({ skipRatio: 0 }), [0.5, 0.3, 0.15]);
    const count = { tokens: 0, experts: 0 };
    route(logits, 1, 4, { ...softmaxTopK(3, false), dynamic: { skipRatio: 0.5, count } });
    expect(count).toEqual({ tokens: 1, experts: 2 });
  });

  test('sigmoid scores are normalised for the mass', () => {
    const s = [2, 1, 0, -1];
    const sig = s.map((x) => 1 / (1 + Math.exp(-x)));
    const total = sig.reduce((a, b) => a + b, 0);
    const rule = { ...softmaxTopK(2, false), scoring: 'sigmoid' as const };
    const keepOne = sig[0] / total + 1e-4;
    const r = route(Float32Array.from(s), 1, 4, { ...rule, dynamic: { topP: keepOne - 2e-4 } });
    expect(Array.from(r.weights).map((x) => x > 0)).toEqual([true, false]);
    const r2 = route(Float32Array.from(s), 1, 4, { ...rule, dynamic: { topP: keepOne } });
    expect(Array.from(r2.weights).map((x) => x > 0)).toEqual([true, true]);
  });

  test('eval: P = 1 and β = 0 are plain eval exactly; P → 0 leaves one expert per token; bad values refused', async () => {
    const { name, data } = CASES[0];
    const model = path.join(ROOT, 'fixtures', name);
    const plain = await run(model, data);
    for (const o of [{ topP: 1 }, { skipRatio: 0 }]) {
      const r = await evalCommand({ model, data, seqLen: 64, maxTokens: 256, ...o }, quiet);
      expect(r.loss).toBe(plain.loss);
      expect(r.active_experts_per_token).toBe(2);
    }
    const one = await evalCommand({ model, data, seqLen: 64, maxTokens: 256, topP: 1e-6 }, quiet);
    expect(one.active_experts_per_token).toBe(1);
    expect(one.perplexity).not.toBe(plain.perplexity);
    const skip = await evalCommand({ model, data, seqLen: 64, maxTokens: 256, skipRatio: 0.5 }, quiet);
    expect(skip.active_experts_per_token).toBeGreaterThan(1);
    expect(skip.active_experts_per_token).toBeLessThan(2);
    expect(skip.active_params_per_token).toBeLessThan(plain.size.params);
    await expect(evalCommand({ model, data, seqLen: 64, topP: 0 }, quiet)).rejects.toThrow(
      '--top-p 0 must be in (0, 1]',
    );
    await expect(evalCommand({ model, data, seqLen: 64, skipRatio: 2 }, quiet)).rejects.toThrow(UsageError);
  });
});
