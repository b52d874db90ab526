/**
 * config.json rewriting keeps the exact text of every key moe does not change (transformers 5 refuses `0` for a float).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { prune } from '../../src/commands/prune';
import { configJson, editJsonText } from '../../src/io/config-text';
import { EXPERT_COUNT_KEYS } from '../../src/model/config';
import { GOLDEN, makeSynth, quiet, ROOT, tmpDir } from '../helpers';

const CASES = [
  'mixtral',
  'mixtral-bf16-sharded',
  'qwen2_moe',
  'qwen3_moe',
  'qwen3_moe-rope-scaled',
  'olmoe',
  'deepseek_v2',
  'deepseek_v3',
];

describe('editJsonText', () => {
  test.each(CASES)('%s: changing only the expert count changes only that value', (name) => {
    const text = fs.readFileSync(path.join(GOLDEN, name, 'config.json'), 'utf8');
    const config = JSON.parse(text) as Record<string, unknown>;
    const key = EXPERT_COUNT_KEYS.find((k) => typeof config[k] === 'number')!;
    const old = config[key] as number;
    const out = editJsonText(text, { ...config, [key]: old - 1 });
    // The source text with only that number replaced, byte for byte.
    const expected = text.replace(`"${key}": ${old},`, `"${key}": ${old - 1},`);
    expect(expected).not.toBe(text);
    expect(out).toBe(expected);
    expect(editJsonText(text, config)).toBe(text);
  });

  test('float forms, nested objects, removed and added keys', () => {
    const text =
      '{\n  "a": 0.0,\n  "b": 1e-05,\n  "r": {\n    "rope_theta": 10000.0,\n    "t": "default"\n  },\n  "n": [1, 2],\n  "q": {"x": 1},\n  "z": null\n}\n';
    const v = JSON.parse(text);
    // A float changed to an integral value stays a float; an unchanged nested member keeps its text.
    expect(editJsonText(text, { ...v, a: 1, r: { ...v.r, t: 'yarn' } })).toBe(
      text.replace('"a": 0.0', '"a": 1.0').replace('"default"', '"yarn"'),
    );
    // Removing a key takes its comma; a new key is appended with the source's indentation.
    const { q: _q, ...rest } = v;
    expect(editJsonText(text, { ...rest, quantization_config: { bits: 4, m: 'x' } })).toBe(
      '{\n  "a": 0.0,\n  "b": 1e-05,\n  "r": {\n    "rope_theta": 10000.0,\n    "t": "default"\n  },\n  "n": [1, 2],\n  "z": null,\n  "quantization_config": {\n    "bits": 4,\n    "m": "x"\n  }\n}\n',
    );
    expect(JSON.parse(editJsonText(text, { ...v, n: [3], z: 2.5 }))).toEqual({ ...v, n: [3], z: 2.5 });
    expect(editJsonText('{}', { a: 1 })).toBe('{\n  "a": 1\n}');
    // A one-line source keeps its layout; long numbers keep every digit.
    const compact = '{"a":0.0,"b":1,"p":0.123456789012345678901234567890123456789012345678901234567890123456789}';
    expect(editJsonText(compact, { ...JSON.parse(compact), b: 2, c: 3 })).toBe(
      compact.replace('"b":1', '"b":2').replace(/}$/, ',"c":3}'),
    );
    expect(editJsonText(compact, { a: 0 })).toBe('{"a":0.0}');
    // Without a source, fields transformers declares float get a float form (strict validation refuses an int).
    expect(configJson({ routed_scaling_factor: 1, rms_norm_eps: 1e-6, n: 2, r: { x: [1] } })).toBe(
      '{\n  "routed_scaling_factor": 1.0,\n  "rms_norm_eps": 0.000001,\n  "n": 2,\n  "r": {\n    "x": [\n      1\n    ]\n  }\n}\n',
    );
  });

  test('moe synth writes float fields as floats', async () => {
    const dir = await makeSynth('deepseek_v2', path.join(tmpDir(), 'synth'));
    expect(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).toContain('"routed_scaling_factor": 1.0,');
  });
});

test('moe prune of a transformers-written Mixtral keeps every other key of config.json byte-exact', async () => {
  const dir = tmpDir();
  const model = path.join(GOLDEN, 'mixtral');
  await calibrate(
    {
      model,
      output: path.join(dir, 'stats'),
      data: path.join(ROOT, 'fixtures', 'reference', 'golden-data', 'calib.json'),
      seqLen: 32,
    },
    quiet,
  );
  await prune(
    { model, stats: path.join(dir, 'stats'), method: 'frequency', keep: 3, output: path.join(dir, 'pruned') },
    quiet,
  );
  const src = fs.readFileSync(path.join(model, 'config.json'), 'utf8');
  const written = fs.readFileSync(path.join(dir, 'pruned', 'config.json'), 'utf8');
  expect(written).toBe(src.replace('"num_local_experts": 4,', '"num_local_experts": 3,'));
  expect(written).toContain('"router_jitter_noise": 0.0,');
  expect(written).toContain('"attention_dropout": 0.0,');
});
