/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * `moe quantize --awq` on the trained fixture: the CLI's report (α per group in --report, a summary in --json), the
 * output re-opened with its folded norms checked against the fold recomputed from the reported α, perplexity finite;
 * GPTQ into compressed-tensors (the router left unquantized, so stored rescaled); and the refusals.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../../src/calib/stats';
import { evalCommand } from '../../src/commands/eval';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { fromFloat32, toFloat32 } from '../../src/io/dtype';
import { scalesAt } from '../../src/quant/awq';
import { Weighting } from '../../src/quant/weighting';
import { fixtureStats, quiet, ROOT, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const EVAL = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
const norm = (l: number, which: 'input' | 'post_attention') => `model.layers.${l}.${which}_layernorm.weight`;

const ppl = async (dir: string) =>
  (await evalCommand({ model: dir, data: EVAL, seqLen: 256, maxTokens: 2048 }, quiet)).perplexity;

describe('moe quantize --awq', () => {
  let stats: string;
  const original = new TensorReader(openCheckpoint(MODEL));
  beforeAll(async () => {
    stats = await fixtureStats();
  }, 120_000);
  afterAll(() => original.close());

  test('RTN 4-bit packed: α per group reported, folded norms re-opened and recomputed, perplexity finite', async () => {
    const out = path.join(tmpDir(), 'q');
    const report = path.join(tmpDir(), 'report.json');
    const args = ['quantize', MODEL, '--stats', stats, '--bits', '4', '--method', 'rtn', '--awq'];
    const r = await runMain([...args, '--report', report, '-o', out, '--json']);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout);
    expect(json.awq).toMatchObject({ groups: 3 * (3 + 8), skipped: [] });
    expect(json.awq.by_group).toBeUndefined();
    expect(json.awq.loss).toBeLessThanOrEqual(json.awq.loss_alpha0);
    const byGroup: { group: string; alpha: number }[] = JSON.parse(fs.readFileSync(report, 'utf8')).awq.by_group;
    expect(byGroup).toHaveLength(33);
    const alpha = new Map(byGroup.map((g) => [g.group, g.alpha]));

    const q = new TensorReader(openCheckpoint(out));
    const s = new CalibrationStats(stats);
    const w = new Weighting(s, 1, 1.5);
    for (let l = 0; l < 3; l++) {
      for (const [which, group, source] of [
        ['input', 'attn_in', `model.layers.${l}.self_attn.q_proj.weight`],
        ['post_attention', 'mlp_in', `model.layers.${l}.mlp.gate.weight`],
      ] as const) {
        const a = alpha.get(`layers.${l}.${group}`)!;
        const name = norm(l, which);
        // the fold recomputed: m = sqrt(mean x²) of the group's input, s = m^α / sqrt(max·min), w' = bf16(w / s)
        const sc = scalesAt(w.importance(source)!.map(Math.sqrt), a);
        const expected = fromFloat32(
          original.f32(name).map((v, i) => v / sc[i]),
          'BF16',
        );
        expect(Buffer.from(q.bytes(name)).equals(Buffer.from(expected))).toBe(true);
        if (a > 0) expect(Buffer.from(q.bytes(name)).equals(Buffer.from(original.bytes(name)))).toBe(false);
      }
    }
    s.close();
    q.close();
    expect(Number.isFinite(await ppl(out))).toBe(true);
  }, 60_000);

  test('GPTQ 3-bit into compressed-tensors: the unquantized router is stored rescaled; the output loads', async () => {
    const out = path.join(tmpDir(), 'ct');
    const r = await quantize(
      { model: MODEL, output: out, stats, bits: 3, method: 'gptq', format: 'compressed-tensors', awq: true },
      quiet,
    );
    expect(r.awq!.groups).toBe(33);
    const q = new TensorReader(openCheckpoint(out));
    const router = 'model.layers.1.mlp.gate.weight';
    const mlpIn = r.awq!.by_group!.find((g) => g.group === 'layers.1.mlp_in')!;
    const folded = toFloat32(q.bytes(router), q.dtype(router));
    // W·diag(s) with the norm divided by s: the product of a router column and its norm weight is unchanged
    const cols = 256;
    const n0 = original.f32(norm(1, 'post_attention'));
    const n1 = q.f32(norm(1, 'post_attention'));
    const w0 = original.f32(router);
    let worst = 0;
    for (let i = 0; i < folded.length; i++) {
      const c = i % cols;
      const ref = w0[i] * n0[c];
      worst = Math.max(worst, Math.abs(folded[i] * n1[c] - ref) / (Math.abs(ref) + 1e-3));
    }
    expect(worst).toBeLessThan(1e-2); // bf16 rounding of the rescaled router
    if (mlpIn.alpha > 0) expect(Buffer.from(q.bytes(router)).equals(Buffer.from(original.bytes(router)))).toBe(false);
    q.close();
    expect(Number.isFinite(await ppl(out))).toBe(true);
  }, 60_000);

  test('refused: --awq without --stats (usage), and with --format gguf', async () => {
    const out = path.join(tmpDir(), 'x');
    const a = await runMain(['quantize', MODEL, '--bits', '4', '--awq', '-o', out]);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/--awq needs --stats/);
    const b = await runMain([
      'quantize',
      MODEL,
      '--format',
      'gguf',
      '--type',
      'q4_k',
      '--awq',
      '--stats',
      stats,
      '-o',
      out,
    ]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/--awq is not implemented for --format gguf/);
  });
});
