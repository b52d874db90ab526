/**
 * Every command that writes safetensors keeps the layout of a nested Qwen3.5-MoE (fixtures/golden/qwen3_5_moe: the
 * text model under text_config and model.language_model.*, beside a vision tower): convert, and quantize --layers
 * parts joined by assemble, which must equal a single quantize run byte for byte (names, shards, index, metadata,
 * config.json). prune, merge and one-shot quantize (both formats) are checked in qwen3-5-moe.test.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assemble } from '../../src/commands/assemble';
import { convert } from '../../src/commands/convert';
import { quantize } from '../../src/commands/quantize';
import { openCheckpoint } from '../../src/io/checkpoint';
import { loadArchitecture } from '../../src/model/registry';
import { GOLDEN, quiet, rawHeader, tmpDir } from '../helpers';

const NESTED = path.join(GOLDEN, 'qwen3_5_moe');
const work = tmpDir('moe-q35-nested-out-');
const outer = JSON.parse(fs.readFileSync(path.join(NESTED, 'config.json'), 'utf8'));
const sourceNames = Object.keys(rawHeader(path.join(NESTED, 'model.safetensors')).json).filter(
  (n) => n !== '__metadata__',
);

/** The weight files of a folder (shards and index), each as bytes, by file name. */
function weightFiles(dir: string): Map<string, Buffer> {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors') || f.endsWith('.index.json'));
  return new Map(files.sort().map((f) => [f, fs.readFileSync(path.join(dir, f))]));
}

/** Every stored tensor name of a folder's shards (the index's weight_map when sharded). */
function storedNames(dir: string): string[] {
  const index = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) return Object.keys(JSON.parse(fs.readFileSync(index, 'utf8')).weight_map);
  return Object.keys(rawHeader(path.join(dir, 'model.safetensors')).json).filter((n) => n !== '__metadata__');
}

describe.each(['dequantized', 'packed'] as const)('quantize --layers parts + assemble, %s', (format) => {
  // Small shards, so the index (weight_map under the stored names) and the shard split are compared too.
  const common = { model: NESTED, bits: 4, method: 'rtn' as const, format, maxShardBytes: 150_000 };
  const single = path.join(work, `${format}-single`);
  const joined = path.join(work, `${format}-joined`);
  beforeAll(async () => {
    await quantize({ ...common, output: single }, quiet);
    const parts = [];
    for (const layers of [[2, 3] as [number, number], [0, 1] as [number, number]]) {
      const out = path.join(work, `${format}-part-${layers[0]}`);
      await quantize({ ...common, output: out, layers }, quiet);
      parts.push(out);
    }
    await assemble(parts, { output: joined }, quiet);
  });

  test('the assembled checkpoint is the single run byte for byte: shards, index and config.json', () => {
    const a = weightFiles(joined);
    const b = weightFiles(single);
    expect([...a.keys()]).toEqual([...b.keys()]);
    expect(a.size).toBeGreaterThan(2); // sharded: the index is compared too
    for (const [f, bytes] of b) expect(a.get(f)!.equals(bytes)).toBe(true);
    expect(fs.readFileSync(path.join(joined, 'config.json'), 'utf8')).toBe(
      fs.readFileSync(path.join(single, 'config.json'), 'utf8'),
    );
  });

  test('it keeps the nested layout: model.language_model.* and the tower under their names, text_config', () => {
    const names = storedNames(joined);
    expect(names.filter((n) => n.startsWith('model.layers.'))).toEqual([]);
    expect(names.filter((n) => n.startsWith('model.visual.')).sort()).toEqual(
      sourceNames.filter((n) => n.startsWith('model.visual.')).sort(),
    );
    const w = 'model.language_model.layers.0.linear_attn.in_proj_qkv';
    expect(names).toContain(format === 'packed' ? `${w}.qweight` : `${w}.weight`);
    const config = JSON.parse(fs.readFileSync(path.join(joined, 'config.json'), 'utf8'));
    const { quantization_config: q, ...rest } = config;
    expect(rest).toEqual(outer);
    expect(q?.quant_method).toBe(format === 'packed' ? 'moe-packed' : undefined);
    const ckpt = openCheckpoint(joined);
    expect(ckpt.config.model_type).toBe('qwen3_5_moe_text');
    expect(loadArchitecture(ckpt).numExperts).toBe(8);
    if (format === 'packed')
      expect(ckpt.tensors.get('model.layers.0.linear_attn.in_proj_qkv.weight')?.packed?.info.bits).toBe(4);
  });
});

test('convert --dtype f32 keeps the nested names, the tower and the outer config', async () => {
  const out = path.join(work, 'f32');
  await convert({ model: NESTED, output: out, dtype: 'f32' }, quiet);
  const header = rawHeader(path.join(out, 'model.safetensors')).json as Record<string, { dtype: string }>;
  const names = Object.keys(header).filter((n) => n !== '__metadata__');
  expect(names.sort()).toEqual([...sourceNames].sort());
  expect(header['model.visual.blocks.0.attn.qkv.weight'].dtype).toBe('F32');
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  // the outer config's dtype names the new dtype; text_config (which has none) and the tower's config are untouched
  expect(config).toEqual({ ...outer, dtype: 'float32' });
  expect(openCheckpoint(out).config.model_type).toBe('qwen3_5_moe_text');
});
