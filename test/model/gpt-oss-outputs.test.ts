/**
 * gpt-oss outputs (issue 18): every prune and merge method and both quantize formats run on the bf16 and the MXFP4
 * goldens, and their outputs re-open with the fused layout transformers reads. Pruning copies kept experts
 * bit-exact (fused bf16 slices, MXFP4 blocks and scales, biases, router rows and bias); merging an MXFP4 model
 * encodes exactly the experts the same merge computes on its bf16 conversion and copies the others bit-exact.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assemble } from '../../src/commands/assemble';
import { calibrate } from '../../src/commands/calibrate';
import { convert } from '../../src/commands/convert';
import { merge } from '../../src/commands/merge';
import { prune } from '../../src/commands/prune';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { encodeMxfp4 } from '../../src/io/mxfp4';
import { mergeMethodNames } from '../../src/merge/methods';
import { pruneMethodNames } from '../../src/prune/methods';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, tmpDir } from '../helpers';

const DATA = path.join(__dirname, '..', '..', 'fixtures', 'reference', 'golden-data', 'calib.json');
const BF16 = path.join(GOLDEN, 'gpt_oss');
const MX = path.join(GOLDEN, 'gpt_oss-mxfp4');
const work = tmpDir('moe-oss-');
const stats: Record<string, string> = {};
const L0 = 'model.layers.0.mlp';

beforeAll(async () => {
  for (const [name, model] of [
    ['bf16', BF16],
    ['mx', MX],
  ]) {
    stats[name] = path.join(work, `${name}-stats`);
    await calibrate({ model, output: stats[name], data: DATA, seqLen: 32, backend: 'ref' }, quiet);
  }
});

/** The output re-opens through its architecture (every tensor the config implies, fused layout) and its config. */
function reopen(dir: string) {
  const ckpt = openCheckpoint(dir);
  loadArchitecture(ckpt);
  return { ckpt, config: JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) };
}

/** Raw bytes of slice `index` (first axis) of a stored tensor (also an MXFP4 tensor's blocks or scales). */
function slice(dir: string, name: string, index: number): Buffer {
  const ckpt = openCheckpoint(dir);
  const parts = [...ckpt.tensors.values()].flatMap((t) => (t.mxfp4 ? [t.mxfp4.blocks, t.mxfp4.scales] : [t]));
  const stored = parts.find((t) => t.name === name);
  if (!stored) throw new Error(`no ${name} in ${dir}`);
  const r = new TensorReader(ckpt);
  const out = Buffer.from(r.rawSlice(stored, index));
  r.close();
  return out;
}

describe.each([
  ['bf16', BF16, ['gate_up_proj', 'down_proj']],
  ['mx', MX, ['gate_up_proj_blocks', 'gate_up_proj_scales', 'down_proj_blocks', 'down_proj_scales']],
] as const)('gpt_oss %s', (name, model, stored) => {
  test.each(pruneMethodNames())('prune --method %s keeps fused experts bit-exact', async (method) => {
    const out = path.join(work, `${name}-prune-${method}`);
    const r = await prune({ model, stats: stats[name], method, ratio: 0.5, output: out, backend: 'ref' }, quiet);
    const { config } = reopen(out);
    expect(config.num_local_experts).toBe(4);
    expect(config.quantization_config?.quant_method).toBe(name === 'mx' ? 'mxfp4' : undefined);
    const kept = r.layers.find((l) => l.layer === 0)!.kept;
    for (const t of [...stored, 'gate_up_proj_bias', 'down_proj_bias'])
      kept.forEach((e, i) =>
        expect(slice(out, `${L0}.experts.${t}`, i).equals(slice(model, `${L0}.experts.${t}`, e))).toBe(true),
      );
    for (const t of ['router.weight', 'router.bias'])
      kept.forEach((e, i) => expect(slice(out, `${L0}.${t}`, i).equals(slice(model, `${L0}.${t}`, e))).toBe(true));
  });

  test.each(mergeMethodNames())('merge --method %s writes the fused layout', async (method) => {
    const out = path.join(work, `${name}-merge-${method}`);
    await merge({ model, stats: stats[name], method, ratio: 0.5, output: out, backend: 'ref' }, quiet);
    const { ckpt, config } = reopen(out);
    expect(config.num_local_experts).toBe(4);
    expect(ckpt.stored!.get(`${L0}.experts.gate_up_proj`)!.shape).toEqual(name === 'mx' ? [4, 64, 128] : [4, 64, 32]);
  });

  test.each(['packed', 'dequantized'] as const)('quantize --format %s', async (format) => {
    const out = path.join(work, `${name}-q-${format}`);
    await quantize({ model, output: out, bits: 4, method: 'rtn', format }, quiet);
    const { ckpt, config } = reopen(out);
    expect(config.quantization_config?.quant_method).toBe(format === 'packed' ? 'moe-packed' : undefined);
    // Dequantized: transformers' fused layout; packed: moe's one tensor per expert.
    expect(ckpt.stored?.has(`${L0}.experts.gate_up_proj`) ?? false).toBe(format === 'dequantized');
  });
});

test('merging MXFP4 experts encodes what the same merge computes on the bf16 conversion; lone experts stay', async () => {
  const bf16 = path.join(work, 'mx-as-bf16');
  await convert({ model: MX, output: bf16 }, quiet);
  const a = path.join(work, 'mx-merged');
  const b = path.join(work, 'bf16-merged');
  // The conversion's values are the MXFP4 model's exactly, so its statistics (and the merge groups) are too.
  const bf16Stats = path.join(work, 'mx-as-bf16-stats');
  await calibrate({ model: bf16, output: bf16Stats, data: DATA, seqLen: 32, backend: 'ref' }, quiet);
  const opts = { method: 'hcsmoe', ratio: 0.5, backend: 'ref' as const };
  await merge({ ...opts, stats: stats.mx, model: MX, output: a }, quiet);
  await merge({ ...opts, stats: bf16Stats, model: bf16, output: b }, quiet);
  const groupsOf = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'moe-compression.json'), 'utf8')).groups;
  expect(groupsOf(a)).toEqual(groupsOf(b));
  const record = JSON.parse(fs.readFileSync(path.join(a, 'moe-compression.json'), 'utf8'));
  const groups: { members: number[] }[] = record.groups['0'];
  const merged = new TensorReader(openCheckpoint(b));
  let encoded = 0;
  groups.forEach((g, i) => {
    const blocks = slice(a, `${L0}.experts.down_proj_blocks`, i);
    if (g.members.length === 1) {
      expect(blocks.equals(slice(MX, `${L0}.experts.down_proj_blocks`, g.members[0]))).toBe(true);
      return;
    }
    // The stored orientation [out = H, in = I] of the bf16 merge's expert, encoded by the OCP rule.
    const w = merged.sliceF32(`${L0}.experts.down_proj`, i);
    const t = new Float32Array(w.length);
    for (let r = 0; r < 64; r++) for (let c = 0; c < 64; c++) t[c * 64 + r] = w[r * 64 + c];
    const want = encodeMxfp4(t, 64, 64);
    expect(blocks.equals(Buffer.from(want.blocks))).toBe(true);
    expect(slice(a, `${L0}.experts.down_proj_scales`, i).equals(Buffer.from(want.scales))).toBe(true);
    encoded++;
  });
  merged.close();
  expect(encoded).toBeGreaterThan(0);
});

describe.each(['qwen3_moe-fp8', 'deepseek_v3-fp8'])('%s: every prune and merge method keeps FP8 storage', (name) => {
  const model = path.join(GOLDEN, name);
  let fp8Stats: string;
  beforeAll(async () => {
    fp8Stats = path.join(work, `${name}-stats`);
    await calibrate({ model, output: fp8Stats, data: DATA, seqLen: 32, backend: 'ref' }, quiet);
  });
  const expertWeights = (dir: string) => {
    const { ckpt } = reopen(dir);
    return [...ckpt.tensors.values()].filter((t) => /\.experts\.\d+\./.test(t.name));
  };

  test.each([
    ...pruneMethodNames().map((m) => ['prune', m] as const),
    ...mergeMethodNames().map((m) => ['merge', m] as const),
  ])('%s --method %s', async (command, method) => {
    const out = path.join(work, `${name}-${command}-${method}`);
    const opts = { model, stats: fp8Stats, method, ratio: 0.5, output: out, backend: 'ref' as const };
    await (command === 'prune' ? prune(opts, quiet) : merge(opts, quiet));
    const { config } = reopen(out);
    expect(config.quantization_config.quant_method).toBe('fp8');
    const experts = expertWeights(out);
    expect(experts.length).toBeGreaterThan(0);
    // Every routed expert weight is still F8_E4M3 codes with block scales, copied or encoded.
    for (const t of experts) expect(t.fp8?.weight.dtype).toBe('F8_E4M3');
  });
});

test('quantize --layers parts of the MXFP4 model assemble into the single dequantized run, fused, byte for byte', async () => {
  const common = { model: MX, bits: 4, method: 'rtn' as const, format: 'dequantized' as const };
  const single = path.join(work, 'mx-single');
  await quantize({ ...common, output: single }, quiet);
  const parts = [];
  for (const layers of [[1, 1] as [number, number], [0, 0] as [number, number]]) {
    const out = path.join(work, `mx-part-${layers[0]}`);
    await quantize({ ...common, output: out, layers }, quiet);
    parts.push(out);
  }
  const joined = path.join(work, 'mx-joined');
  await assemble(parts, { output: joined }, quiet);
  const file = (d: string) => fs.readFileSync(path.join(d, 'model.safetensors'));
  expect(file(joined).equals(file(single))).toBe(true);
  expect(fs.readFileSync(path.join(joined, 'config.json'), 'utf8')).toBe(
    fs.readFileSync(path.join(single, 'config.json'), 'utf8'),
  );
  expect(reopen(joined).ckpt.stored?.has(`${L0}.experts.gate_up_proj`)).toBe(true);
});
