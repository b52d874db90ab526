/**
 * @jest-environment ./test/backend/ort-environment.js
 */
/**
 * `moe quantize --awq` on the trained fixture: the CLI's report (α per group in --report, a summary in --json), the
 * output re-opened with its folded norms checked against the fold recomputed from the reported α, perplexity finite;
 * GPTQ into compressed-tensors, GPTQ and dequantized on a small qwen2_moe (unquantized router and shared-expert
 * gate stored rescaled); and the refusals.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate } from '../../src/commands/calibrate';
import { evalCommand } from '../../src/commands/eval';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { fromFloat32 } from '../../src/io/dtype';
import { scalesAt } from '../../src/quant/awq';
import { Weighting } from '../../src/quant/weighting';
import { fixtureStats, makeSynth, quiet, ROOT, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const EVAL = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
const norm = (l: number, which: 'input' | 'post_attention') => `model.layers.${l}.${which}_layernorm.weight`;

const ppl = async (dir: string) =>
  (await evalCommand({ model: dir, data: EVAL, seqLen: 256, maxTokens: 2048 }, quiet)).perplexity;

/** A random F32 qwen2_moe with its calibration (Hessians) and pre-tokenized data, made once. */
let synthMade: Promise<{ dir: string; stats: string; data: string }> | undefined;
function synth() {
  return (synthMade ??= (async () => {
    const dir = await makeSynth('qwen2_moe', path.join(tmpDir(), 'qwen2'), { dtype: 'F32' });
    const data = path.join(tmpDir(), 'ids.json');
    const ids = [...Array(8)].map((_, w) => [...Array(16)].map((_, i) => (w * 31 + i * 7) % 128));
    fs.writeFileSync(data, JSON.stringify(ids));
    const stats = path.join(tmpDir(), 'stats');
    await calibrate({ model: dir, output: stats, data, seqLen: 16, hessians: true }, quiet);
    return { dir, stats, data };
  })());
}

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

  test.each(['compressed-tensors', 'gptq', 'dequantized'] as const)(
    'qwen2_moe (F32, shared expert and its gate, qkv biases, a dense layer), GPTQ 4-bit, %s: unquantized consumers stored rescaled, the output loads',
    async (format) => {
      const { dir, stats: st, data } = await synth();
      const out = path.join(tmpDir(), format);
      const r = await quantize(
        { model: dir, output: out, stats: st, bits: 4, groupSize: 16, method: 'gptq', format, awq: true },
        quiet,
      );
      expect(r.awq!.groups).toBeGreaterThan(10);
      const src = new TensorReader(openCheckpoint(dir));
      const q = new TensorReader(openCheckpoint(out));
      // The router (unquantized in these engine formats) and the shared-expert gate (never quantized) take W·diag(s)
      // while post_attention_layernorm takes w / s: each column times its norm weight is unchanged (F32: to 1e-6).
      expect(r.awq!.by_group!.some((g) => g.alpha > 0)).toBe(true);
      for (const l of [0, 2]) {
        const alpha = r.awq!.by_group!.find((g) => g.group === `layers.${l}.mlp_in`)!.alpha;
        const unquantized = [`model.layers.${l}.mlp.shared_expert_gate.weight`];
        if (format !== 'dequantized') unquantized.push(`model.layers.${l}.mlp.gate.weight`);
        const n0 = src.f32(norm(l, 'post_attention'));
        const n1 = q.f32(norm(l, 'post_attention'));
        if (alpha > 0) expect(n1).not.toEqual(n0);
        for (const name of unquantized) {
          const [w0, w1] = [src.f32(name), q.f32(name)];
          const cols = n0.length;
          for (let i = 0; i < w0.length; i++)
            expect(Math.abs(w1[i] * n1[i % cols] - w0[i] * n0[i % cols])).toBeLessThanOrEqual(
              1e-6 * (1 + Math.abs(w0[i])),
            );
        }
      }
      src.close();
      q.close();
      const e = await evalCommand({ model: out, data, seqLen: 16 }, quiet);
      expect(Number.isFinite(e.perplexity)).toBe(true);
    },
  );

  test('qwen2_moe: --allocate lp allocates over the folded model; --dry-run reports the search and writes nothing', async () => {
    const { dir, stats: st, data } = await synth();
    const out = path.join(tmpDir(), 'lp');
    const o = { model: dir, output: out, stats: st, bits: 3, groupSize: 16, method: 'rtn' as const, awq: true };
    const r = await quantize({ ...o, bits: 3.5, allocate: 'lp' }, quiet); // attention, shared, dense: ≥ 4 bits
    expect(r.solver).not.toBeNull();
    expect(r.awq!.groups).toBeGreaterThan(10);
    expect(Number.isFinite(r.predicted_cost!)).toBe(true);
    expect(Number.isFinite((await evalCommand({ model: out, data, seqLen: 16 }, quiet)).perplexity)).toBe(true);
    const dry = path.join(tmpDir(), 'dry');
    const d = await runMain([
      'quantize',
      dir,
      '--stats',
      st,
      '--bits',
      '3',
      '--group-size',
      '16',
      '--awq',
      '--dry-run',
      '--json',
      '-o',
      dry,
    ]);
    expect(d.code).toBe(0);
    expect(JSON.parse(d.stdout).awq).toMatchObject({ groups: r.awq!.groups, skipped: [] });
    expect(fs.existsSync(dry)).toBe(false);
  });

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
