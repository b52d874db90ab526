/**
 * Fuzzing the reader (issue 11): seeded random mutations of safetensors headers and index files (bench/fuzz-lib.js)
 * go through openCheckpoint, TensorReader and loadArchitecture. Every failure must be a CheckpointError naming the
 * file; every success must read what the file holds. `node bench/fuzz.js` runs the full 10,000 cases with a time
 * limit per case.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { quantize } from '../../src/commands/quantize';
import { CheckpointError } from '../../src/errors';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { loadArchitecture } from '../../src/model/registry';
import { fuzzCase, INDEX, messageClass, Model, readAll, readModel, split, writeModel } from '../../bench/fuzz-lib';
import { makeSynth, quiet, tmpDir } from '../helpers';

const CASES = 500;
const SEED = 11;
const api = { openCheckpoint, TensorReader, loadArchitecture } as never;

describe('fuzzed headers and indexes', () => {
  let bases: Model[];

  beforeAll(async () => {
    const root = tmpDir('moe-fuzz-');
    const single = await makeSynth('qwen3_moe', path.join(root, 'single'));
    await makeSynth('mixtral', path.join(root, 'sharded'), { maxShardBytes: 200_000 });
    await quantize({ model: single, output: path.join(root, 'packed'), bits: 4, method: 'rtn', groupSize: 32 }, quiet);
    bases = ['single', 'sharded', 'packed'].map((d) => readModel(path.join(root, d)));
    // The bases cover one file, an index over several shards, and packed weights.
    expect(Object.keys(bases[1].files).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1);
    for (const dir of ['single', 'sharded', 'packed'])
      readAll(path.join(root, dir), readModel(path.join(root, dir)).files, api);
  }, 60_000);

  test(`${CASES} mutations: only CheckpointErrors naming a file, and successes read consistent data`, () => {
    const dir = path.join(tmpDir(), 'm');
    const others: string[] = [];
    const classes = new Map<string, number>();
    let ok = 0;
    for (let i = 0; i < CASES; i++) {
      const c = fuzzCase(bases, SEED, i);
      writeModel(dir, c.files);
      try {
        readAll(dir, c.files, api);
        ok++;
      } catch (e) {
        if (e instanceof CheckpointError && e.file)
          classes.set(messageClass(e.message), (classes.get(messageClass(e.message)) ?? 0) + 1);
        else
          others.push(
            `case ${i} (${c.kind} in ${c.target}): ${(e as Error).name}: ${(e as Error).message.slice(0, 200)}${e instanceof CheckpointError ? ' [no file named]' : ''}`,
          );
      }
    }
    expect(others).toEqual([]);
    // The mutations bite: most cases are rejected, for many different reasons.
    expect(CASES - ok).toBeGreaterThan(CASES / 2);
    expect(classes.size).toBeGreaterThan(20);
  }, 120_000);

  /**
   * `edit` changes a copy of base `b`'s files in a fresh folder; the reader must fail with a CheckpointError naming a
   * file.
   */
  function rejects(b: number, edit: (files: Record<string, Buffer>, dir: string) => void, re: RegExp): void {
    const dir = path.join(tmpDir(), 'm');
    const files = { ...bases[b].files };
    writeModel(dir, files);
    edit(files, dir);
    for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), data);
    let err: unknown;
    try {
      readAll(dir, files, api);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CheckpointError);
    expect((err as CheckpointError).file).toBeTruthy();
    expect((err as CheckpointError).message).toMatch(re);
    expect((err as CheckpointError).message.length).toBeLessThan(400);
  }

  const deep = (n: number) => '['.repeat(n) + '1' + ']'.repeat(n);
  const setIndex = (files: Record<string, Buffer>, to: string) => {
    const j = JSON.parse(files[INDEX].toString('utf8'));
    j.weight_map[Object.keys(j.weight_map)[0]] = to;
    files[INDEX] = Buffer.from(JSON.stringify(j));
  };
  const setHeader = (files: Record<string, Buffer>, shard: string, text: (h: string) => string) => {
    const { header, data } = split(files[shard]);
    const t = Buffer.from(text(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(t.length));
    files[shard] = Buffer.concat([len, t, data]);
  };

  test('hostile cases the fuzzer found: a folder or FIFO as a shard, values nested deeper than the stack, null packed metadata', () => {
    rejects(1, (f) => setIndex(f, '.'), /shard is not a regular file/);
    rejects(
      1,
      (f, dir) => {
        expect(spawnSync('mkfifo', [path.join(dir, 'pipe.safetensors')]).status).toBe(0);
        setIndex(f, 'pipe.safetensors');
      },
      /shard is not a regular file/,
    );
    rejects(
      0,
      (f) => setHeader(f, 'model.safetensors', (h) => h.replace(/"shape":\[[^\]]*\]/, `"shape":${deep(1_000_000)}`)),
      /shape \[…nested too deep…\] is not a list/,
    );
    rejects(
      1,
      (f) => {
        const j = JSON.parse(f[INDEX].toString('utf8'));
        f[INDEX] = Buffer.from(
          JSON.stringify(j).replace(/("weight_map":\{"[^"]*":)"[^"]*"/, (_m, key) => `${key}${deep(1_000_000)}`),
        );
      },
      /not a file name/,
    );
    rejects(
      2,
      (f) => setHeader(f, 'model.safetensors', (h) => h.replace(/("moe\.quant\.[^"]*":)"(?:[^"\\]|\\.)*"/, '$1"null"')),
      /is not a JSON object/,
    );
    rejects(
      2,
      (f) =>
        setHeader(f, 'model.safetensors', (h) =>
          h.replace(
            /("moe\.quant\.[^"]*":)"(?:[^"\\]|\\.)*"/,
            (_m, key) =>
              `${key}${JSON.stringify(JSON.stringify({ bits: 4, group_size: 32, shape: 'X', dtype: 'BF16' }).replace('"X"', deep(1_000_000)))}`,
          ),
        ),
      /has shape/,
    );
  });
});
