/**
 * DERN neuron recombination (src/prune/dern.ts): with nothing recombined the output is its selection's prune byte for
 * byte (dern = REAP, --recombine after frequency); a dropped expert that is a kept one with its neurons permuted and
 * some signs flipped is matched neuron for neuron and merges back into the same expert, while an unrelated one
 * stays below the threshold; on the trained fixture only the experts the report names change.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { prune } from '../../src/commands/prune';
import type { TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { DEFAULT_RECOMBINE_THRESHOLD, recombineLayer } from '../../src/prune/dern';
import { mulberry32 } from '../../src/util/random';
import { GOLDEN, quiet, ROOT, tmpDir } from '../helpers';

/** The bytes of every file of a folder but moe's own records, by name. */
const files = (dir: string) =>
  Object.fromEntries(
    fs
      .readdirSync(dir)
      .filter((f) => !f.startsWith('moe-'))
      .map((f) => [f, fs.readFileSync(path.join(dir, f))]),
  );

describe.each(['qwen3_moe', 'deepseek_v3', 'gpt_oss'])('%s: nothing recombined is the selection', (name) => {
  test('dern with an unreachable threshold equals reap; --recombine after frequency equals frequency', async () => {
    const model = path.join(GOLDEN, name);
    const data = path.join(tmpDir(), 'd.json');
    let x = 3;
    const next = () => (x = (x * 1103515245 + 12345) % 2147483648) % 256;
    fs.writeFileSync(data, JSON.stringify([...Array(8)].map(() => [...Array(16)].map(next))));
    const stats = path.join(tmpDir(), 'stats');
    await calibrate({ model, output: stats, data, seqLen: 16, backend: 'ref' }, quiet);
    const work = tmpDir();
    const out = (n: string) => path.join(work, n);
    const base = { model, stats, keep: name === 'qwen3_moe' ? 3 : 4, backend: 'ref' as const };
    const pairs: [string, object, string, object][] = [
      ['reap', { method: 'reap' }, 'dern', { method: 'dern', recombineThreshold: 1e9 }],
      ['freq', { method: 'frequency' }, 'freq-rc', { method: 'frequency', recombine: true, recombineThreshold: 1e9 }],
    ];
    for (const [a, oa, b, ob] of pairs) {
      await prune({ ...base, ...oa, output: out(a) } as Parameters<typeof prune>[0], quiet);
      const r = await prune({ ...base, ...ob, output: out(b) } as Parameters<typeof prune>[0], quiet);
      for (const l of r.layers)
        expect(l.recombined).toEqual({ segments: expect.any(Number), merged: 0, experts_changed: [] });
      expect(files(out(b))).toEqual(files(out(a)));
    }
  });
});

/** A layer of three experts of width w over hidden h, held in memory: what recombineLayer reads. */
function fakeLayer(w: number, h: number) {
  const rand = mulberry32(11);
  const randn = (n: number) => Float32Array.from({ length: n }, () => rand() * 2 - 1);
  const e0 = { gate: randn(w * h), up: randn(w * h), down: randn(h * w) };
  // Expert 1: expert 0's neurons in another order, up and down negated on every other one.
  const perm = [...Array(w).keys()].map((j) => (j * 5 + 3) % w);
  const e1 = { gate: new Float32Array(w * h), up: new Float32Array(w * h), down: new Float32Array(h * w) };
  perm.forEach((src, j) => {
    const sign = j % 2 ? -1 : 1;
    for (let c = 0; c < h; c++) {
      e1.gate[j * h + c] = e0.gate[src * h + c];
      e1.up[j * h + c] = sign * e0.up[src * h + c];
      e1.down[c * w + j] = sign * e0.down[c * w + src];
    }
  });
  const e2 = { gate: randn(w * h), up: randn(w * h), down: randn(h * w) };
  const experts = [e0, e1, e2];
  const tensors = new Map<string, Float32Array>();
  experts.forEach((e, i) => {
    tensors.set(`e${i}.gate`, e.gate);
    tensors.set(`e${i}.up`, e.up);
    tensors.set(`e${i}.down`, e.down);
  });
  tensors.set('router', randn(3 * h));
  const reader = { f32: (n: string) => tensors.get(n)!, has: (n: string) => tensors.has(n) } as unknown as TensorReader;
  const arch = {
    hidden: h,
    expertWidth: w,
    numExperts: 3,
    expertGlu: undefined,
    routerKey: () => 'router',
    expertKey: (_l: number, e: number, p: string) => `e${e}.${p}`,
    expertBiasKey: () => undefined,
  } as unknown as Architecture;
  return { reader, arch, e0 };
}

test("a kept expert's permuted, sign-flipped twin merges back neuron for neuron; an unrelated expert does not", async () => {
  const [w, h] = [16, 64];
  const { reader, arch, e0 } = fakeLayer(w, h);
  const r = await recombineLayer(reader, arch, 0, [0], [0.5, 0.3, 0.2], DEFAULT_RECOMBINE_THRESHOLD, new RefBackend());
  expect(r.segments).toBe(2 * w);
  // Every twin segment merges (with its sign undone), no unrelated one does.
  expect(r.recombined).toBe(w);
  const e = r.experts[0]!;
  for (const p of ['gate', 'up', 'down'] as const)
    e[p].forEach((v, i) => expect(Math.abs(v - e0[p][i])).toBeLessThan(1e-6));
});

test('trained fixture tiny-moe: dern merges neurons into the experts it names, the others are copies', async () => {
  const model = path.join(ROOT, 'fixtures', 'tiny-moe');
  const stats = path.join(tmpDir(), 'stats');
  await calibrate(
    { model, output: stats, data: path.join(ROOT, 'fixtures', 'text', 'calib.txt'), seqLen: 128, maxTokens: 2048 },
    quiet,
  );
  const [reap, dern] = [path.join(tmpDir(), 'reap'), path.join(tmpDir(), 'dern')];
  await prune({ model, stats, method: 'reap', keep: 4, output: reap }, quiet);
  const r = await prune({ model, stats, method: 'dern', keep: 4, output: dern }, quiet);
  const { openCheckpoint, TensorReader: Reader } = await import('../../src/io/checkpoint');
  const { loadArchitecture } = await import('../../src/model/registry');
  const a = new Reader(openCheckpoint(reap));
  const b = new Reader(openCheckpoint(dern));
  const arch = loadArchitecture(openCheckpoint(reap));
  let changed = 0;
  try {
    for (const l of r.layers) {
      expect(l.recombined!.merged).toBeGreaterThan(0);
      for (let e = 0; e < 4; e++) {
        const same = Buffer.from(a.bytes(arch.expertKey(l.layer, e, 'down'))).equals(
          Buffer.from(b.bytes(arch.expertKey(l.layer, e, 'down'))),
        );
        expect([l.layer, e, same]).toEqual([l.layer, e, !l.recombined!.experts_changed.includes(e)]);
        changed += same ? 0 : 1;
      }
    }
  } finally {
    a.close();
    b.close();
  }
  expect(changed).toBeGreaterThan(0);
});
