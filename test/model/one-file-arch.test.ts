/**
 * The one-file rule, proved: test/fixtures-arch/toy-moe.ts defines an architecture moe has never seen ("toy_moe":
 * Mixtral's mathematics under its own model_type and MoE tensor names, its own forward spec, synth preset and GGUF
 * mapping), one registry call adds it, and the CLI runs it end to end in-process: synth, inspect, eval, calibrate,
 * prune, quantize --format gguf, and eval/inspect of the GGUF read back. Its numbers are checked against a Mixtral
 * checkpoint holding the same weights under Mixtral's names: same parameters, same perplexity, same pruned model,
 * same GGUF perplexity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openCheckpoint } from '../../src/io/checkpoint';
import { readGguf } from '../../src/io/gguf-reader';
import { main } from '../../src/main';
import { loadArchitecture, modelTypes, registerArchitecture } from '../../src/model/registry';
import { PRESETS } from '../../src/synth/presets';
import { toyMoe } from '../fixtures-arch/toy-moe';
import { rawHeader, ROOT, tmpDir, writeRaw } from '../helpers';

registerArchitecture(toyMoe);

/** Pre-tokenized windows of a text's bytes (the toy's vocabulary is the 256 bytes). */
function byteWindows(file: string, windows: number, T: number, dest: string): string {
  const bytes = fs.readFileSync(path.join(ROOT, 'fixtures', 'text', file));
  const ids = [...Array(windows).keys()].map((w) => [...bytes.subarray(w * T, (w + 1) * T)]);
  fs.writeFileSync(dest, JSON.stringify(ids));
  return dest;
}

async function moe(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const out = jest.spyOn(process.stdout, 'write').mockImplementation((s) => ((stdout += String(s)), true));
  const err = jest.spyOn(process.stderr, 'write').mockImplementation((s) => ((stderr += String(s)), true));
  const signals = ['SIGINT', 'SIGTERM'].map((sig) => [sig, process.listeners(sig as NodeJS.Signals)] as const);
  try {
    const code = await main(args);
    return { code, stdout, stderr };
  } finally {
    out.mockRestore();
    err.mockRestore();
    for (const [sig, before] of signals) {
      for (const l of process.listeners(sig as NodeJS.Signals)) if (!before.includes(l)) process.removeListener(sig, l);
    }
  }
}

/** Runs a command that must succeed and returns its JSON report. */
async function ok(args: string[]): Promise<Record<string, unknown>> {
  const r = await moe(args);
  if (r.code !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** A byte-level BPE tokenizer.json with no merges (GPT-2's byte → character map): ids 0..255. */
function byteTokenizer(): Record<string, unknown> {
  const bs: number[] = [];
  for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) bs.push(b);
  const cs = [...bs];
  for (let b = 0, n = 0; b < 256; b++) {
    if (bs.includes(b)) continue;
    bs.push(b);
    cs.push(256 + n++);
  }
  const vocab = Object.fromEntries(bs.map((b, i) => [String.fromCharCode(cs[i]), b]));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, use_regex: true };
  return { model: { type: 'BPE', vocab, merges: [] }, pre_tokenizer: byteLevel, decoder: byteLevel, added_tokens: [] };
}

/** The toy checkpoint as Mixtral: same bytes, Mixtral's tensor names and config keys. */
function asMixtral(toy: string, dest: string): void {
  fs.mkdirSync(dest);
  const proj: Record<string, string> = { gate: 'w1', up: 'w3', down: 'w2' };
  const rename = (n: string) =>
    n
      .replace(/\.moe\.router\.weight$/, '.block_sparse_moe.gate.weight')
      .replace(
        /\.moe\.experts\.(\d+)\.w_(gate|up|down)\./,
        (_m, e: string, p: string) => `.block_sparse_moe.experts.${e}.${proj[p]}.`,
      );
  const file = path.join(toy, 'model.safetensors');
  const { n, json } = rawHeader(file);
  const header = Object.fromEntries(Object.entries(json).map(([k, v]) => [k === '__metadata__' ? k : rename(k), v]));
  writeRaw(path.join(dest, 'model.safetensors'), header, fs.readFileSync(file).subarray(8 + n));
  const config = JSON.parse(fs.readFileSync(path.join(toy, 'config.json'), 'utf8'));
  const mixtral = { ...config, model_type: 'mixtral', architectures: ['MixtralForCausalLM'] };
  fs.writeFileSync(path.join(dest, 'config.json'), JSON.stringify(mixtral));
  fs.copyFileSync(path.join(toy, 'tokenizer.json'), path.join(dest, 'tokenizer.json'));
}

describe('an architecture defined in test/ and registered with one call', () => {
  const work = tmpDir();
  const toy = path.join(work, 'toy');
  const mix = path.join(work, 'mixtral');
  const EVAL = ['--data', byteWindows('eval.txt', 4, 32, path.join(work, 'eval.json')), '--backend', 'ref', '--json'];

  beforeAll(async () => {
    const r = await moe(['synth', '--arch', 'toy_moe', '--set', 'vocab_size=256', '--seed', '7', '-o', toy]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`wrote ${toy}: toy_moe, 41 tensors in 1 shard(s)\n`);
    fs.writeFileSync(path.join(toy, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
    asMixtral(toy, mix);
  }, 30_000);

  test('is listed by the registry and the synth presets; synth wrote its own tensor names', () => {
    const builtIn = [
      'mixtral',
      'qwen2_moe',
      'qwen3_moe',
      'olmoe',
      'deepseek_v2',
      'deepseek_v3',
      'deepseek_v32',
      'gpt_oss',
      'qwen3_next',
      'qwen3_5_moe_text',
      'minimax_m2',
      'glm4_moe',
      'llama4_text',
      'dots1',
      'ernie4_5_moe',
      'hunyuan_v1_moe',
      'granitemoe',
      'phimoe',
    ];
    expect(modelTypes()).toEqual([...builtIn, 'toy_moe']);
    expect(Object.keys(PRESETS)).toContain('toy_moe');
    const names = Object.keys(rawHeader(path.join(toy, 'model.safetensors')).json);
    expect(names).toContain('model.layers.1.moe.experts.3.w_down.weight');
    expect(names).toContain('model.layers.0.moe.router.weight');
    expect(names.filter((n) => n.includes('block_sparse_moe') || n.includes('.w1.'))).toEqual([]);
    const config = JSON.parse(fs.readFileSync(path.join(toy, 'config.json'), 'utf8'));
    expect(config).toMatchObject({ model_type: 'toy_moe', num_local_experts: 4 });
  });

  test('inspect, eval: the same parameters and perplexity as Mixtral on the same weights', async () => {
    const [ti, mi] = [await ok(['inspect', toy, '--json']), await ok(['inspect', mix, '--json'])];
    expect(ti).toMatchObject({ model_type: 'toy_moe', experts_per_layer: [4, 4], top_k: 2 });
    expect(ti.params_total).toBe(mi.params_total);
    expect(ti.params_active).toBe(mi.params_active);
    const [te, me] = [await ok(['eval', toy, ...EVAL]), await ok(['eval', mix, ...EVAL])];
    expect(te.positions).toBe(124);
    expect(te.perplexity).toBe(me.perplexity);
    expect(te.perplexity).toBeGreaterThan(1);
  }, 60_000);

  test('calibrate and prune: the pruned toy has 2 experts per layer and evaluates as the pruned Mixtral', async () => {
    const cal = ['--data', byteWindows('calib.txt', 8, 32, path.join(work, 'calib.json')), '--backend', 'ref'];
    const prune = ['--method', 'frequency', '--keep', '2', '--json'];
    for (const [m, name] of [
      [toy, 'toy'],
      [mix, 'mix'],
    ]) {
      await ok(['calibrate', m, ...cal, '-o', path.join(work, `${name}-stats`), '--json']);
      const stats = path.join(work, `${name}-stats`);
      await ok(['prune', m, '--stats', stats, ...prune, '-o', path.join(work, `${name}-k2`)]);
    }
    const ckpt = openCheckpoint(path.join(work, 'toy-k2'));
    const arch = loadArchitecture(ckpt); // every tensor the config implies, with its shape
    expect(arch.modelType).toBe('toy_moe');
    expect(arch.numExperts).toBe(2);
    expect(ckpt.config.num_local_experts).toBe(2);
    expect(ckpt.tensors.get('model.layers.0.moe.router.weight')!.shape).toEqual([2, 64]);
    expect(ckpt.tensors.has('model.layers.0.moe.experts.2.w_gate.weight')).toBe(false);
    const te = await ok(['eval', path.join(work, 'toy-k2'), ...EVAL]);
    const me = await ok(['eval', path.join(work, 'mix-k2'), ...EVAL]);
    expect(te.perplexity).toBe(me.perplexity);
  }, 120_000);

  test('quantize --format gguf: its own llama.cpp architecture, read back by inspect and eval', async () => {
    const gguf = (m: string, type: string) => path.join(work, `${path.basename(m)}-${type}.gguf`);
    for (const [m, type] of [
      [toy, 'f32'],
      [toy, 'q8_0'],
      [mix, 'q8_0'],
    ]) {
      await ok(['quantize', m, '--format', 'gguf', '--type', type, '-o', gguf(m, type), '--json']);
    }
    const g = readGguf(gguf(toy, 'q8_0'));
    expect(g.metadata.get('general.architecture')).toBe('toymoe');
    expect(g.metadata.get('toymoe.expert_count')).toBe(4);
    expect(g.tensors.find((t) => t.name === 'blk.1.ffn_down_exps.weight')!.shape).toEqual([4, 64, 32]);
    // The same tensors as Mixtral's GGUF: only the architecture name differs.
    const names = (f: string) => readGguf(f).tensors.map((t) => `${t.name} ${t.shape} ${t.type}`);
    expect(names(gguf(toy, 'q8_0'))).toEqual(names(gguf(mix, 'q8_0')));
    const inspected = await ok(['inspect', gguf(toy, 'q8_0'), '--json']);
    expect(inspected).toMatchObject({ model_type: 'toy_moe', experts_per_layer: [4, 4] });
    const base = await ok(['eval', toy, ...EVAL]);
    const f32 = await ok(['eval', gguf(toy, 'f32'), ...EVAL]);
    expect(Math.abs((f32.perplexity as number) / (base.perplexity as number) - 1)).toBeLessThanOrEqual(1e-5);
    const [tq, mq] = [await ok(['eval', gguf(toy, 'q8_0'), ...EVAL]), await ok(['eval', gguf(mix, 'q8_0'), ...EVAL])];
    expect(tq.perplexity).toBe(mq.perplexity);
    expect(Math.abs((tq.perplexity as number) / (base.perplexity as number) - 1)).toBeLessThan(0.01);
  }, 120_000);
});
