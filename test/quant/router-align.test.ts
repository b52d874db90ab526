/**
 * Router-preserving quantization (src/quant/router-align.ts): the least-squares fit against a direct solution, and
 * end to end on the trained fixture: refitted routers route held-out text more like the original than routers
 * left as they are (--keep-router-fp), at the same checkpoint size.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { quantize, QuantizeOptions } from '../../src/commands/quantize';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { fitRouter, topkOverlap } from '../../src/quant/router-align';
import { quiet, ROOT, runMain, tmpDir } from '../helpers';

function seeded(n: number, seed: number): Float32Array {
  let x = seed;
  return Float32Array.from({ length: n }, () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648 - 0.5;
  });
}

/** aᵀ·b in float64 for a, b [rows, n]. */
function cross(a: Float32Array, b: Float32Array, rows: number, n: number): Float64Array {
  const g = new Float64Array(n * n);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) g[i * n + j] += a[r * n + i] * b[r * n + j];
  return g;
}

test('fitRouter: no drift keeps W (also folded, W₀ = W·diag(s)); a drift x̃ = M·x is undone (logits match) as λ → 0', async () => {
  const [E, h, rows] = [5, 12, 200];
  const w = seeded(E * h, 1);
  const x = seeded(rows * h, 2);
  const same = await fitRouter(w, w, E, h, cross(x, x, rows, h), cross(x, x, rows, h), 0.01);
  for (let i = 0; i < w.length; i++) expect(Math.abs(same[i] - w[i])).toBeLessThan(1e-5);
  // an exact fold (AWQ: inputs ÷ s, router columns × s) is already a perfect fit: the written router W₀ is kept
  const s = Float32Array.from({ length: h }, (_, j) => 0.5 + j / h);
  const xs = x.map((v, i) => v / s[i % h]);
  const w0 = w.map((v, i) => v * s[i % h]);
  const folded = await fitRouter(w, w0, E, h, cross(xs, xs, rows, h), cross(xs, x, rows, h), 0.01);
  for (let i = 0; i < w.length; i++) expect(Math.abs(folded[i] - w0[i])).toBeLessThan(1e-4);
  // x̃_t = M·x_t with M = I + 0.3·R
  const m = seeded(h * h, 3).map((v, i) => (i % (h + 1) === 0 ? 1 : 0) + 0.3 * v);
  const xq = new Float32Array(rows * h);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < h; i++) {
      let s = 0;
      for (let j = 0; j < h; j++) s += m[i * h + j] * x[r * h + j];
      xq[r * h + i] = s;
    }
  const fitted = await fitRouter(w, w, E, h, cross(xq, xq, rows, h), cross(xq, x, rows, h), 1e-7);
  let err = 0;
  let scale = 0;
  let before = 0;
  for (let r = 0; r < rows; r++)
    for (let e = 0; e < E; e++) {
      let want = 0;
      let got = 0;
      let stale = 0;
      for (let j = 0; j < h; j++) {
        want += w[e * h + j] * x[r * h + j];
        got += fitted[e * h + j] * xq[r * h + j];
        stale += w[e * h + j] * xq[r * h + j];
      }
      err = Math.max(err, Math.abs(got - want));
      before = Math.max(before, Math.abs(stale - want));
      scale = Math.max(scale, Math.abs(want));
    }
  expect(err / scale).toBeLessThan(1e-3);
  expect(before / scale).toBeGreaterThan(0.1);
});

test('topkOverlap counts shared experts per token whatever their order', () => {
  expect(topkOverlap(Int32Array.of(0, 1, 2, 3), Int32Array.of(1, 0, 3, 4), 2)).toBe(0.75);
  expect(topkOverlap(Int32Array.of(5, 6), Int32Array.of(7, 8), 2)).toBe(0);
});

describe('--align-router on the trained fixture', () => {
  const model = path.join(ROOT, 'fixtures', 'tiny-moe');
  const evalText = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
  let stats: string;

  beforeAll(async () => {
    stats = path.join(tmpDir(), 'stats');
    await calibrate(
      {
        model,
        output: stats,
        data: path.join(ROOT, 'fixtures', 'text', 'calib.txt'),
        seqLen: 128,
        maxTokens: 4096,
      },
      quiet,
    );
  });

  async function routingOn(dir: string): Promise<number> {
    const r = await runMain([
      'eval',
      dir,
      '--baseline',
      model,
      '--data',
      evalText,
      '--seq-len',
      '128',
      '--max-tokens',
      '4096',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const agree: { agreement: number }[] = JSON.parse(r.stdout).baseline.routing_agreement;
    return agree.reduce((s, a) => s + a.agreement, 0) / agree.length;
  }

  test('routes held-out text more like the original than --keep-router-fp, at the same size', async () => {
    const base: QuantizeOptions = { model, output: '', bits: 3, method: 'rtn', stats };
    const keep = await quantize({ ...base, output: path.join(tmpDir(), 'keep'), keepRouterFp: true }, quiet);
    const align = await quantize({ ...base, output: path.join(tmpDir(), 'align'), alignRouter: true }, quiet);
    expect(align.size_bytes).toBe(keep.size_bytes);
    const a = align.router_alignment!;
    expect(a.tokens).toBe(4096);
    expect(a.layers.map((l) => l.layer)).toEqual([0, 1, 2]);
    expect(a.after).toBeGreaterThan(a.before);
    const [kept, aligned] = [await routingOn(keep.output), await routingOn(align.output)];
    expect(aligned).toBeGreaterThan(kept + 0.005);
    // only the routers differ between the two checkpoints' tensors
    const [rk, ra] = [keep.output, align.output].map((d) => new TensorReader(openCheckpoint(d)));
    const changed = [...openCheckpoint(keep.output).tensors.keys()].filter(
      (n) => !Buffer.from(rk.bytes(n)).equals(Buffer.from(ra.bytes(n))),
    );
    expect(changed.sort()).toEqual([0, 1, 2].map((l) => `model.layers.${l}.mlp.gate.weight`));
    rk.close();
    ra.close();
  });

  test('refusals: no stats; a calibration text that changed; GGUF', async () => {
    const work = tmpDir();
    const noStats = await runMain(['quantize', model, '--bits', '4', '--align-router', '-o', path.join(work, 'q')]);
    expect(noStats.code).not.toBe(0);
    expect(noStats.stderr).toMatch(/--align-router .* needs --stats/);
    // stats whose calibration text is gone
    const text = path.join(work, 'calib.txt');
    fs.copyFileSync(path.join(ROOT, 'fixtures', 'text', 'calib.txt'), text);
    const moved = path.join(work, 'stats');
    await calibrate({ model, output: moved, data: text, seqLen: 64, maxTokens: 256 }, quiet);
    fs.appendFileSync(text, 'changed\n');
    const changed = await runMain([
      'quantize',
      model,
      '--bits',
      '4',
      '--stats',
      moved,
      '--align-router',
      '-o',
      path.join(work, 'q'),
    ]);
    expect(changed.code).not.toBe(0);
    expect(changed.stderr).toMatch(/has changed since calibration/);
    const gguf = await runMain([
      'quantize',
      model,
      '--format',
      'gguf',
      '--type',
      'q4_0',
      '--align-router',
      '-o',
      path.join(work, 'm.gguf'),
    ]);
    expect(gguf.code).not.toBe(0);
    expect(gguf.stderr).toMatch(/--align-router/);
    expect(fs.readdirSync(work).sort()).toEqual(['calib.txt', 'stats']);
  });
});
