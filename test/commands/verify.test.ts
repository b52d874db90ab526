/**
 * `moe verify`: a sound checkpoint passes; a NaN weight (with --nan), a truncated shard or a stale index fail with one
 * line, exit 3.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rawHeader, ROOT, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');

function copyModel(): string {
  const dir = path.join(tmpDir(), 'm');
  fs.cpSync(MODEL, dir, { recursive: true });
  return dir;
}

test('a sound checkpoint passes, with every value read under --nan', async () => {
  const r = await runMain(['verify', MODEL, '--nan', '--json']);
  expect(r.code).toBe(0);
  const j = JSON.parse(r.stdout);
  expect(j.ok).toBe(true);
  expect(j.values_checked).toBe(7413888);
  expect(j.tensors).toBe(102);
});

test('a NaN weight fails only with --nan; a truncated shard and a config that disagrees fail always', async () => {
  const dir = copyModel();
  const file = path.join(dir, 'model.safetensors');
  const { n, json } = rawHeader(file);
  const t = json['model.layers.1.mlp.experts.2.up_proj.weight'];
  const buf = fs.readFileSync(file);
  buf.writeUInt16LE(0x7fc0, 8 + n + t.data_offsets[0] + 10); // bf16 NaN
  fs.writeFileSync(file, buf);
  expect((await runMain(['verify', dir])).code).toBe(0);
  const nan = await runMain(['verify', dir, '--nan']);
  expect(nan.code).toBe(3);
  expect(nan.stderr.trim().split('\n')).toHaveLength(1);
  expect(nan.stderr).toMatch(/NaN or Inf.*experts\.2\.up_proj.*1 values/);
  // quantize refuses non-finite weights (packed and GGUF), writing nothing.
  for (const args of [
    ['--bits', '4'],
    ['--format', 'gguf', '--type', 'q8_0'],
  ]) {
    const q = await runMain(['quantize', dir, ...args, '-o', path.join(dir, '..', 'q')]);
    expect(q.code).toBe(3);
    expect(q.stderr).toMatch(/experts\.2\.up_proj.*NaN value/);
    expect(fs.existsSync(path.join(dir, '..', 'q'))).toBe(false);
  }
  fs.truncateSync(file, buf.length - 100);
  const cut = await runMain(['verify', dir]);
  expect(cut.code).toBe(3);
  expect(cut.stderr.trim().split('\n')).toHaveLength(1);
  const dir2 = copyModel();
  const cfg = JSON.parse(fs.readFileSync(path.join(dir2, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(dir2, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 4 }));
  const bad = await runMain(['verify', dir2]);
  expect(bad.code).toBe(3);
  expect(bad.stderr).toMatch(/layers\.3/);
});
