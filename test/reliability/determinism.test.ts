/**
 * Determinism (issue 11): the same command twice writes byte-identical outputs, for every command that writes (with
 * 2 threads where the command computes on threads), and 1 thread writes what 2 threads write (the README claims
 * it). The runs of a command write to the same path (records name their inputs and output), so every file is compared
 * whole: sha256 per file, no field excluded. Written records hold no wall-clock time (src/io/output.ts
 * withoutTimings); timings are only in what a command prints. Every run is a fresh process of the built CLI
 * (runCli), so no state carried between runs can make them agree (and plain RTN runs on its worker threads).
 * The model is a synth checkpoint with the trained fixture's tokenizer cut to 512 tokens (text calibration and GGUF
 * need one).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CliResult, ROOT, runCli, tmpDir } from '../helpers';

const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');
/** Tokens of the model's vocabulary: the first VOCAB of tiny-moe's byte-level BPE (see smallTokenizer). */
const VOCAB = 512;
/**
 * tiny-moe's widths (K-quant rows need 256 columns) with 2 layers of 4 experts and a 512-token vocabulary: about a
 * third of its weights (the embeddings and output head of a 4,096-token vocabulary were over half of the model's),
 * so 4 runs of each GGUF export and GPTQ allocation stay fast.
 */
const SHAPE = [
  'hidden_size=256',
  'head_dim=64',
  'moe_intermediate_size=256',
  'num_experts=4',
  `vocab_size=${VOCAB}`,
  'num_hidden_layers=2',
].flatMap((s) => ['--set', s]);

/**
 * tiny-moe's tokenizer cut to its first `n` tokens: ids 0…256 are <|endoftext|> and the 256 bytes, and each merge
 * adds the next id, so the tokens below n and the merges that make them are a complete byte-level BPE.
 */
function smallTokenizer(n: number): string {
  const tok = JSON.parse(fs.readFileSync(path.join(TINY, 'tokenizer.json'), 'utf8'));
  const vocab = Object.fromEntries(
    Object.entries(tok.model.vocab as Record<string, number>).filter(([, id]) => id < n),
  );
  const merges = (tok.model.merges as [string, string][]).filter(([a, b]) => vocab[a + b] !== undefined);
  expect(Object.keys(vocab)).toHaveLength(n);
  expect(merges).toHaveLength(n - 257);
  return JSON.stringify({ ...tok, model: { ...tok.model, vocab, merges } });
}
/**
 * Calibration text: the first 16 KB of fixtures/text/calib.txt (about 4,500 tokens, of which --max-tokens keeps 1,024),
 * written in beforeAll. moe tokenizes the whole --data file before keeping --max-tokens, and the whole 1.1 MB file
 * takes about 2.5 s per run; equality of two runs does not depend on how much text lies past the tokens kept.
 */
let CALIB: string[];

/** sha256 of every file under `p` (a file or a folder), by relative path. */
function hashes(p: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  const full = path.join(p, rel);
  if (fs.statSync(full).isDirectory()) {
    for (const name of fs.readdirSync(full).sort()) Object.assign(out, hashes(p, path.join(rel, name)));
  } else out[rel || path.basename(p)] = createHash('sha256').update(fs.readFileSync(full)).digest('hex');
  return out;
}

async function ok(args: string[]): Promise<void> {
  const r: CliResult = runCli(args);
  if (r.code !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
}

describe('the same command twice writes the same bytes', () => {
  let work: string;
  let stats: string;
  let MODEL: string;

  /**
   * Runs `args(dest)` twice into the same `dest` and returns the two runs' hashes (with the file `extra`, e.g.
   * --report's).
   */
  async function twice(
    args: (dest: string) => string[],
    dest: string,
    extra?: string,
  ): Promise<[Record<string, string>, Record<string, string>]> {
    const runs: Record<string, string>[] = [];
    for (let k = 0; k < 2; k++) {
      fs.rmSync(dest, { recursive: true, force: true });
      if (extra) fs.rmSync(extra, { force: true });
      await ok(args(dest));
      runs.push({ ...hashes(dest), ...(extra ? hashes(extra) : {}) });
    }
    return [runs[0], runs[1]];
  }

  /**
   * Twice with --threads 2 (equal), and once with --threads 1, equal to them: three runs that must agree byte for
   * byte (a fourth, a second 1-thread run, would add time and no path the three do not take).
   */
  async function withThreads(label: string, args: (dest: string, report: string) => string[]): Promise<void> {
    const dest = path.join(work, label.replace(/\W+/g, '-'), 'out');
    const report = path.join(path.dirname(dest), 'report.json');
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    const uses = args(dest, report).includes(report) ? report : undefined;
    const [a2, b2] = await twice((d) => [...args(d, report), '--threads', '2'], dest, uses);
    fs.rmSync(dest, { recursive: true, force: true });
    if (uses) fs.rmSync(uses, { force: true });
    await ok([...args(dest, report), '--threads', '1']);
    const a1 = { ...hashes(dest), ...(uses ? hashes(uses) : {}) };
    expect(Object.keys(a2).length).toBeGreaterThan(0);
    expect(b2).toEqual(a2);
    expect(a1).toEqual(a2); // 1 thread equals 2 threads
  }

  async function noThreads(label: string, args: (dest: string) => string[]): Promise<void> {
    const dest = path.join(work, label.replace(/\W+/g, '-'), 'out');
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    const [a, b] = await twice(args, dest);
    expect(Object.keys(a).length).toBeGreaterThan(0);
    expect(b).toEqual(a);
  }

  beforeAll(async () => {
    work = tmpDir('moe-determinism-');
    stats = path.join(work, 'stats');
    MODEL = path.join(work, 'model');
    const text = fs.readFileSync(path.join(ROOT, 'fixtures', 'text', 'calib.txt'), 'utf8').slice(0, 16384);
    fs.writeFileSync(path.join(work, 'calib.txt'), text.slice(0, text.lastIndexOf('\n') + 1));
    CALIB = ['--data', path.join(work, 'calib.txt'), '--max-tokens', '1024', '--seq-len', '128'];
    await ok(['synth', '--arch', 'qwen3_moe', ...SHAPE, '--seed', '5', '-o', MODEL]);
    fs.copyFileSync(path.join(TINY, 'tokenizer_config.json'), path.join(MODEL, 'tokenizer_config.json'));
    fs.writeFileSync(path.join(MODEL, 'tokenizer.json'), smallTokenizer(VOCAB));
    await ok(['calibrate', MODEL, ...CALIB, '--hessians', '--naee-tokens', '256', '-o', stats]);
  }, 60_000);

  test(
    'convert',
    () => noThreads('convert', (d) => ['convert', MODEL, '--dtype', 'f32', '--max-shard-size', '10MB', '-o', d]),
    60_000,
  );

  test(
    'calibrate (with Hessians and NAEE samples)',
    () =>
      withThreads('calibrate', (d) => ['calibrate', MODEL, ...CALIB, '--hessians', '--naee-tokens', '256', '-o', d]),
    90_000,
  );

  test.each([
    ['prune reap', ['prune', '--method', 'reap', '--keep', '3']],
    ['prune naee', ['prune', '--method', 'naee', '--keep', '3']],
    ['merge msmoe', ['merge', '--method', 'msmoe', '--keep', '2']],
    ['merge hcsmoe', ['merge', '--method', 'hcsmoe', '--keep', '2']],
  ])(
    '%s',
    (label, [cmd, ...rest]) => noThreads(label, (d) => [cmd, MODEL, ...rest, '--stats', stats, '-o', d]),
    60_000,
  );

  test.each([
    ['quantize rtn packed', ['--bits', '4', '--method', 'rtn']],
    [
      'quantize gptq lp packed',
      ['--bits', '3', '--method', 'gptq', '--allocate', 'lp', '--stats', '<stats>', '--report', '<report>'],
    ],
    ['quantize dequantized', ['--bits', '4', '--method', 'gptq', '--stats', '<stats>', '--format', 'dequantized']],
  ])(
    '%s',
    (label, rest) =>
      withThreads(label, (d, report) => [
        'quantize',
        MODEL,
        ...rest.map((a) => (a === '<stats>' ? stats : a === '<report>' ? report : a)),
        '-o',
        d,
      ]),
    120_000,
  );

  // A uniform GGUF export computes on one thread (one pair of runs); the LP measures its errors on --threads worker
  // threads (src/gguf/error-pool.ts): 1 and 2 threads. A menu of three types (a real mix at 4.5 bpw) instead of all
  // six: the LP path is the same, at half the cost.
  test(
    'quantize gguf q4_k',
    () => noThreads('quantize gguf q4_k', (d) => ['quantize', MODEL, '--format', 'gguf', '--type', 'q4_k', '-o', d]),
    120_000,
  );
  test(
    'quantize gguf lp 4.5',
    () =>
      withThreads('quantize gguf lp 4.5', (d) => [
        'quantize',
        MODEL,
        ...['--format', 'gguf', '--allocate', 'lp', '--bpw', '4.5', '--type-menu', 'q3_k,q4_k,q6_k', '--stats', stats],
        '-o',
        d,
      ]),
    120_000,
  );

  test('assemble (of quantize --layers parts)', async () => {
    const parts: string[] = [];
    for (const r of ['0-0', '1-1']) {
      const dest = path.join(work, `part-${r}`);
      await ok(['quantize', MODEL, '--bits', '4', '--method', 'rtn', '--layers', r, '-o', dest]);
      parts.push(dest);
    }
    await noThreads('assemble', (d) => ['assemble', ...parts, '-o', d]);
  }, 60_000);

  test(
    'synth',
    () =>
      noThreads('synth', (d) => [
        'synth',
        '--arch',
        'deepseek_v3',
        '--seed',
        '3',
        '--max-shard-size',
        '100KB',
        '-o',
        d,
      ]),
    30_000,
  );

  test('run (calibrate → prune → quantize)', async () => {
    const dir = path.join(work, 'run');
    fs.mkdirSync(dir);
    const out = path.join(dir, 'out');
    const file = path.join(dir, 'recipe.yaml');
    const calib = `  - calibrate: { data: ${CALIB[1]}, seq_len: 128, max_tokens: 1024 }\n`;
    fs.writeFileSync(
      file,
      `model: ${MODEL}\noutput: ${out}\nsteps:\n${calib}  - prune: { method: reap, keep: 3 }\n  - quantize: { bits: 4, method: rtn }\n`,
    );
    const [a, b] = await twice(() => ['run', file], out);
    expect(Object.keys(a).filter((f) => f.endsWith('model.safetensors'))).toHaveLength(2);
    expect(b).toEqual(a);
    await noThreads('report (of the run)', (d) => ['report', out, '-o', d]);
  }, 120_000);

  test(
    'eval --dump-logits',
    () =>
      withThreads('eval --dump-logits', (d) => [
        'eval',
        MODEL,
        '--data',
        path.join(ROOT, 'fixtures', 'text', 'eval.txt'),
        '--max-tokens',
        '512',
        '--seq-len',
        '128',
        '--dump-logits',
        d,
      ]),
    90_000,
  );
});
