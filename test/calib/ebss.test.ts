/**
 * Expert-balanced self-sampling (MoEQuant's EBSS, src/calib/ebss.ts) and the decoder cache forks it runs on:
 * - a forked cache continues exactly as a fresh decode, and the branch it was forked from is left alone (attention,
 *   sliding windows with sinks, MLA, gated delta-net);
 * - the sequences' reported log-probability and imbalance equal a window forward's over the returned ids;
 * - the balance term works: a low τ gives sequences that use the experts more evenly than τ = ∞ (likelihood only),
 *   at a likelihood cost; results are deterministic for a seed;
 * - `moe calibrate --self-sample` writes the sequences beside the stats and calibrates on exactly them.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RefBackend } from '../../src/backend/ref';
import { imbalance, SelfSample, selfSample, SelfSampleOptions } from '../../src/calib/ebss';
import { calibrate, SELF_SAMPLE_FILE } from '../../src/commands/calibrate';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { UsageError } from '../../src/errors';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { Decoder } from '../../src/model/forward/decode';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, ROOT, tmpDir } from '../helpers';

const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');

function open(dir: string): { arch: Architecture; reader: TensorReader } {
  const ckpt = openCheckpoint(dir);
  return { arch: loadArchitecture(ckpt), reader: new TensorReader(ckpt) };
}

describe('Decoder.fork', () => {
  it.each(['qwen3_moe', 'gpt_oss', 'deepseek_v3', 'qwen3_next'])(
    '%s: a fork continues as a fresh decode and leaves its origin alone',
    async (name) => {
      const { arch, reader } = open(path.join(GOLDEN, name));
      const be = new RefBackend();
      const prompt = Int32Array.of(5, 9, 2, 7, 11, 3);
      const dec = new Decoder(reader, arch, be);
      await dec.extend(prompt);
      const fork = dec.fork();
      const a1 = await dec.extend(Int32Array.of(1, 2), true);
      const origin = dec.state;
      dec.state = fork;
      const b = await dec.extend(Int32Array.of(3, 4, 6), true);
      dec.state = origin; // the origin's cache must not hold the fork's tokens
      const a2 = await dec.extend(Int32Array.of(8), true);
      const fresh = async (...parts: number[][]) => {
        const d = new Decoder(reader, arch, be);
        let out: Float32Array = new Float32Array(0);
        for (const p of parts) out = await d.extend(Int32Array.from(p), true);
        return out;
      };
      expect(b).toEqual(await fresh([...prompt], [3, 4, 6]));
      expect(a1).toEqual(await fresh([...prompt], [1, 2]));
      expect(a2).toEqual(await fresh([...prompt], [1, 2], [8]));
      expect(dec.length).toBe(prompt.length + 3);
      reader.close();
    },
  );
});

describe('imbalance', () => {
  it('is 0 for even counts and √E when one expert takes every token', () => {
    expect(imbalance(Float64Array.of(3, 3, 3, 3, 5, 5, 5, 5), 2, 4)).toBe(0);
    expect(imbalance(Float64Array.of(0, 0, 7, 0, 0, 0, 0, 0), 1, 8)).toBeCloseTo(Math.sqrt(8), 12);
    // the mean over layers; a layer's scale does not matter
    expect(imbalance(Float64Array.of(0, 9, 0, 0, 1, 1, 1, 1), 2, 4)).toBeCloseTo(1, 12);
  });
});

describe('selfSample on the trained tiny-moe', () => {
  const { arch, reader } = open(TINY);
  const tok = loadTokenizer(TINY);
  const special = new Set(tok.specialIds!());
  const allowed = Uint8Array.from({ length: arch.vocab }, (_, i) => (special.has(i) ? 0 : 1));
  const be = new RefBackend();
  const base: SelfSampleOptions = {
    samples: 3,
    length: 24,
    width: 3,
    tau: 1.2,
    seed: 5,
    prefix: [],
    allowed,
    moeLayers: arch.moeLayers,
    experts: arch.numExperts,
  };
  const run = (o: Partial<SelfSampleOptions>) => selfSample(new Decoder(reader, arch, be), { ...base, ...o });
  const mean = (s: SelfSample[], f: (x: SelfSample) => number) => s.reduce((a, x) => a + f(x), 0) / s.length;
  let plain: SelfSample[];
  afterAll(() => reader.close());

  it('gives sequences of the full length, with no special token, the same for a seed', async () => {
    plain = await run({});
    expect(plain.map((s) => s.ids.length)).toEqual([24, 24, 24]);
    expect(special.size).toBeGreaterThan(0);
    for (const s of plain) for (const id of s.ids) expect(special.has(id)).toBe(false);
    expect((await run({})).map((s) => [...s.ids])).toEqual(plain.map((s) => [...s.ids]));
    const other = await run({ seed: 6 });
    expect(other.map((s) => [...s.ids])).not.toEqual(plain.map((s) => [...s.ids]));
  });

  it("reports each sequence's log-probability and imbalance as a window forward measures them", async () => {
    for (const s of plain) {
      const T = s.ids.length;
      const { sink, logits } = fullLogits(T, arch.vocab);
      const counts = new Float64Array(arch.moeLayers.length * arch.numExperts);
      await new ForwardPass(reader, arch, be).run(s.ids, 1, T, sink, {
        router: (layer, r) => {
          const row = arch.moeLayers.indexOf(layer);
          for (const e of r.experts) counts[row * arch.numExperts + e]++;
        },
      });
      let lp = 0;
      for (let t = 1; t < T; t++) {
        const row = logits.subarray((t - 1) * arch.vocab, t * arch.vocab);
        const max = row.reduce((m, v) => Math.max(m, v), -Infinity);
        const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
        lp += row[s.ids[t]] - lse;
      }
      expect(s.meanLogProb).toBeCloseTo(lp / (T - 1), 4); // the first token is drawn, not chosen
      expect(s.sigma).toBeCloseTo(imbalance(counts, arch.moeLayers.length, arch.numExperts), 10);
    }
  });

  it('never repeats an n-gram within a sequence with noRepeat', async () => {
    const ngrams = (ids: Int32Array, n: number) => [...ids.slice(n - 1)].map((_, i) => ids.slice(i, i + n).join());
    const repeated = (ids: Int32Array, n: number) => new Set(ngrams(ids, n)).size < ngrams(ids, n).length;
    expect(plain.some((s) => repeated(s.ids, 3))).toBe(true); // beam search loops on this model
    for (const s of await run({ noRepeat: 3 })) expect(repeated(s.ids, 3)).toBe(false);
  });

  it('uses the experts more evenly at a low τ than on likelihood alone, at a likelihood cost', async () => {
    const likelihood = await run({ tau: Infinity });
    const balanced = await run({ tau: 0.1 });
    expect(mean(balanced, (s) => s.sigma)).toBeLessThan(0.8 * mean(likelihood, (s) => s.sigma));
    expect(mean(likelihood, (s) => s.meanLogProb)).toBeGreaterThan(mean(balanced, (s) => s.meanLogProb));
  });
});

describe('moe calibrate --self-sample', () => {
  it('writes the sequences beside the stats and calibrates on exactly them', async () => {
    const out = path.join(tmpDir(), 'stats');
    const opts = { model: TINY, seqLen: 12, naeeTokens: 8, backend: 'ref' as const, seed: 3 };
    const r = await calibrate({ ...opts, output: out, selfSample: 2, sampleWidth: 2 }, quiet);
    const file = path.join(out, SELF_SAMPLE_FILE);
    const windows: number[][] = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(windows.map((w) => w.length)).toEqual([12, 12]);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'stats.json'), 'utf8'));
    expect(json.data.file).toBe(file);
    expect(json.data.sha256).toBe(createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
    expect(json.data.self_sample).toMatchObject({ width: 2, tau: 1.2 });
    expect(r.self_sample!.imbalance).toBeCloseTo(json.data.self_sample.imbalance, 12);
    expect(r.tokens).toBe(24);
    // the same windows given as --data give the same statistics, byte for byte
    const copy = path.join(tmpDir(), 'ebss.json');
    fs.copyFileSync(file, copy);
    const again = path.join(tmpDir(), 'stats');
    const r2 = await calibrate({ ...opts, output: again, data: copy }, quiet);
    expect(fs.readFileSync(path.join(again, 'stats.safetensors'))).toEqual(
      fs.readFileSync(path.join(out, 'stats.safetensors')),
    );
    expect(r2.imbalance).toBeCloseTo(r.imbalance!, 12);
    expect(openTensorFile(path.join(out, 'stats.safetensors')).tensors.size).toBeGreaterThan(0);
  });

  it.each([
    [{ data: path.join(ROOT, 'fixtures', 'text', 'calib.txt') }, /--data or --self-sample/],
    [{ samples: 4 }, /--samples picks from --data/],
  ])('refuses %p with --self-sample', async (extra, message) => {
    const out = path.join(tmpDir(), 'stats');
    const run = calibrate({ model: TINY, output: out, seqLen: 12, selfSample: 1, ...extra }, quiet);
    await expect(run).rejects.toThrow(UsageError);
    await expect(run).rejects.toThrow(message);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('refuses --sample-tau without --self-sample', async () => {
    const run = calibrate({ model: TINY, output: path.join(tmpDir(), 's'), seqLen: 12, sampleTau: 0.5 }, quiet);
    await expect(run).rejects.toThrow(/--sample-tau tunes --self-sample/);
  });
});
