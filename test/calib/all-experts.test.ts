/**
 * MoE-aware calibration (issue 24): --all-experts gives every routed expert the inputs of every token without
 * changing what the routed pass records, and --hessian-weighting gate (MoEQuant's AGQ) weighs each token's part of
 * an expert's Hessian by its routing weight (router probability when not routed), checked against a direct sum.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { CalibrationStats } from '../../src/calib/stats';
import { calibrate, CalibrateOptions } from '../../src/commands/calibrate';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import { ForwardPass } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, runMain, seededWindows, tmpDir } from '../helpers';

function dataFile(vocab: number, n = 4): string {
  const file = path.join(tmpDir(), 'data.json');
  fs.writeFileSync(file, JSON.stringify(seededWindows(n, 16, vocab, 3)));
  return file;
}

async function stats(model: string, data: string, extra: Partial<CalibrateOptions>): Promise<string> {
  const out = path.join(tmpDir(), 'stats');
  await calibrate(
    { model, output: out, data, seqLen: 16, hessians: true, naeeTokens: 8, backend: 'ref', ...extra },
    quiet,
  );
  return out;
}

/** Every tensor of a safetensors file, by name, as bytes. */
function tensorBytes(file: string): Map<string, Buffer> {
  const ckpt = openTensorFile(file);
  const r = new TensorReader(ckpt);
  const out = new Map([...ckpt.tensors.keys()].map((n) => [n, Buffer.from(r.bytes(n))]));
  r.close();
  return out;
}

const CASES: [string, string][] = [
  ['qwen3_moe (softmax, top-k renormalised)', path.join(GOLDEN, 'qwen3_moe')],
  ['deepseek_v3 (sigmoid, grouped, scaled, shared expert, dense first layer)', path.join(GOLDEN, 'deepseek_v3')],
];

describe.each(CASES)('%s', (_name, model) => {
  const arch = loadArchitecture(openCheckpoint(model));
  let data: string;
  let plain: string;
  let all: string;
  let agq: string;

  beforeAll(async () => {
    data = dataFile(arch.vocab);
    plain = await stats(model, data, {});
    all = await stats(model, data, { allExperts: true });
    agq = await stats(model, data, { allExperts: true, hessianWeighting: 'gate' });
  });

  test('--all-experts: the routed statistics and every non-expert input are byte-identical; every expert saw every token', () => {
    const a = tensorBytes(path.join(plain, 'stats.safetensors'));
    const b = tensorBytes(path.join(all, 'stats.safetensors'));
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    let routed = 0;
    for (const [name, bytes] of a) {
      const role = arch.classify(name.replace(/^(rows|imatrix|hessian)\//, ''));
      if (role?.kind === 'expert') continue;
      expect({ name, same: bytes.equals(b.get(name)!) }).toEqual({ name, same: true });
      if (name.startsWith('layers.')) routed++;
    }
    expect(routed).toBe(12 * arch.moeLayers.length);
    const s = new CalibrationStats(all);
    const tokens = s.json.data.tokens;
    expect(s.json.all_experts).toBe(true);
    for (const l of arch.moeLayers) {
      for (let e = 0; e < arch.numExperts; e++) {
        for (const proj of ['gate', 'down'] as const) {
          const w = arch.expertKey(l, e, proj);
          expect(s.f64(`rows/${w}`)[0]).toBe(tokens);
          const h = s.f32(`hessian/${w}`);
          const n = Math.round(Math.sqrt(h.length));
          let trace = 0;
          for (let i = 0; i < n; i++) trace += h[i * n + i];
          expect(trace).toBeGreaterThan(0);
        }
      }
    }
    s.close();
  });

  test("--hessian-weighting gate: an expert's Hessian is Σ c·x xᵀ, c its routing weight or router probability", async () => {
    const layer = arch.moeLayers[arch.moeLayers.length - 1];
    const expert = 1;
    // the MoE block's input rows and the router's decisions, from a plain forward pass
    const ckpt = openCheckpoint(model);
    const reader = new TensorReader(ckpt);
    const fp = new ForwardPass(reader, arch, new RefBackend(), { cacheBytes: 0 });
    const h = arch.hidden;
    const want = new Float64Array(h * h);
    const k = arch.topK;
    for (const w of JSON.parse(fs.readFileSync(data, 'utf8')) as number[][]) {
      await fp.run(Int32Array.from(w), 1, w.length, () => {}, {
        router: (l, r, x, tokens) => {
          if (l !== layer) return;
          for (let t = 0; t < tokens; t++) {
            let c = r.probs[t * arch.numExperts + expert];
            for (let j = 0; j < k; j++) if (r.experts[t * k + j] === expert) c = r.weights[t * k + j];
            for (let a = 0; a < h; a++) for (let b = 0; b < h; b++) want[a * h + b] += c * x[t * h + a] * x[t * h + b];
          }
        },
      });
    }
    reader.close();
    const s = new CalibrationStats(agq);
    expect(s.json.hessian_weighting).toBe('gate');
    const got = s.f32(`hessian/${arch.expertKey(layer, expert, 'gate')}`);
    const unweighted = new CalibrationStats(all).f32(`hessian/${arch.expertKey(layer, expert, 'gate')}`);
    let err = 0;
    let scale = 0;
    let moved = 0;
    for (let i = 0; i < want.length; i++) {
      err = Math.max(err, Math.abs(got[i] - want[i]));
      scale = Math.max(scale, Math.abs(want[i]));
      moved = Math.max(moved, Math.abs(unweighted[i] - want[i]));
    }
    expect(err / scale).toBeLessThan(1e-5);
    expect(moved / scale).toBeGreaterThan(1e-2); // the weighting changes it
    // attention and router inputs are not weighted
    const plainStats = tensorBytes(path.join(all, 'stats.safetensors'));
    const weighted = tensorBytes(path.join(agq, 'stats.safetensors'));
    for (const [name, bytes] of plainStats)
      if (!name.includes('.experts.') || !name.startsWith('hessian/'))
        expect(bytes.equals(weighted.get(name)!)).toBe(true);
    s.close();
  });
});

test('with every gate weight 1 (top-1, renormalised), gate-weighted GPTQ equals plain GPTQ byte for byte', async () => {
  const model = path.join(tmpDir(), 'top1');
  const synth = await runMain([
    'synth',
    '--arch',
    'qwen3_moe',
    '--set',
    'num_experts_per_tok=1',
    'norm_topk_prob=true',
    'num_hidden_layers=2',
    '-o',
    model,
  ]);
  expect(synth.code).toBe(0);
  const arch = loadArchitecture(openCheckpoint(model));
  const data = dataFile(arch.vocab, 32);
  const plain = await stats(model, data, {});
  const gate = await stats(model, data, { hessianWeighting: 'gate' });
  const a = tensorBytes(path.join(plain, 'stats.safetensors'));
  const b = tensorBytes(path.join(gate, 'stats.safetensors'));
  for (const [name, bytes] of a) expect(bytes.equals(b.get(name)!)).toBe(true);
  const outs: Buffer[][] = [];
  const fallbacks: string[][] = [];
  for (const s of [plain, gate]) {
    const out = path.join(tmpDir(), 'q');
    const r = await quantize(
      { model, output: out, bits: 3, method: 'gptq', stats: s, backend: 'ref', format: 'packed' },
      quiet,
    );
    fallbacks.push(r.gptq_fallbacks);
    const shards = fs.readdirSync(out).filter((f) => f.endsWith('.safetensors'));
    outs.push(shards.map((f) => fs.readFileSync(path.join(out, f))));
  }
  // experts no token chose fall back to RTN in both; the others went through GPTQ
  expect(fallbacks[1]).toEqual(fallbacks[0]);
  const expertWeights = arch.moeLayers.length * arch.numExperts * 3;
  expect(fallbacks[0].length).toBeLessThan(expertWeights / 2);
  expect(outs[0].length).toBeGreaterThan(0);
  outs[0].forEach((buf, i) => expect(buf.equals(outs[1][i])).toBe(true));
});

test('--hessian-weighting gate without --hessians is refused with one line; nothing is written', async () => {
  const model = path.join(GOLDEN, 'qwen3_moe');
  const work = tmpDir();
  const r = await runMain([
    'calibrate',
    model,
    '--data',
    dataFile(loadArchitecture(openCheckpoint(model)).vocab),
    '--seq-len',
    '16',
    '--hessian-weighting',
    'gate',
    '-o',
    path.join(work, 's'),
  ]);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toMatch(/--hessian-weighting gate .* needs --hessians/);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(fs.readdirSync(work)).toEqual([]);
});
