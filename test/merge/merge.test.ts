import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { calibrate } from '../../src/commands/calibrate';
import { formatMerge, merge } from '../../src/commands/merge';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { loadArchitecture } from '../../src/model/registry';
import { alignExperts, ExpertWeights, permuteExpert } from '../../src/merge/align';
import { greedyDense, hungarianMax } from '../../src/merge/assignment';
import { hierarchicalGroups, msmoeGroups } from '../../src/merge/grouping';
import { mulberry32 } from '../../src/util/random';
import { GOLDEN, listDir, quiet, runMain, tmpDir } from '../helpers';

/** Bytes of a folder's .safetensors files, computed here independently of src/io/size.ts. */
const filesBytes = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);

function randomExpert(width: number, hidden: number, seed: number): ExpertWeights {
  const r = mulberry32(seed);
  const f = (n: number) => Float32Array.from({ length: n }, () => r() * 2 - 1);
  return { gate: f(width * hidden), up: f(width * hidden), down: f(hidden * width) };
}

function shuffled(n: number, seed: number): Int32Array {
  const r = mulberry32(seed);
  const p = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

describe('assignment', () => {
  test('the Hungarian method finds the optimum of every permutation on small matrices', () => {
    const r = mulberry32(11);
    for (const n of [1, 2, 3, 5, 6]) {
      const sim = Float64Array.from({ length: n * n }, () => r());
      const perm = hungarianMax(sim, n);
      const score = (p: ArrayLike<number>) => Array.from(p).reduce((s, c, i) => s + sim[i * n + c], 0);
      let best = -Infinity;
      const permute = (a: number[], k: number): void => {
        if (k === a.length) {
          best = Math.max(best, score(a));
          return;
        }
        for (let i = k; i < a.length; i++) {
          [a[k], a[i]] = [a[i], a[k]];
          permute(a, k + 1);
          [a[k], a[i]] = [a[i], a[k]];
        }
      };
      permute([...Array(n).keys()], 0);
      expect(new Set(perm).size).toBe(n);
      expect(score(perm)).toBeCloseTo(best, 12);
      expect(new Set(greedyDense(sim, n)).size).toBe(n);
    }
  });
});

describe('neuron alignment', () => {
  const width = 48;
  const hidden = 16;
  const be = new RefBackend();

  test('merging with a member whose neurons were permuted gives the same merged expert', async () => {
    const dominant = randomExpert(width, hidden, 1);
    // A member close to the dominant expert, so the matching has a clear answer.
    const noise = randomExpert(width, hidden, 2);
    const member: ExpertWeights = {
      gate: dominant.gate.map((v, i) => v + 0.3 * noise.gate[i]),
      up: dominant.up.map((v, i) => v + 0.3 * noise.up[i]),
      down: dominant.down.map((v, i) => v + 0.3 * noise.down[i]),
    };
    const scrambled = permuteExpert(member, shuffled(width, 3), width, hidden);
    const a = await alignExperts(be, dominant, member, width, hidden);
    const b = await alignExperts(be, dominant, scrambled, width, hidden);
    const alignedA = permuteExpert(member, a.perm, width, hidden);
    const alignedB = permuteExpert(scrambled, b.perm, width, hidden);
    for (const p of ['gate', 'up', 'down'] as const) expect(Array.from(alignedB[p])).toEqual(Array.from(alignedA[p]));
    expect(a.method).toBe('exact');
    expect(b.scoreAfter).toBeGreaterThan(b.scoreBefore);
    expect(b.scoreAfter).toBeCloseTo(a.scoreAfter, 6);
  });

  test('the approximate path (projected features, sparse matching) recovers a hidden permutation', async () => {
    const dominant = randomExpert(width, hidden, 4);
    const perm = shuffled(width, 5);
    const member = permuteExpert(dominant, perm, width, hidden);
    // exact only up to width 8: force the approximation
    const a = await alignExperts(be, dominant, member, width, hidden, 0, 8);
    expect(a.method).toBe('approximate');
    // Member neuron j is dominant neuron perm[j], so dominant neuron j must take member neuron perm⁻¹[j].
    const inverse = new Int32Array(width);
    perm.forEach((p, j) => (inverse[p] = j));
    expect(Array.from(a.perm)).toEqual(Array.from(inverse));
    const back = permuteExpert(member, a.perm, width, hidden);
    expect(Array.from(back.down)).toEqual(Array.from(dominant.down));
    expect(a.scoreAfter).toBeCloseTo(1, 5);
  });
});

describe('grouping', () => {
  const freq = [10, 1, 8, 2, 0, 7, 3, 1];
  // Similarity: experts 2k and 2k+1 alike.
  const E = 8;
  const sim = Float64Array.from({ length: E * E }, (_, i) => (Math.floor(i / E) >> 1 === (i % E) >> 1 ? 0.9 : 0.1));

  test('M-SMoE: the K most frequent are dominant; others join their most similar dominant', () => {
    const g = msmoeGroups(freq, sim, E, 4);
    expect(g.map((x) => x.dominant)).toEqual([0, 2, 5, 6]);
    expect(g.find((x) => x.dominant === 0)!.members).toEqual([0, 1]);
    expect(g.flatMap((x) => x.members).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  test('HC-SMoE: clusters alike experts; with routing groups, merges stay inside each group', () => {
    const g = hierarchicalGroups(freq, sim, E, 4, 'average');
    expect(g.map((x) => x.members.slice().sort())).toEqual([
      [0, 1],
      [2, 3],
      [4, 5],
      [6, 7],
    ]);
    expect(g.map((x) => x.dominant)).toEqual([0, 2, 5, 6]);
    const grouped = hierarchicalGroups(freq, sim, E, 2, 'complete', 2);
    expect(grouped.every((x) => x.members.every((e) => Math.floor(e / 4) === Math.floor(x.dominant / 4)))).toBe(true);
  });
});

describe('moe merge', () => {
  let stats: string;
  const model = path.join(GOLDEN, 'qwen3_moe');

  beforeAll(async () => {
    const file = path.join(tmpDir(), 'd.json');
    let x = 9;
    fs.writeFileSync(
      file,
      JSON.stringify(
        [...Array(6)].map(() => [...Array(16)].map(() => (x = (x * 1103515245 + 12345) % 2147483648) % 256)),
      ),
    );
    stats = path.join(tmpDir(), 'stats');
    await calibrate({ model, output: stats, data: file, seqLen: 16, backend: 'ref' }, quiet);
  });

  test.each(['msmoe', 'hcsmoe', 'average'])(
    '%s writes a checkpoint of merged experts that moe reads, with the groups recorded',
    async (method) => {
      const out = path.join(tmpDir(), method);
      const report = await merge({ model, stats, method, keep: 4, output: out, backend: 'ref' }, quiet);
      expect(report.size_bytes).toBe(filesBytes(out));
      expect(formatMerge(report)).toContain(`${(filesBytes(out) / 1e6).toFixed(2)} MB`);
      const src = openCheckpoint(model);
      const dst = openCheckpoint(out);
      const arch = loadArchitecture(src);
      const a = new TensorReader(src);
      const b = new TensorReader(dst);
      for (const l of report.layers) {
        expect(l.groups).toHaveLength(4);
        expect(l.groups.flatMap((g) => g.members).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
        l.groups.forEach((g, i) => {
          expect(g.weights.reduce((s, w) => s + w, 0)).toBeCloseTo(1, 12);
          const merged = b.f32(arch.expertKey(l.layer, i, 'up'));
          if (g.members.length === 1) {
            expect(
              Buffer.from(b.bytes(arch.expertKey(l.layer, i, 'up'))).equals(
                Buffer.from(a.bytes(arch.expertKey(l.layer, g.dominant, 'up'))),
              ),
            ).toBe(true);
          } else if (!report.align) {
            // Without alignment the merge is exactly the weighted average.
            const want = new Float32Array(merged.length);
            g.members.forEach((e, m) =>
              a.f32(arch.expertKey(l.layer, e, 'up')).forEach((v, j) => (want[j] += g.weights[m] * v)),
            );
            for (let j = 0; j < want.length; j++) expect(merged[j]).toBeCloseTo(want[j], 6);
          } else {
            expect(g.alignment!.length).toBe(g.members.length - 1);
            for (const al of g.alignment!) expect(al.score_after).toBeGreaterThanOrEqual(al.score_before - 1e-9);
          }
        });
      }
      const record = JSON.parse(fs.readFileSync(path.join(out, 'moe-compression.json'), 'utf8'));
      expect(record).toMatchObject({ operation: 'merge', method, experts_after: 4 });
      expect(record.groups['0'].map((g: { members: number[] }) => g.members)).toEqual(
        report.layers[0].groups.map((g) => g.members),
      );
      expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).num_local_experts).toBe(4);
      const r = await runMain(['inspect', out, '--json']);
      expect(JSON.parse(r.stdout).experts_per_layer).toEqual([4, 4]);
      a.close();
      b.close();
    },
  );

  test("--router weighted writes the frequency-weighted mean of the members' router rows; --dry-run writes nothing", async () => {
    const out = path.join(tmpDir(), 'w');
    const report = await merge(
      { model, stats, method: 'hcsmoe', keep: 4, output: out, router: 'weighted', backend: 'ref' },
      quiet,
    );
    const arch = loadArchitecture(openCheckpoint(model));
    const a = new TensorReader(openCheckpoint(model)).f32(arch.routerKey(0));
    const b = new TensorReader(openCheckpoint(out)).f32(arch.routerKey(0));
    const h = arch.hidden;
    report.layers[0].groups.forEach((g, i) => {
      for (let j = 0; j < h; j++)
        expect(b[i * h + j]).toBeCloseTo(
          g.members.reduce((s, e, m) => s + g.weights[m] * a[e * h + j], 0),
          6,
        );
    });
    const work = tmpDir();
    const dry = await runMain([
      'merge',
      model,
      '--stats',
      stats,
      '--method',
      'msmoe',
      '--keep',
      '4',
      '-o',
      path.join(work, 'x'),
      '--dry-run',
      '--json',
    ]);
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.stdout).layers[0].groups).toHaveLength(4);
    expect(listDir(work)).toEqual([]);
  });
});
