import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../../src/errors';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { MAX_HEADER_BYTES, readHeader } from '../../src/io/safetensors';
import { encodeHeader, planShards, ShardedWriter, shardName } from '../../src/io/writer';
import { rawHeader, tmpDir, writeRaw } from '../helpers';

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

describe('safetensors writer and reader', () => {
  test('a written file re-opens with the same tensors, dtypes, shapes, metadata and bytes', () => {
    const dir = tmpDir();
    const plan = [
      { name: 'b', dtype: 'F32' as const, shape: [2, 3] },
      { name: 'a', dtype: 'I64' as const, shape: [2] },
      { name: 'empty', dtype: 'BF16' as const, shape: [0, 4] },
    ];
    const w = new ShardedWriter(dir, plan, { maxShardBytes: 1e9, metadata: { format: 'pt', note: 'x' } });
    const b = f32Bytes([1, 2, 3, 4, 5, 6]);
    const a = new Uint8Array(new BigInt64Array([7n, -8n]).buffer);
    w.write('b', b);
    w.write('a', a);
    w.write('empty', new Uint8Array(0));
    expect(w.finish().shards).toEqual([path.join(dir, 'model.safetensors')]);
    const h = readHeader(path.join(dir, 'model.safetensors'));
    expect(h.metadata).toEqual({ format: 'pt', note: 'x' });
    expect(h.tensors.map((t) => [t.name, t.dtype, t.shape])).toEqual([
      ['b', 'F32', [2, 3]],
      ['a', 'I64', [2]],
      ['empty', 'BF16', [0, 4]],
    ]);
    // Header JSON is padded to 8 bytes, as transformers' files are.
    expect(rawHeader(path.join(dir, 'model.safetensors')).n % 8).toBe(0);
    fs.writeFileSync(path.join(dir, 'config.json'), '{}');
    const ckpt = openCheckpoint(dir);
    const r = new TensorReader(ckpt);
    expect(Array.from(r.f32('b'))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Buffer.from(r.bytes('a')).equals(Buffer.from(a))).toBe(true);
    r.close();
  });

  test('shards split before a tensor that would overflow, with an index naming every tensor', () => {
    const plan = ['t0', 't1', 't2', 't3', 't4'].map((name) => ({ name, dtype: 'F32' as const, shape: [25] })); // 100 bytes each
    expect(planShards(plan, 250).map((g) => g.map((t) => t.name))).toEqual([['t0', 't1'], ['t2', 't3'], ['t4']]);
    // A tensor larger than the limit gets a shard of its own.
    expect(planShards(plan, 50).length).toBe(5);
    const dir = tmpDir();
    const w = new ShardedWriter(dir, plan, { maxShardBytes: 250 });
    for (const t of plan) w.write(t.name, f32Bytes(Array(25).fill(Number(t.name[1]))));
    w.finish();
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(index.metadata.total_size).toBe(500);
    expect(index.weight_map).toEqual({
      t0: shardName(0, 3),
      t1: shardName(0, 3),
      t2: shardName(1, 3),
      t3: shardName(1, 3),
      t4: shardName(2, 3),
    });
    expect(shardName(1, 3)).toBe('model-00002-of-00003.safetensors');
    fs.writeFileSync(path.join(dir, 'config.json'), '{}');
    const ckpt = openCheckpoint(dir);
    expect(ckpt.indexed).toBe(true);
    const r = new TensorReader(ckpt);
    expect(r.f32('t3')[24]).toBe(3);
    r.close();
  });

  test('the writer refuses tensors out of plan order, wrong sizes, and finishing early', () => {
    const plan = [
      { name: 'x', dtype: 'F32' as const, shape: [2] },
      { name: 'y', dtype: 'F32' as const, shape: [2] },
    ];
    const w = new ShardedWriter(tmpDir(), plan, { maxShardBytes: 1e9 });
    expect(() => w.write('y', f32Bytes([1, 2]))).toThrow(/expected tensor "x" next/);
    w.write('x', f32Bytes([1, 2]));
    expect(() => w.finish()).toThrow(/1 tensors unwritten/);
    w.write('y', f32Bytes([3, 4]));
    w.finish();
    expect(() => w.write('y', f32Bytes([3, 4]))).toThrow(/after finished/);
    // A wrong size fails the writer for good: its shard is no longer consistent.
    const short = new ShardedWriter(tmpDir(), plan, { maxShardBytes: 1e9 });
    expect(() => short.write('x', f32Bytes([1]))).toThrow(/has 4 bytes, planned 8/);
    expect(() => short.write('x', f32Bytes([1, 2]))).toThrow(/after failed/);
    const long = new ShardedWriter(tmpDir(), plan, { maxShardBytes: 1e9 });
    expect(() => long.writeChunks('x', [f32Bytes([1]), f32Bytes([2, 3])])).toThrow(/more than the 8 bytes planned/);
  });
});

describe('safetensors header validation', () => {
  const data = f32Bytes([1, 2, 3, 4]); // 16 bytes
  const cases: [string, unknown, Uint8Array, RegExp, bigint | null][] = [
    [
      'offsets past the data',
      { a: { dtype: 'F32', shape: [8], data_offsets: [0, 32] } },
      data,
      /run past the 16 bytes of data/,
      null,
    ],
    [
      'overlapping tensors',
      {
        a: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
        b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
      },
      data,
      /overlaps/,
      null,
    ],
    [
      'a hole',
      { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } },
      data,
      /hole/,
      null,
    ],
    ['trailing bytes', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, data, /after the last tensor/, null],
    [
      'size not matching the shape',
      { a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } },
      data,
      /16 bytes for F32\[3\], which needs 12/,
      null,
    ],
    ['unknown dtype', { a: { dtype: 'F4', shape: [4], data_offsets: [0, 16] } }, data, /unknown dtype "F4"/, null],
    ['bad shape', { a: { dtype: 'F32', shape: [-4], data_offsets: [0, 16] } }, data, /shape/, null],
    ['begin after end', { a: { dtype: 'F32', shape: [4], data_offsets: [16, 0] } }, data, /not \[begin, end\]/, null],
    [
      'non-string metadata',
      { __metadata__: { a: 1 }, a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } },
      data,
      /__metadata__.a is not a string/,
      null,
    ],
    ['a JSON array', [1, 2], data, /not a JSON object/, null],
    [
      'a header length beyond the file',
      { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } },
      data,
      /runs past the end/,
      10_000n,
    ],
    [
      'a header length above the cap',
      { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } },
      data,
      /above the .*cap/,
      BigInt(MAX_HEADER_BYTES + 1),
    ],
  ];
  test.each(cases)('rejects %s with a CheckpointError naming the file', (_name, header, bytes, message, override) => {
    const file = path.join(tmpDir(), 'model.safetensors');
    writeRaw(file, header, bytes, override ?? undefined);
    let err: unknown;
    try {
      readHeader(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CheckpointError);
    expect((err as CheckpointError).message).toMatch(message);
    expect((err as CheckpointError).file).toBe(file);
  });

  test('rejects invalid JSON and truncated files', () => {
    const dir = tmpDir();
    const file = path.join(dir, 'bad.safetensors');
    const { header } = encodeHeader([{ name: 'a', dtype: 'F32', shape: [4] }]);
    const broken = Buffer.from(header);
    broken[8] = 0x78; // '{' → 'x'
    fs.writeFileSync(file, Buffer.concat([broken, Buffer.from(data)]));
    expect(() => readHeader(file)).toThrow(/not valid JSON/);
    fs.writeFileSync(file, Buffer.concat([Buffer.from(header), Buffer.from(data).subarray(0, 10)]));
    expect(() => readHeader(file)).toThrow(/run past the 10 bytes of data/);
    fs.writeFileSync(file, Buffer.from([1, 2, 3]));
    expect(() => readHeader(file)).toThrow(/too short/);
  });
});
