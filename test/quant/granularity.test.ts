/**
 * `--granularity layer-projection`: every routed expert of a layer shares the bits of each of gate/up/down (the
 * default of the engine formats), on the qwen3_moe golden calibrated here on a few random windows. The plans give
 * one width per (layer, projection) within the budget; the LP objective orders as the groups refine each other
 * (projection ≤ layer-projection ≤ layer); compressed-tensors' config_groups and GPTQ's `dynamic` name each layer
 * projection's experts with one regex; GGUF refuses per-expert granularity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { quantize, QuantizeOptions, QuantizeReport } from '../../src/commands/quantize';
import { openCheckpoint } from '../../src/io/checkpoint';
import { loadArchitecture } from '../../src/model/registry';
import { defaultGranularity, engineGranularityWarning, mixedWidthsWarning } from '../../src/quant/granularity';
import { groupTargets, quantTargets } from '../../src/quant/plan';
import { GOLDEN, quiet, runMain, tmpDir } from '../helpers';

const MODEL = path.join(GOLDEN, 'qwen3_moe'); // 2 layers, 8 experts, hidden 64, expert width 8
const LAYERS = 2;
const EXPERTS = 8;
const EXPERT_RE = /^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$/;
const tmp = tmpDir('moe-granularity-');
let stats: string;

beforeAll(async () => {
  // 16 windows of 32 token ids (a fixed LCG over the 256-token vocabulary)
  let x = 12345;
  const windows = [...Array(16)].map(() => [...Array(32)].map(() => (x = (x * 1103515245 + 12345) % 2 ** 31) % 256));
  const data = path.join(tmp, 'ids.json');
  fs.writeFileSync(data, JSON.stringify(windows));
  stats = path.join(tmp, 'stats');
  await calibrate({ model: MODEL, output: stats, data, seqLen: 32, backend: 'ref' }, quiet);
});

const lp = (o: Partial<QuantizeOptions>): Promise<QuantizeReport> =>
  quantize(
    {
      model: MODEL,
      output: path.join(tmp, 'none'),
      bits: 3.6,
      stats,
      allocate: 'lp',
      dryRun: true,
      backend: 'ref',
      ...o,
    },
    quiet,
  );

/** (layer, projection) → the set of widths its routed experts take, from a report's groups or a bits map. */
function widthsByLayerProjection(bits: Map<string, number>): Map<string, Set<number>> {
  const out = new Map<string, Set<number>>();
  for (const [name, b] of bits) {
    const m = EXPERT_RE.exec(name);
    if (!m) continue;
    const key = `${m[1]}.${m[3]}`;
    out.set(key, (out.get(key) ?? new Set()).add(b));
  }
  return out;
}

/** Every quantized weight's bits, from --report's groups and the plan's targets. */
function weightBits(report: QuantizeReport, granularity: 'layer-projection' | 'expert'): Map<string, number> {
  const ckpt = openCheckpoint(MODEL);
  const targets = quantTargets(loadArchitecture(ckpt), ckpt.tensors, granularity, false);
  const byGroup = new Map(report.groups.map((g) => [g.group, g.bits]));
  return new Map(targets.map((t) => [t.name, byGroup.get(t.group)!]));
}

test("defaults: what each format's engine runs (vLLM per MoE layer, llama.cpp per layer projection), else per expert", () => {
  expect(
    ['compressed-tensors', 'gptq', 'gguf', 'packed', 'dequantized'].map((f) => defaultGranularity(f as 'gptq')),
  ).toEqual(['layer', 'layer', 'layer-projection', 'expert', 'expert']);
});

test('layer-projection groups: all experts of a layer per projection; gate and up as one when stored fused', () => {
  const ckpt = openCheckpoint(MODEL);
  const groups = groupTargets(quantTargets(loadArchitecture(ckpt), ckpt.tensors, 'layer-projection', false));
  const experts = groups.filter((g) => g.cls === 'expert');
  expect(experts.map((g) => g.key)).toEqual(
    [0, 1].flatMap((l) => ['gate', 'up', 'down'].map((p) => `layers.${l}.experts.${p}`)).sort(),
  );
  for (const g of experts) {
    expect(g.targets.map((t) => t.expert).sort()).toEqual([...Array(EXPERTS).keys()]);
    expect(new Set(g.targets.map((t) => EXPERT_RE.exec(t.name)![3])).size).toBe(1);
  }
  // attention and routers keep the groups they have at expert granularity
  const atExpert = groupTargets(quantTargets(loadArchitecture(ckpt), ckpt.tensors, 'expert', false));
  const others = (gs: typeof groups) => gs.filter((g) => g.cls !== 'expert').map((g) => g.key);
  expect(others(groups)).toEqual(others(atExpert));
  // gpt-oss stores gate_up_proj [E, H, 2I] and down_proj per layer: two groups per layer
  const oss = openCheckpoint(path.join(GOLDEN, 'gpt_oss'));
  const ossArch = loadArchitecture(oss);
  const fused = groupTargets(quantTargets(ossArch, oss.tensors, 'layer-projection', false));
  const fusedExperts = fused.filter((g) => g.cls === 'expert');
  expect(fusedExperts.map((g) => g.key).sort()).toEqual(
    [...Array(ossArch.numLayers).keys()].flatMap((l) => [`layers.${l}.experts.down`, `layers.${l}.experts.gate_up`]),
  );
  for (const g of fusedExperts) expect(g.targets.length).toBe(ossArch.numExperts * (g.key.endsWith('down') ? 1 : 2));
});

test('the LP at layer-projection: one width per layer projection, within budget, between projection and layer', async () => {
  const r: Record<string, QuantizeReport> = {};
  for (const g of ['projection', 'expert', 'layer-projection', 'layer'] as const) r[g] = await lp({ granularity: g });
  for (const g of Object.values(r)) {
    expect(g.solver?.status).toBe('optimal');
    expect(g.average_bits).toBeLessThanOrEqual(3.6 + 1e-9);
  }
  expect(r['layer-projection'].granularity).toBe('layer-projection');
  const lpBits = widthsByLayerProjection(weightBits(r['layer-projection'], 'layer-projection'));
  expect(lpBits.size).toBe(LAYERS * 3);
  for (const w of lpBits.values()) expect(w.size).toBe(1);
  // the allocation is not trivial: the layer projections do not all take one width
  expect(new Set([...lpBits.values()].map((w) => [...w][0])).size).toBeGreaterThan(1);
  // per expert, some layer projection mixes widths on this model
  const perExpert = widthsByLayerProjection(weightBits(r.expert, 'expert'));
  expect([...perExpert.values()].some((w) => w.size > 1)).toBe(true);
  // each granularity's groups are unions of the finer one's, so its optimum cannot be lower
  const cost = (g: string) => r[g].predicted_cost!;
  const eps = 1 + 1e-12;
  expect(cost('projection')).toBeLessThanOrEqual(cost('layer-projection') * eps);
  expect(cost('projection')).toBeLessThanOrEqual(cost('expert') * eps);
  expect(cost('layer-projection')).toBeLessThanOrEqual(cost('layer') * eps);
  expect(cost('expert')).toBeLessThanOrEqual(cost('layer') * eps);
}, 30_000);

test('compressed-tensors at layer-projection: one config-group target per layer projection of experts', async () => {
  const out = path.join(tmp, 'ct');
  const r = await lp({
    output: out,
    dryRun: false,
    format: 'compressed-tensors',
    bits: 4,
    bitChoices: [3, 4, 5],
    granularity: 'layer-projection',
  });
  expect(r.granularity).toBe('layer-projection');
  const q = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config;
  const groups = Object.values(q.config_groups) as { targets: string[]; weights: { num_bits: number } }[];
  expect(groups.length).toBeGreaterThan(1);
  const expertTargets = groups.flatMap((g) => g.targets.filter((t) => t.includes('experts')));
  expect(expertTargets.sort()).toEqual(
    [0, 1].flatMap((l) =>
      ['down', 'gate', 'up'].map((p) => `re:^model\\.layers\\.${l}\\.mlp\\.experts\\.\\d+\\.${p}_proj$`),
    ),
  );
  // the library resolves a module by its targets: each expert's width is its layer projection's, as planned
  const record = JSON.parse(fs.readFileSync(path.join(out, 'moe-quantization.json'), 'utf8')).tensors;
  for (const [name, bits] of Object.entries(record) as [string, number][]) {
    const module = name.replace(/\.weight$/, '');
    const hits = groups.filter((g) => g.targets.some((t) => new RegExp(t.slice(3)).test(module)));
    expect(hits.map((g) => g.weights.num_bits)).toEqual([bits]);
  }
}, 30_000);

/** GPTQ `dynamic` as vLLM reads it: the first "+:" override whose regex matches the name, else the base bits. */
function gptqWidth(q: { bits: number; dynamic: Record<string, { bits?: number }> }, module: string): number {
  const hit = Object.entries(q.dynamic).find(([k]) => k.startsWith('+:') && new RegExp(k.slice(2)).test(module));
  return hit ? hit[1].bits! : q.bits;
}

test.each(['layer-projection', 'layer'] as const)(
  "GPTQ at %s: dynamic's overrides name experts by layer (projection), as vLLM looks them up",
  async (granularity) => {
    const out = path.join(tmp, `gptq-${granularity}`);
    const o = { output: out, dryRun: false, format: 'gptq' as const, bits: 5, bitChoices: [4, 8] };
    const r = await lp(granularity === 'layer-projection' ? { ...o, granularity } : o); // layer: gptq's default
    expect(r.granularity).toBe(granularity);
    const q = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config;
    const keys = Object.keys(q.dynamic).filter((k) => k.startsWith('+:'));
    expect(keys.length).toBe(1);
    expect(keys[0]).not.toMatch(/experts\\\.\d/); // no expert named by its number
    // every module gets its planned bits
    const record = JSON.parse(fs.readFileSync(path.join(out, 'moe-quantization.json'), 'utf8')).tensors;
    const widths = new Map(Object.keys(record).map((n) => [n, gptqWidth(q, n.replace(/\.weight$/, ''))]));
    expect(Object.fromEntries(widths)).toEqual(record);
    const byLp = widthsByLayerProjection(widths);
    expect(byLp.size).toBe(LAYERS * 3);
    for (const w of byLp.values()) expect(w.size).toBe(1);
    if (granularity === 'layer') {
      // vLLM's fused-MoE method looks the whole layer up by its prefix: the experts' width
      for (let l = 0; l < LAYERS; l++) {
        const expert0 = widths.get(`model.layers.${l}.mlp.experts.0.up_proj.weight`);
        expect(gptqWidth(q, `model.layers.${l}.mlp.experts`)).toBe(expert0);
      }
      expect(new Set([...byLp.values()].map((w) => [...w][0])).size).toBe(2); // one layer at 4 bits, one at 8
    }
  },
  30_000,
);

test('the engine formats warn, once, when a MoE layer mixes widths; not at --granularity layer', () => {
  const ckpt = openCheckpoint(MODEL);
  const targets = quantTargets(loadArchitecture(ckpt), ckpt.tensors, 'layer-projection', false);
  const bits = new Map(groupTargets(targets).map((g) => [g.key, g.key.endsWith('experts.down') ? 8 : 4]));
  const warning = mixedWidthsWarning('gptq', 'layer-projection');
  expect(engineGranularityWarning('gptq', 'layer-projection', targets, bits)).toBe(warning);
  expect(warning).toContain('use --granularity layer to serve with vLLM');
  expect(engineGranularityWarning('packed', 'layer-projection', targets, bits)).toBeUndefined();
  const even = new Map([...bits.keys()].map((k) => [k, 4]));
  expect(engineGranularityWarning('compressed-tensors', 'layer-projection', targets, even)).toBeUndefined();
});

test('GGUF refuses per-expert granularity (one type per ffn_*_exps tensor) with exit 2, before reading', async () => {
  for (const g of ['expert', 'projection']) {
    const out = path.join(tmp, `g-${g}.gguf`);
    const r = await runMain(['quantize', MODEL, '--format', 'gguf', '--granularity', g, '--type', 'q8_0', '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(
      `moe: --format gguf stores each layer's routed experts as one tensor per projection (ffn_{gate,up,down}_exps, one type each): --granularity ${g} is refused, per-expert bits cannot be expressed; use --granularity layer-projection (the default for gguf), or --format packed for --granularity ${g}`,
    );
    expect(fs.existsSync(out)).toBe(false);
  }
});
