/**
 * `moe eval --top-k K` (src/model/top-k.ts) on both trained fixtures: K equal to the model's own is plain eval
 * exactly; K = 1 is exactly the eval of the same weights with num_experts_per_tok = 1 written in config.json (the
 * config path and the override path must route alike); DeepSeek-style group limiting bounds K with a clear error;
 * `moe prune --top-k` writes the count into config.json and the GGUF, and its model evaluates as --top-k does;
 * --top-p and --skip-ratio drop experts token by token (exact weights on hand-made logits; P = 1 and β = 0 change
 * nothing; the active-expert count; --top-k caps them; active parameters agree with inspect's; sigmoid scores,
 * DeepSeek-style scaling and a correction bias that selects a less probable expert first).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { compareRouting } from '../../src/eval/perplexity';
import { exportGguf } from '../../src/commands/gguf';
import { inspect } from '../../src/commands/inspect';
import { prune } from '../../src/commands/prune';
import { readGguf } from '../../src/io/gguf-reader';
import { softmaxTopK, type RoutingRule } from '../../src/model/arch';
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

  /** route()'s weights for `rule` with `dynamic`, and the model's own weights with the slots not in `keep` zeroed. */
  function dropped(l: number[], rule: RoutingRule, dynamic: object, keep: number[], bias?: number[]) {
    const b = bias && Float32Array.from(bias);
    const own = route(Float32Array.from(l), 1, l.length, rule, b).weights;
    const dyn = route(Float32Array.from(l), 1, l.length, { ...rule, dynamic }, b).weights;
    return [Array.from(dyn), Array.from(own, (w, j) => (keep.includes(j) ? w : 0))];
  }

  test('route() with sigmoid scores: exact weights for both rules, renormalised and scaled (DeepSeek-style)', () => {
    // σ(2, 1, 0, −1) = 0.8808, 0.7311, 0.5, 0.2689: shares of their sum 0.3700, 0.3071, 0.2100, 0.1130
    const l = [2, 1, 0, -1];
    const sig = l.map((x) => 1 / (1 + Math.exp(-x)));
    const plain = { ...softmaxTopK(3, false), scoring: 'sigmoid' as const };
    const scaled = { ...plain, normTopK: true, scalingFactor: 2.5 };
    const top3 = sig.slice(0, 3).reduce((a, b) => a + b, 0);
    route(Float32Array.from(l), 1, 4, scaled).weights.forEach((w, j) =>
      expect(w).toBeCloseTo((2.5 * sig[j]) / top3, 6),
    );
    for (const rule of [plain, scaled]) {
      const cases: [object, number[]][] = [
        [{ topP: 0.3 }, [0]], // 0.37 ≥ 0.3
        [{ topP: 0.5 }, [0, 1]], // 0.37 + 0.31 = 0.68
        [{ topP: 0.8 }, [0, 1, 2]], // 0.89
        [{ topP: 1 }, [0, 1, 2]],
        [{ skipRatio: 0.5 }, [0, 1, 2]], // 0.5 / 0.8808 = 0.568
        [{ skipRatio: 0.6 }, [0, 1]], // 0.7311 / 0.8808 = 0.830
        [{ skipRatio: 0.85 }, [0]],
        [{ topP: 0.8, skipRatio: 0.6 }, [0, 1]],
        [{ skipRatio: 0 }, [0, 1, 2]],
      ];
      for (const [d, keep] of cases) {
        const [got, want] = dropped(l, rule, d, keep);
        expect(got).toEqual(want);
      }
    }
  });

  test('route(): the mass is taken most probable first and skip-ratio compares with the largest weight, not slot 0', () => {
    // DeepSeek-V3's correction bias selects expert 3 first (0.2689 + 1), though expert 0 is the more probable
    const rule = { ...softmaxTopK(2, false), scoring: 'sigmoid' as const, correctionBias: true };
    const l = [2, 1, 0, -1];
    const bias = [0, 0, 0, 1];
    expect(Array.from(route(Float32Array.from(l), 1, 4, rule, Float32Array.from(bias)).experts)).toEqual([3, 0]);
    for (const d of [{ topP: 0.3 }, { skipRatio: 0.5 }]) {
      const [got, want] = dropped(l, rule, d, [1], bias);
      expect(got).toEqual(want);
    }
    // softmax: exact as well (the case above is checked to 6 places)
    const [got, want] = dropped(Array.from(logits), softmaxTopK(3, true), { topP: 0.6 }, [0, 1]);
    expect(got).toEqual(want);
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
    for (const o of [{ topP: 1.5 }, { topP: NaN }, { topP: -0.1 }, { skipRatio: -0.1 }, { skipRatio: NaN }]) {
      const err = await evalCommand({ model, data, seqLen: 64, ...o }, quiet).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UsageError);
      expect((err as UsageError).message).not.toContain('\n');
      expect((err as UsageError).hint).toMatch(/^e\.g\. --(top-p|skip-ratio) /);
    }
  });

  test('eval: --top-k caps the count; active parameters as inspect counts them', async () => {
    const { name, data } = CASES[0];
    const model = path.join(ROOT, 'fixtures', name);
    const info = inspect({ model });
    const ev = (o: object) => evalCommand({ model, data, seqLen: 64, maxTokens: 256, ...o }, quiet);
    const three = await ev({ topK: 3 });
    const threeP1 = await ev({ topK: 3, topP: 1 });
    expect(threeP1.loss).toBe(three.loss);
    expect([three.active_experts_per_token, threeP1.active_experts_per_token]).toEqual([3, 3]);
    const capped = await ev({ topK: 3, skipRatio: 0.3 });
    expect(capped.active_experts_per_token).toBeLessThan(3);
    expect((await ev({ topK: 1, skipRatio: 0 })).active_experts_per_token).toBe(1);
    // the model's own k: inspect's params_active; one expert: everything else plus one expert's share
    expect((await ev({ topP: 1 })).active_params_per_token).toBe(info.params_active);
    const perExpert = info.params_experts / info.experts_per_layer[0];
    const one = await ev({ topP: 1e-6 });
    expect(one.active_params_per_token).toBe(info.params_total - info.params_experts + perExpert);
    // one expert per token either way, but --top-p keeps its weight as the model computed it (p₁ / (p₁ + p₂) under
    // norm_topk_prob) where --top-k 1 renormalises it to 1: same active parameters, different outputs
    const top1 = await ev({ topK: 1 });
    expect(one.active_params_per_token).toBe(top1.active_params_per_token);
    expect(one.loss).not.toBe(top1.loss);
  });
});

test('routing agreement counts only the experts each model keeps: a dropped slot is no match', () => {
  // token 0: base {2, 3}, model keeps 1 and dropped 3 (−1): 0 of the 1 kept expert is in base's set;
  // token 1: base {0, 1}, model {1, 0}: 2 of 2; token 2: base {4, 5}, model keeps 5, dropped 4: 1 of 1
  const into = new Map<number, { overlap: number; tokens: number }>();
  const base = new Map([[1, Int32Array.from([2, 3, 0, 1, 4, 5])]]);
  const model = new Map([[1, Int32Array.from([1, -1, 1, 0, 5, -1])]]);
  compareRouting(into, base, model, 2, 2, 3);
  expect(into.get(1)).toEqual({ overlap: 0 + 1 + 1, tokens: 3 });
  // a model with a larger k: |A∩B| / min(|A|, |B|)
  const wide = new Map<number, { overlap: number; tokens: number }>();
  compareRouting(wide, new Map([[0, Int32Array.from([0])]]), new Map([[0, Int32Array.from([3, 0])]]), 1, 2, 1);
  expect(wide.get(0)).toEqual({ overlap: 1, tokens: 1 });
});
