import * as fs from 'node:fs';
import * as path from 'node:path';
import { convert } from '../../src/commands/convert';
import { sameTensors } from '../../src/commands/demo';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { floatToBf16Bits } from '../../src/io/dtype';
import { planShards } from '../../src/io/writer';
import { GOLDEN, listDir, makeSynth, quiet, rawHeader, runMain, tmpDir } from '../helpers';

/** Bytes of a folder's .safetensors files, computed here independently of src/io/size.ts. */
const filesBytes = (dir: string) =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);

const SHARDED = path.join(GOLDEN, 'mixtral-bf16-sharded');

/** Checks an output folder's index against its shards, with the independent header parser. */
function checkIndex(dir: string, shards: number): void {
  const files = listDir(dir).filter((f) => f.endsWith('.safetensors'));
  expect(files).toHaveLength(shards);
  if (shards === 1) {
    expect(files).toEqual(['model.safetensors']);
    expect(fs.existsSync(path.join(dir, 'model.safetensors.index.json'))).toBe(false);
    return;
  }
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
  let total = 0;
  const seen = new Set<string>();
  files.forEach((f, i) => {
    expect(f).toBe(`model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`);
    for (const [name, t] of Object.entries(rawHeader(path.join(dir, f)).json)) {
      expect(index.weight_map[name]).toBe(f);
      seen.add(name);
      total += t.data_offsets[1] - t.data_offsets[0];
    }
  });
  expect(Object.keys(index.weight_map).sort()).toEqual([...seen].sort());
  expect(index.metadata.total_size).toBe(total);
}

describe('moe convert', () => {
  test('reads a transformers-saved multi-shard checkpoint with its index', () => {
    const ckpt = openCheckpoint(SHARDED);
    expect(ckpt.indexed).toBe(true);
    expect(ckpt.shards.length).toBeGreaterThanOrEqual(3);
    const index = JSON.parse(fs.readFileSync(path.join(SHARDED, 'model.safetensors.index.json'), 'utf8'));
    expect([...ckpt.tensors.keys()].sort()).toEqual(Object.keys(index.weight_map).sort());
    expect(new Set([...ckpt.tensors.values()].map((t) => t.dtype))).toEqual(new Set(['BF16']));
  });

  test('3 shards then back to 1 leaves every tensor bit-identical (bf16 stays bf16) with a correct index', async () => {
    const work = tmpDir();
    const tensors = [...openCheckpoint(SHARDED).tensors.values()];
    const total = tensors.reduce((s, t) => s + (t.end - t.begin), 0);
    // The smallest shard limit (above a third of the model) that packs it into exactly 3 shards.
    let limit = Math.ceil(total / 3);
    while (planShards(tensors, limit).length > 3) limit += 64;
    const three = path.join(work, 'three');
    const one = path.join(work, 'one');
    const r1 = await runMain(['convert', SHARDED, '-o', three, '--max-shard-size', String(limit), '--json']);
    expect(r1.code).toBe(0);
    expect(JSON.parse(r1.stdout).shards).toBe(3);
    checkIndex(three, 3);
    const r2 = await runMain(['convert', three, '-o', one, '--json']);
    expect(r2.code).toBe(0);
    checkIndex(one, 1);
    expect(sameTensors(SHARDED, three)).toBe(true);
    expect(sameTensors(SHARDED, one)).toBe(true);
    expect(new Set(Object.values(rawHeader(path.join(one, 'model.safetensors')).json).map((t) => t.dtype))).toEqual(
      new Set(['BF16']),
    );
    // Without --dtype the config is carried over unchanged, and generation_config.json is copied.
    const json = (d: string, f: string) => JSON.parse(fs.readFileSync(path.join(d, f), 'utf8'));
    expect(json(one, 'config.json')).toEqual(json(SHARDED, 'config.json'));
    if (fs.existsSync(path.join(SHARDED, 'generation_config.json')))
      expect(json(one, 'generation_config.json')).toEqual(json(SHARDED, 'generation_config.json'));
    expect(listDir(work)).toEqual(['one', 'three']); // no temporary folders left
  });

  test('--dtype casts floating tensors with round-to-nearest-even and updates the config dtype', async () => {
    const src = await makeSynth('olmoe', path.join(tmpDir(), 'm'), { dtype: 'F32' });
    const out = path.join(tmpDir(), 'bf16');
    const report = await convert({ model: src, output: out, dtype: 'bf16' }, quiet);
    expect(report.size_bytes).toBe(filesBytes(out));
    expect(report.cast).toBe(report.tensors);
    const a = new TensorReader(openCheckpoint(src));
    const b = new TensorReader(openCheckpoint(out));
    const name = 'model.layers.1.mlp.experts.3.up_proj.weight';
    const orig = a.f32(name);
    const cast = new Uint16Array(b.bytes(name).slice().buffer);
    expect(b.dtype(name)).toBe('BF16');
    for (let i = 0; i < orig.length; i++) expect(cast[i]).toBe(floatToBf16Bits(orig[i]));
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).torch_dtype).toBe('bfloat16');
  });

  test('--dry-run writes nothing', async () => {
    const src = await makeSynth('qwen2_moe', path.join(tmpDir(), 'm'));
    const work = tmpDir();
    const r = await runMain(['convert', src, '-o', path.join(work, 'out'), '--dry-run', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).dry_run).toBe(true);
    expect(listDir(work)).toEqual([]);
  });

  test('tokenizer and generation files are copied', async () => {
    const src = await makeSynth('mixtral', path.join(tmpDir(), 'm'));
    fs.writeFileSync(path.join(src, 'tokenizer.json'), '{"model":{}}');
    fs.writeFileSync(path.join(src, 'generation_config.json'), '{"do_sample":false}');
    const out = path.join(tmpDir(), 'o');
    await convert({ model: src, output: out }, quiet);
    expect(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8')).toBe('{"model":{}}');
    expect(fs.readFileSync(path.join(out, 'generation_config.json'), 'utf8')).toBe('{"do_sample":false}');
  });
});
