/**
 * The one-file rule for methods: a merge method defined in test/ (first-method.ts) and a pruning method defined
 * here, each added by one registry call, run through the command line in-process (main(argv)).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { main } from '../../src/main';
import { registerMergeMethod } from '../../src/merge/methods';
import { loadArchitecture } from '../../src/model/registry';
import { registerPruneMethod } from '../../src/prune/methods';
import { topByScore } from '../../src/prune/select';
import { GOLDEN, quiet, tmpDir } from '../helpers';
import { first } from './first-method';

registerMergeMethod(first);
// Keeps the highest-numbered experts.
registerPruneMethod({
  name: 'last',
  title: 'highest expert numbers',
  select: async (_layer, c) => ({ kept: topByScore([...Array(c.experts).keys()], c), search: 'score' }),
});

/** main(argv) with stdout and stderr captured. */
async function cli(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const text = { stdout: '', stderr: '' };
  const capture = (stream: 'stdout' | 'stderr') =>
    jest.spyOn(process[stream], 'write').mockImplementation((chunk: string | Uint8Array) => {
      text[stream] += String(chunk);
      return true;
    });
  const spies = [capture('stdout'), capture('stderr')];
  try {
    const code = await main(argv);
    return { code, ...text };
  } finally {
    spies.forEach((s) => s.mockRestore());
  }
}

const model = path.join(GOLDEN, 'qwen3_moe');
let stats: string;

beforeAll(async () => {
  const file = path.join(tmpDir(), 'd.json');
  let x = 9;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648) % 256;
  fs.writeFileSync(file, JSON.stringify([...Array(6)].map(() => [...Array(16)].map(next))));
  stats = path.join(tmpDir(), 'stats');
  await calibrate({ model, output: stats, data: file, seqLen: 16, backend: 'ref' }, quiet);
});

/** M-SMoE groups by router-logit cosine, computed here from the stats: the 4 most frequent lead, the rest join. */
function expectedGroups(layer: number): number[][] {
  const s = new CalibrationStats(stats);
  const freq = s.frequency(layer);
  const cos = s.f64(`layers.${layer}.moe.router_cos`);
  s.close();
  const E = freq.length;
  const lead = [...Array(E).keys()]
    .sort((a, b) => freq[b] - freq[a] || a - b)
    .slice(0, 4)
    .sort((a, b) => a - b);
  const groups = lead.map((d) => [d]);
  for (let e = 0; e < E; e++) {
    if (lead.includes(e)) continue;
    let best = 0;
    lead.forEach((d, i) => (cos[e * E + d] > cos[e * E + lead[best]] ? (best = i) : 0));
    groups[best].push(e);
  }
  return groups;
}

/** Byte equality of two tensors. */
const same = (a: TensorReader, ka: string, b: TensorReader, kb: string) =>
  Buffer.from(a.bytes(ka)).equals(Buffer.from(b.bytes(kb)));

test('a merge method from test/ runs through the CLI: each group keeps its most frequent expert', async () => {
  const out = path.join(tmpDir(), 'first');
  const args = ['merge', model, '--stats', stats, '--method', 'first', '--keep', '4', '-o', out, '--backend', 'ref'];
  const r = await cli(args);
  expect(r.stderr).not.toMatch(/^moe:/m); // progress lines only: no warning, no error
  expect(r.code).toBe(0);
  const line = 'merged 8 → 4 experts per MoE layer by first (similarity router-logits, alignment off, router dominant';
  expect(r.stdout).toContain(`wrote ${out}: ${line}, `);
  const src = openCheckpoint(model);
  const arch = loadArchitecture(src);
  const a = new TensorReader(src);
  const b = new TensorReader(openCheckpoint(out));
  const record = JSON.parse(fs.readFileSync(path.join(out, 'moe-compression.json'), 'utf8'));
  const params = { keep: 4, similarity: 'router-logits', align: false, router: 'dominant' };
  expect(record).toMatchObject({ operation: 'merge', method: 'first', experts_before: 8, experts_after: 4, params });
  const h = arch.hidden;
  for (const layer of arch.moeLayers) {
    const groups = expectedGroups(layer);
    expect(groups.some((g) => g.length > 1)).toBe(true); // the method's merge() is called, not only copies
    const recorded = groups.map((g) => ({ members: g, weights: g.map((_, m) => (m === 0 ? 1 : 0)), alignment: null }));
    expect(record.groups[String(layer)]).toEqual(recorded);
    const text = groups.map((g) => `[${g.join(',')}]`).join(' ');
    expect(r.stdout).toContain(`  layer ${String(layer).padStart(3)}  ${text}\n`);
    const srcRouter = a.f32(arch.routerKey(layer));
    const outRouter = b.f32(arch.routerKey(layer));
    expect(outRouter.length).toBe(4 * h);
    groups.forEach((g, i) => {
      for (const p of ['gate', 'up', 'down'] as const) {
        expect(same(b, arch.expertKey(layer, i, p), a, arch.expertKey(layer, g[0], p))).toBe(true);
      }
      const row = (w: Float32Array, e: number) => Array.from(w.subarray(e * h, (e + 1) * h));
      expect(row(outRouter, i)).toEqual(row(srcRouter, g[0]));
    });
  }
  a.close();
  b.close();
  expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).num_local_experts).toBe(4);
});

test("the CLI offers registered methods and checks options against the method's declared parameters", async () => {
  const args = ['merge', model, '--stats', stats, '--keep', '4', '-o'];
  const unknown = await cli([...args, path.join(tmpDir(), 'x'), '--method', 'nope']);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toContain('Allowed choices are msmoe, hcsmoe, average, anchored, first');
  const out = path.join(tmpDir(), 'y');
  const bad = await cli([...args, out, '--method', 'first', '--similarity', 'expert-output']);
  expect(bad.code).toBe(2);
  const why = '--similarity "expert-output" is not a choice of --method first; use one of router-logits, weights';
  expect(bad.stderr).toBe(`moe: ${why}\n`);
  expect(fs.existsSync(out)).toBe(false);
});

test('a pruning method registered here runs through the CLI', async () => {
  const out = path.join(tmpDir(), 'last');
  const r = await cli(['prune', model, '--stats', stats, '--method', 'last', '--keep', '3', '-o', out, '--json']);
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout).layers.map((l: { kept: number[] }) => l.kept)).toEqual([
    [5, 6, 7],
    [5, 6, 7],
  ]);
  const src = openCheckpoint(model);
  const arch = loadArchitecture(src);
  const a = new TensorReader(src);
  const b = new TensorReader(openCheckpoint(out));
  for (const layer of arch.moeLayers) {
    for (let i = 0; i < 3; i++) {
      expect(same(b, arch.expertKey(layer, i, 'down'), a, arch.expertKey(layer, 5 + i, 'down'))).toBe(true);
    }
  }
  a.close();
  b.close();
  expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).num_local_experts).toBe(3);
});
