/**
 * Chat templates equal transformers' `apply_chat_template`: scripts/check_chat_template.py rendered three
 * conversations (with and without add_generation_prompt) for a template in fixtures/tiny-dsv3's tokenizer_config.json,
 * a list of named templates, and a chat_template.jinja file with AddedToken and model-specific special tokens, and
 * committed the text and token ids (fixtures/reference/chat-template.json).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { applyChatTemplate } from '../../src/eval/chat';
import { loadTokenizer } from '../../src/eval/tokenizer';
import { CheckpointError, UsageError } from '../../src/errors';
import { ROOT, tmpDir } from '../helpers';

const MODEL = path.join(ROOT, 'fixtures', 'tiny-dsv3');
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'chat-template.json'), 'utf8'));

interface Case {
  messages: { role: string; content: string }[];
  add_generation_prompt: boolean;
  text: string;
  ids: number[];
}
interface Layout {
  files: Record<string, unknown> | null;
  cases: Case[];
}

const work = tmpDir('moe-chat-');

/** The layout's folder: the fixture itself, or its tokenizer.json plus the recorded files. */
function folder(name: string, files: Record<string, unknown> | null): string {
  if (!files) return MODEL;
  const dir = path.join(work, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(path.join(MODEL, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
  for (const [f, content] of Object.entries(files)) {
    fs.writeFileSync(path.join(dir, f), typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  }
  return dir;
}

function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

describe('applyChatTemplate equals transformers apply_chat_template', () => {
  test.each(Object.keys(ref.layouts))('%s: text and token ids of every conversation', (name) => {
    const layout = ref.layouts[name] as Layout;
    const dir = folder(name, layout.files);
    const tok = loadTokenizer(dir);
    expect(layout.cases).toHaveLength(6);
    for (const c of layout.cases) {
      const text = applyChatTemplate(dir, c.messages, { addGenerationPrompt: c.add_generation_prompt });
      expect(text).toBe(c.text);
      expect(tok.encode(text)).toEqual(c.ids);
    }
  });

  test('the fixture: a ChatML conversation with the system prompt and the generation prompt', () => {
    const text = applyChatTemplate(MODEL, [{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
    expect(text).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
  });

  test('a model without a template: UsageError naming the file, saying to drop --chat', () => {
    const e = thrown(() =>
      applyChatTemplate(path.join(ROOT, 'fixtures', 'tiny-moe'), [{ role: 'user', content: 'x' }], {
        addGenerationPrompt: true,
      }),
    ) as UsageError;
    expect(e).toBeInstanceOf(UsageError);
    expect(e.line()).toBe(
      'the model has no chat template (no "chat_template" in tokenizer_config.json, no chat_template.jinja) ' +
        `(${path.join(ROOT, 'fixtures', 'tiny-moe', 'tokenizer_config.json')}); drop --chat`,
    );
  });

  test("the template's raise_exception and a list without a default: CheckpointError naming the file", () => {
    const e = thrown(() => applyChatTemplate(MODEL, [{ role: 'tool', content: 'x' }], { addGenerationPrompt: false }));
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message).toContain('the chat template failed (');
    expect(e.message).toContain('Unknown role: tool');
    expect((e as CheckpointError).file).toBe(path.join(MODEL, 'tokenizer_config.json'));
    const cfg = JSON.parse(fs.readFileSync(path.join(MODEL, 'tokenizer_config.json'), 'utf8'));
    const dir = folder('no-default', {
      'tokenizer_config.json': { ...cfg, chat_template: [{ name: 'tool_use', template: 'x' }] },
    });
    const e2 = thrown(() => applyChatTemplate(dir, [{ role: 'user', content: 'x' }], { addGenerationPrompt: false }));
    expect(e2).toBeInstanceOf(CheckpointError);
    expect((e2 as CheckpointError).line()).toBe(
      `"chat_template" lists templates (tool_use) but none named "default" (${path.join(dir, 'tokenizer_config.json')})` +
        '; add a template named "default", or drop --chat',
    );
  });
});
