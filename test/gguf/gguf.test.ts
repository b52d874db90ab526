/**
 * GGUF output: moe writes the fixture as GGUF again (deterministic), re-opens the file with its own reader and
 * dequantizes every tensor; the values must hash to what gguf-py (llama.cpp's Python package) dequantized from the
 * same files (fixtures/reference/gguf-dequant.json, made by scripts/check_gguf.py, which also checked equality).
 * Plus the codecs' own properties: more bits, less error; the imatrix lowers the importance-weighted error.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { calibrate } from '../../src/commands/calibrate';
import { exportGguf, GgufOptions, parseGgmlType } from '../../src/commands/gguf';
import { dequantizeRows, GGML_TYPE_ID, GgmlType, quantizeRows, rowBytes } from '../../src/gguf/quants';
import { readGguf } from '../../src/io/gguf-reader';
import { quiet, ROOT, runMain, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'gguf-dequant.json'), 'utf8'));
const TYPE_BY_ID = new Map(Object.entries(GGML_TYPE_ID).map(([k, v]) => [v, k as GgmlType]));

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

describe("GGUF output equals gguf-py's reading of it", () => {
  let stats: string;
  /** The q8_0 case's file: the metadata test reads it instead of exporting the same Q8_0 file again. */
  let q8File: string | undefined;
  beforeAll(async () => {
    stats = path.join(tmpDir(), 'stats');
    const c: string[] = ref.calibrate;
    // The reference backend (flag(c, '--backend')): its imatrix is the same on every CPU, as the committed hashes need.
    await calibrate(
      {
        model: MODEL,
        data: path.join(ROOT, 'fixtures', 'text', 'calib.txt'),
        seqLen: Number(flag(c, '--seq-len')),
        maxTokens: Number(flag(c, '--max-tokens')),
        backend: flag(c, '--backend') as 'ref',
        output: stats,
      },
      quiet,
    );
  }, 60_000);

  test.each(
    Object.entries(
      ref.cases as Record<
        string,
        {
          args: string[];
          architecture: string;
          tensor_count: number;
          tensors: Record<string, { type: string; shape: number[]; sha256: string }>;
        }
      >,
    ),
  )(
    '%s',
    async (_name, c) => {
      const out = path.join(tmpDir(), 'gguf');
      const o: GgufOptions = { model: MODEL, output: out, stats: c.args.includes('--stats') ? stats : undefined };
      if (flag(c.args, '--type')) o.type = parseGgmlType(flag(c.args, '--type')!);
      if (flag(c.args, '--allocate')) Object.assign(o, { allocate: 'lp', bpw: Number(flag(c.args, '--bpw')) });
      const report = await exportGguf(o, quiet);
      if (c.args.join(' ') === '--type q8_0') q8File = report.output;
      const g = readGguf(report.output);
      expect(g.metadata.get('general.architecture')).toBe(c.architecture);
      expect(g.tensors.length).toBe(c.tensor_count);
      const buf = fs.readFileSync(report.output);
      for (const t of g.tensors) {
        const want = c.tensors[t.name];
        expect(want).toBeDefined();
        const type = TYPE_BY_ID.get(t.type)!;
        expect(type).toBe(want.type);
        expect(t.shape).toEqual(want.shape);
        const cols = t.shape[t.shape.length - 1];
        const rows = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
        const bytes = new Uint8Array(buf.buffer, buf.byteOffset + t.offset, rows * rowBytes(type, cols)).slice();
        const values = dequantizeRows(bytes, rows, cols, type);
        expect(createHash('sha256').update(Buffer.from(values.buffer)).digest('hex')).toBe(want.sha256);
      }
      expect(report.file_bytes).toBe(buf.length);
    },
    60_000,
  );

  test('tokenizer and hyperparameters llama.cpp needs are in the file', async () => {
    const file =
      q8File ?? (await exportGguf({ model: MODEL, output: path.join(tmpDir(), 'g'), type: 'Q8_0' }, quiet)).output;
    const m = readGguf(file).metadata;
    const tok = JSON.parse(fs.readFileSync(path.join(MODEL, 'tokenizer.json'), 'utf8'));
    expect(m.get('tokenizer.ggml.model')).toBe('gpt2');
    const tokens = m.get('tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(4096);
    for (const [text, id] of Object.entries(tok.model.vocab as Record<string, number>).slice(0, 50))
      expect(tokens[id]).toBe(text);
    expect((m.get('tokenizer.ggml.merges') as string[]).length).toBe(tok.model.merges.length);
    expect(m.get('tokenizer.ggml.eos_token_id')).toBe(0);
    expect(m.get('qwen3moe.expert_count')).toBe(8);
    expect(m.get('qwen3moe.expert_used_count')).toBe(2);
    expect(m.get('qwen3moe.expert_feed_forward_length')).toBe(256);
    expect(m.get('qwen3moe.attention.key_length')).toBe(64);
    expect(m.get('qwen3moe.block_count')).toBe(3);
  });

  test('a .gguf path, --dry-run, and bad input', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'sub', 'model-q8.gguf');
    fs.mkdirSync(path.dirname(file));
    const dry = await runMain([
      'quantize',
      MODEL,
      '--format',
      'gguf',
      '--type',
      'q6_k',
      '-o',
      file,
      '--dry-run',
      '--json',
    ]);
    expect(dry.code).toBe(0);
    expect(fs.existsSync(file)).toBe(false);
    expect(JSON.parse(dry.stdout).bpw).toBeCloseTo(6.5625, 6);
    expect((await runMain(['quantize', MODEL, '--format', 'gguf', '--type', 'q6_k', '-o', file])).code).toBe(0);
    expect(readGguf(file).tensors.length).toBe(39);
    for (const [args, re] of [
      [['--type', 'q9_k'], /--type "q9_k" is not a GGUF type/],
      [['--allocate', 'lp', '--bpw', '4.5'], /needs --stats/],
      [['--bits', '4'], /not --bits/],
    ] as [string[], RegExp][]) {
      const r = await runMain(['quantize', MODEL, '--format', 'gguf', ...args, '-o', path.join(dir, 'bad')]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(re);
      expect(fs.existsSync(path.join(dir, 'bad'))).toBe(false);
    }
  });
});

describe('ggml codecs', () => {
  const rows = 6;
  const cols = 512;
  let s = 7;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 4294967296);
  const x = Float32Array.from({ length: rows * cols }, () => (rnd() - 0.5) * (rnd() < 0.03 ? 10 : 1));
  x.fill(0, 0, cols); // an all-zero row
  const imp = Float32Array.from({ length: cols }, (_, c) => (c % 7 === 0 ? 50 : 1) * (0.5 + rnd()));
  const err = (t: GgmlType, w?: Float32Array) => {
    const d = dequantizeRows(quantizeRows(x, rows, cols, t, w), rows, cols, t);
    let e = 0;
    for (let i = 0; i < x.length; i++) e += (w ? imp[i % cols] : 1) * (x[i] - d[i]) ** 2;
    return e;
  };

  test('more bits, less error; zero rows stay zero; F16 and BF16 decode what they encode', () => {
    const order: GgmlType[] = ['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'Q8_0'];
    for (let i = 1; i < order.length; i++) expect(err(order[i])).toBeLessThan(err(order[i - 1]));
    for (const t of [...order, 'Q4_0' as GgmlType]) {
      const d = dequantizeRows(quantizeRows(x, rows, cols, t), rows, cols, t);
      expect(d.subarray(0, cols).every((v) => v === 0)).toBe(true);
    }
    for (const t of ['F16', 'BF16'] as GgmlType[]) {
      const once = dequantizeRows(quantizeRows(x, rows, cols, t), rows, cols, t);
      expect(
        Buffer.from(dequantizeRows(quantizeRows(once, rows, cols, t), rows, cols, t).buffer).equals(
          Buffer.from(once.buffer),
        ),
      ).toBe(true);
    }
  });

  test.each(['Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K'] as GgmlType[])(
    '%s: the imatrix lowers the importance-weighted error',
    (t) => {
      const plain = dequantizeRows(quantizeRows(x, rows, cols, t), rows, cols, t);
      const weighted = dequantizeRows(quantizeRows(x, rows, cols, t, imp), rows, cols, t);
      let ePlain = 0;
      let eWeighted = 0;
      for (let i = 0; i < x.length; i++) {
        ePlain += imp[i % cols] * (x[i] - plain[i]) ** 2;
        eWeighted += imp[i % cols] * (x[i] - weighted[i]) ** 2;
      }
      expect(eWeighted).toBeLessThan(ePlain);
    },
  );
});
