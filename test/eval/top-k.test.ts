/**
 * `moe eval --top-k K` (src/model/top-k.ts) on both trained fixtures: K equal to the model's own is plain eval
 * exactly; K = 1 is exactly the eval of the same weights with num_experts_per_tok = 1 written in config.json (the
 * config path and the override path must route alike); DeepSeek-style group limiting bounds K with a clear error;
 * `moe prune --top-k` writes the count into config.json and the GGUF, and its model evaluates as --top-k does.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { exportGguf } from '../../src/commands/gguf';
import { prune } from '../../src/commands/prune';
import { readGguf } from '../../src/io/gguf-reader';
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
