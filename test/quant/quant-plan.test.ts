/**
 * Plan then execute, in process and without a model: the one packed-size formula against the parts the writer
 * lays out, the pure allocation over scopes (budgets met, fixed groups counted, infeasible budgets named), the
 * plan's totals, and the GGUF codec registry (ids and file types as llama.cpp numbers them).
 */
import { tensorBytes } from '../../src/io/safetensors';
import { assignBits } from '../../src/quant/assign';
import { packedMatrixBytes, packedPlan } from '../../src/io/packed';
import type { Group, Target } from '../../src/quant/plan';
import { buildPlan, chooseBits, measureCosts } from '../../src/quant/quant-plan';
import { CODECS } from '../../src/gguf/codecs/index';
import { bitsPerWeight, dequantizeRows, fileType, GGML_TYPE_ID, quantizeRows, rowBytes } from '../../src/gguf/quants';

function target(name: string, layer: number, cls: Target['cls'], rows: number, cols: number, expert?: number): Target {
  return {
    name,
    rows,
    cols,
    cls,
    layer,
    expert,
    group: cls === 'expert' ? `layers.${layer}.experts.${expert}` : `layers.${layer}.${cls}`,
  };
}
function groups(targets: Target[]): Group[] {
  const by = new Map<string, Group>();
  for (const t of targets) {
    const g = by.get(t.group) ?? { key: t.group, targets: [], params: 0, cls: t.cls, layer: t.layer };
    g.targets.push(t);
    g.params += t.rows * t.cols;
    by.set(t.group, g);
  }
  return [...by.values()];
}

test('one packed-size formula: the bytes of the three parts the writer lays out', () => {
  for (const [rows, cols, bits, gs] of [
    [4, 128, 4, 128],
    [3, 100, 3, 32],
    [5, 7, 1, 128],
    [2, 300, 8, 64],
    [1, 33, 5, 16],
  ]) {
    const parts = packedPlan('w.weight', rows, cols, bits, gs);
    expect(packedMatrixBytes(rows, cols, bits, gs)).toBe(parts.reduce((s, t) => s + tensorBytes(t), 0));
  }
  // 3 bits × 100 columns = 300 bits = 38 bytes per row; ceil(100/32) = 4 groups of a BF16 scale and a U8 zero.
  expect(packedMatrixBytes(3, 100, 3, 32)).toBe(3 * (38 + 4 * 3));
});

test('assignBits: a global budget is met over all scopes, a per-layer one in each, fixed groups counted', async () => {
  const choices = [2, 3, 4];
  // Layer 0's groups lose much more at few bits than layer 1's: a global budget moves bits to layer 0.
  const g = [
    { key: 'a0', params: 100, scope: 0, cost: [100, 10, 1] },
    { key: 'b0', params: 100, scope: 0, cost: [90, 9, 1] },
    { key: 'a1', params: 100, scope: 1, cost: [1, 0.5, 0.1] },
    { key: 'b1', params: 100, scope: 1, cost: [1, 0.5, 0.1] },
    { key: 'r', params: 50, scope: 1, fixed: 8 },
  ];
  const bitsOf = (r: Awaited<ReturnType<typeof assignBits>>, key: string) => (r.ok ? choices[r.choice.get(key)!] : NaN);
  const global = await assignBits(choices, g, 3.4, false);
  expect(global.ok).toBe(true);
  // Budget 3.4 × 450 = 1530 bits; the router takes 400; 1130 for 400 params: layer 0 at 4, layer 1 at 2 (1200 > 1130,
  // so one of layer 0 drops to 3: 300 + 400 + 400 = 1100 ≤ 1130).
  const used = ['a0', 'b0', 'a1', 'b1'].reduce((s, k) => s + bitsOf(global, k) * 100, 0);
  expect(used).toBeLessThanOrEqual(1130);
  expect(bitsOf(global, 'a0') + bitsOf(global, 'b0')).toBe(7);
  expect([bitsOf(global, 'a1'), bitsOf(global, 'b1')]).toEqual([2, 2]);
  expect(global.ok && global.solver!.problems).toBe(1);
  const perLayer = await assignBits(choices, g, 3.4, true);
  // Layer 0: 680 bits for 200 params → 3 and 4 (700 > 680 → 3 + 3 = 600; 3 + 4 = 700 too many).
  expect([bitsOf(perLayer, 'a0'), bitsOf(perLayer, 'b0')]).toEqual([3, 3]);
  // Layer 1: 850 bits for 250 params, 400 of them the router's: 450 for 200 params → 2 and 2 (3 + 2 = 500 > 450).
  expect([bitsOf(perLayer, 'a1'), bitsOf(perLayer, 'b1')]).toEqual([2, 2]);
  expect(perLayer.ok && perLayer.solver!.problems).toBe(2);
  const tight = await assignBits(choices, g, 2.5, true);
  expect(tight.ok).toBe(false);
  // Layer 1 allows no less than (2·200 + 8·50) / 250 = 3.2 bits.
  expect(!tight.ok && [tight.scope.map((x) => x.key), tight.least]).toEqual([['a1', 'b1', 'r'], 3.2]);
});

test('measure → choose → plan: the cost table, the bits and the totals the report prints', async () => {
  const targets = [
    target('l0.attn', 0, 'attn', 4, 64),
    target('l0.router', 0, 'router', 2, 64),
    target('l0.e0', 0, 'expert', 8, 64, 0),
    target('l0.e1', 0, 'expert', 8, 64, 1),
  ];
  const gs = groups(targets);
  const rules = { bits: 3, choices: [2, 3, 4, 8] };
  const err: Record<string, number> = { 'l0.e0': 5, 'l0.e1': 1, 'l0.attn': 2 };
  const measured = await measureCosts(
    targets,
    gs,
    rules,
    async (t, bits) => new Map(bits.map((b) => [b, err[t.name] / b])),
  );
  // The router is fixed at 8 bits (not measured); attention may take 4 or 8 only.
  expect([...measured.costs.keys()]).toEqual(['layers.0.attn', 'layers.0.experts.0', 'layers.0.experts.1']);
  expect(measured.costs.get('layers.0.attn')).toEqual({ 4: 0.5, 8: 0.25 });
  const chosen = await chooseBits(gs, rules, measured.costs, 'global');
  if (!chosen.ok) throw new Error('infeasible');
  const bits = Object.fromEntries(chosen.bits);
  expect(bits['layers.0.router']).toBe(8);
  expect(bits['layers.0.attn']).toBe(4);
  const tensors = targets.map((t) => ({ name: t.name, dtype: 'BF16' as const, shape: [t.rows, t.cols] }));
  const plan = buildPlan({
    format: 'packed',
    method: 'rtn',
    groupSize: 32,
    granularity: 'expert',
    tensors,
    targets,
    groups: gs,
    bits: chosen.bits,
    ...measured,
    solver: chosen.solver,
  });
  const params = targets.reduce((s, t) => s + t.rows * t.cols, 0);
  const code = plan.weights.reduce((s, w) => s + w.bits * w.rows * w.cols, 0);
  expect(code).toBeLessThanOrEqual(3 * params);
  expect(plan.averageBits).toBe(code / params);
  expect(plan.storedBitsPerWeight).toBe((8 * plan.weights.reduce((s, w) => s + w.bytes, 0)) / params);
  expect(plan.tensorBytes).toBe(plan.weights.reduce((s, w) => s + w.bytes, 0));
  expect(plan.tensors.map((t) => t.name).slice(0, 4)).toEqual([
    'l0.attn.qweight',
    'l0.attn.scales',
    'l0.attn.qzeros',
    'l0.router.qweight',
  ]);
  for (const w of plan.weights) expect(w.predicted).toBe(measured.byTarget.get(w.name)!.get(w.bits) ?? null);
  for (const g of gs)
    if (measured.costs.has(g.key))
      expect(plan.predicted.get(g.key)).toBe(measured.costs.get(g.key)![chosen.bits.get(g.key)!]);
  const deq = buildPlan({
    format: 'dequantized',
    method: 'rtn',
    groupSize: 32,
    granularity: 'expert',
    tensors,
    targets,
    groups: gs,
    bits: chosen.bits,
    solver: null,
  });
  expect(deq.tensors).toEqual(tensors);
  expect(deq.weights.map((w) => w.bytes)).toEqual(targets.map((t) => 2 * t.rows * t.cols));
});

test('the GGUF codec registry: ggml ids, llama.cpp file types and sizes, one place per type', () => {
  // ggml.h enum ggml_type and llama.h enum llama_ftype.
  expect(GGML_TYPE_ID).toEqual({
    F32: 0,
    F16: 1,
    Q4_0: 2,
    Q8_0: 8,
    Q2_K: 10,
    Q3_K: 11,
    Q4_K: 12,
    Q5_K: 13,
    Q6_K: 14,
    BF16: 30,
    MXFP4: 39, // read from GGUF and written only for experts stored as MXFP4 (not a --type choice)
  });
  expect(Object.fromEntries(CODECS.map((c) => [c.type, fileType(c.type)]))).toEqual({
    F32: 0,
    F16: 1,
    BF16: 32,
    Q8_0: 7,
    Q4_0: 2,
    Q2_K: 10,
    Q3_K: 12,
    Q4_K: 15,
    Q5_K: 17,
    Q6_K: 18,
    MXFP4: 38, // llama.h LLAMA_FTYPE_MOSTLY_MXFP4_MOE
  });
  expect(Object.fromEntries(CODECS.map((c) => [c.type, bitsPerWeight(c.type)]))).toEqual({
    F32: 32,
    F16: 16,
    BF16: 16,
    Q8_0: 8.5,
    Q4_0: 4.5,
    Q2_K: 2.625,
    Q3_K: 3.4375,
    Q4_K: 4.5,
    Q5_K: 5.5,
    Q6_K: 6.5625,
    MXFP4: 4.25,
  });
  const x = Float32Array.from({ length: 2 * 256 }, (_, i) => Math.sin(i * 0.37) * 0.05);
  for (const c of CODECS) {
    const bytes = quantizeRows(x, 2, 256, c.type);
    expect(bytes.length).toBe(2 * rowBytes(c.type, 256));
    const y = dequantizeRows(bytes, 2, 256, c.type);
    const rms = Math.sqrt(y.reduce((s, v, i) => s + (v - x[i]) ** 2, 0) / x.length);
    // Every type reproduces the rows to within its resolution (2-bit codes: a few percent of the 0.05 range).
    expect(rms).toBeLessThan(c.type === 'F32' ? 1e-12 : 0.01);
  }
});
