/** @jest-environment ./test/backend/ort-environment.js */
/**
 * `moe generate`: greedy decoding equals transformers' greedy generate token for token for 32 new tokens on the two
 * trained fixtures (fixtures/reference/generate-hf.json, scripts/check_generate.py; EOS disabled on both sides), the
 * CLI's --json report, EOS and --stop handling, seeded top-p sampling, and bad input exit codes (the onnx
 * backend throughout).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createBackend } from '../../src/backend/index';
import { generateCommand, unescapeStop } from '../../src/commands/generate';
import { generate, promptIds, sample } from '../../src/eval/generate';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { Decoder } from '../../src/model/forward/decode';
import { loadArchitecture } from '../../src/model/registry';
import { mulberry32 } from '../../src/util/random';
import { exportGguf } from '../../src/commands/gguf';
import { readGguf } from '../../src/io/gguf-reader';
import { quiet, ROOT, runMain, tmpDir } from '../helpers';
import { byteTokenizer } from '../model/byte-tokenizer';

interface HfCase {
  prompt: string;
  input_ids: number[];
  new_ids: number[];
  text: string;
}
const REF = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'generate-hf.json'), 'utf8')) as {
  new_tokens: number;
  models: Record<string, HfCase[]>;
  chat: Record<string, HfCase[]>;
};
const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');

describe.each(Object.keys(REF.models))('%s', (name) => {
  test("greedy generation equals transformers' for 32 new tokens", async () => {
    const dir = path.join(ROOT, 'fixtures', name);
    const ckpt = openCheckpoint(dir);
    const reader = new TensorReader(ckpt);
    const tok = loadTokenizer(dir);
    const be = await createBackend('onnx', { threads: 1 });
    const dec = new Decoder(reader, loadArchitecture(ckpt), be);
    try {
      for (const c of REF.models[name]) {
        const ids = promptIds(tok, c.prompt);
        expect(ids).toEqual(c.input_ids);
        const g = await generate(dec, tok, ids, { maxNewTokens: REF.new_tokens, eos: [] });
        expect(g.ids).toEqual(c.new_ids);
        expect(g.text).toBe(c.text);
        expect(g.stopReason).toBe('length');
      }
    } finally {
      reader.close();
      await be.dispose();
    }
  });
});

test("--chat: the prompt as a user message through the chat template, as transformers' apply_chat_template", async () => {
  const [name, cases] = Object.entries(REF.chat)[0];
  const c = cases[0];
  const r = await generateCommand({
    model: path.join(ROOT, 'fixtures', name),
    prompt: c.prompt,
    chat: true,
    maxNewTokens: REF.new_tokens,
    threads: 1,
  });
  expect(r.prompt_tokens).toBe(c.input_ids.length);
  expect(r.token_ids).toEqual(c.new_ids);
  expect(r.text).toBe(c.text);
  // Without the template the prompt is other tokens (transformers' tokenizer(prompt) of the plain text).
  expect(r.prompt_tokens).toBeGreaterThan(promptIds(loadTokenizer(path.join(ROOT, 'fixtures', name)), c.prompt).length);
  // A model without a chat template: one line, exit 2.
  const bad = await runMain(['generate', TINY, '--prompt', 'Call me', '--chat']);
  expect(bad.code).toBe(2);
  expect(bad.stderr.trim().split('\n')).toHaveLength(1);
  expect(bad.stderr).toMatch(/no chat template .*drop --chat/);
});

test('--chat on a GGUF file: the export stores the chat template (tokenizer.chat_template) and generate uses it', async () => {
  const [name, cases] = Object.entries(REF.chat)[0];
  const dir = path.join(ROOT, 'fixtures', name);
  const file = (await exportGguf({ model: dir, output: path.join(tmpDir(), 'chat.gguf'), type: 'Q8_0' }, quiet)).output;
  const template = readGguf(file).metadata.get('tokenizer.chat_template');
  expect(template).toBe(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')).chat_template);
  const r = await generateCommand({ model: file, prompt: cases[0].prompt, chat: true, maxNewTokens: 2, threads: 1 });
  expect(r.prompt_tokens).toBe(cases[0].input_ids.length); // the same rendering and tokens as transformers'
  // A GGUF without a template: one line, exit 2.
  const plain = (await exportGguf({ model: TINY, output: path.join(tmpDir(), 'plain.gguf'), type: 'Q8_0' }, quiet))
    .output;
  const bad = await runMain(['generate', plain, '--prompt', 'Call me', '--chat']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/GGUF file has no chat template .*drop --chat/);
}, 60_000);

/** tiny-moe on the onnx backend. */
async function tinyDecoder() {
  const ckpt = openCheckpoint(TINY);
  const reader = new TensorReader(ckpt);
  const be = await createBackend('onnx', { threads: 1 });
  return { reader, be, tok: loadTokenizer(TINY), dec: new Decoder(reader, loadArchitecture(ckpt), be) };
}

test('--json: the report of a greedy run; EOS and --stop end it; seeded sampling repeats', async () => {
  const c = REF.models['tiny-moe'][1];
  const r = await runMain([
    'generate',
    TINY,
    '--prompt',
    c.prompt,
    '--max-new-tokens',
    '12',
    '--threads',
    '1',
    '--json',
  ]);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout);
  expect(out).toMatchObject({
    prompt: c.prompt,
    prompt_tokens: c.input_ids.length,
    token_ids: c.new_ids.slice(0, 12),
    new_tokens: 12,
    stop_reason: 'length',
    backend: 'onnx',
  });
  expect(out.text).toBe(c.text.slice(0, out.text.length));
  expect(out.tokens_per_second).toBeGreaterThan(0);
  const { reader, be, tok, dec } = await tinyDecoder();
  try {
    // a stop string: the text is cut before its first occurrence (here '"', within the 32 reference tokens)
    const stopped = await generate(dec, tok, c.input_ids, { maxNewTokens: 32, stop: ['"'], eos: [] });
    expect(stopped.stopReason).toBe('stop');
    expect(stopped.text).toBe(c.text.slice(0, c.text.indexOf('"')));
    // EOS: tiny-moe's eos_token_id 0 never comes greedily here, so the model's own 4th token is made the EOS
    const g = await generate(dec, tok, c.input_ids, { maxNewTokens: 32, eos: [c.new_ids[3]] });
    expect(g.stopReason).toBe('eos');
    expect(g.ids).toEqual(c.new_ids.slice(0, c.new_ids.indexOf(c.new_ids[3]) + 1));
    expect(g.text).toBe(tok.decode(g.ids.slice(0, -1)));
    // sampling: the same seed gives the same tokens, another seed other ones
    const o = { maxNewTokens: 6, temperature: 1, eos: [] };
    const a = await generate(dec, tok, c.input_ids, { ...o, seed: 3 });
    expect((await generate(dec, tok, c.input_ids, { ...o, seed: 3 })).ids).toEqual(a.ids);
    expect((await generate(dec, tok, c.input_ids, { ...o, seed: 4 })).ids).not.toEqual(a.ids);
  } finally {
    reader.close();
    await be.dispose();
  }
});

test('--stop escapes: \\n, \\t and \\\\', () => {
  expect(unescapeStop('a\\nb\\tc\\\\n')).toBe('a\nb\tc\\n');
});

test('top-p keeps the nucleus', () => {
  // logits 3, 2, 1, 0: probabilities .644 .237 .087 .032; top-p 0.7 keeps the first two only
  const logits = Float32Array.of(1, 3, 0, 2);
  const rand = mulberry32(1);
  const seen = new Set<number>();
  for (let i = 0; i < 200; i++) seen.add(sample(logits, 1, 0.7, rand));
  expect([...seen].sort()).toEqual([1, 3]);
  const all = new Set<number>();
  for (let i = 0; i < 400; i++) all.add(sample(logits, 1, 1, rand));
  expect([...all].sort()).toEqual([0, 1, 2, 3]);
});

test('bad input: one line, exit 2 or 3', async () => {
  const neg = await runMain(['generate', TINY, '--prompt', 'x', '--temperature', '-1']);
  expect(neg.code).toBe(2);
  expect(neg.stderr.trim()).toBe('moe: --temperature -1 must be a number ≥ 0; 0 is greedy decoding');
  const topP = await runMain(['generate', TINY, '--prompt', 'x', '--top-p', '0.9']);
  expect(topP.code).toBe(2);
  expect(topP.stderr.trim()).toBe(
    'moe: --top-p needs --temperature above 0; greedy decoding (temperature 0) ignores it',
  );
  const golden = path.join(ROOT, 'fixtures', 'golden', 'deepseek_v32');
  const noTok = await runMain(['generate', golden, '--prompt', 'x']);
  expect(noTok.code).toBe(3);
  expect(noTok.stderr.trim()).toMatch(/^moe: no tokenizer\.json in the model folder \(.*\); /);
  // deepseek_v32 (index_topk 32): a prompt and --max-new-tokens beyond it are refused before any weight is read
  const dir = path.join(tmpDir(), 'deepseek_v32');
  fs.cpSync(golden, dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteTokenizer()));
  const long = await runMain(['generate', dir, '--prompt', 'abc', '--max-new-tokens', '30']);
  expect(long.code).toBe(2);
  expect(long.stderr.trim()).toBe(
    `moe: the prompt (3 tokens) plus --max-new-tokens 30: a window of 33 tokens is longer than index_topk 32: ` +
      `deepseek_v32 then attends only to the 32 tokens its indexer selects, and moe runs dense attention only ` +
      `(sparse attention is not implemented) (${dir}); use a shorter --prompt or a smaller --max-new-tokens`,
  );
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
});
