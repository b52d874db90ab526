/**
 * Chat templates (`moe generate --chat`): the tokenizer's Jinja chat template rendered as transformers 5's
 * `apply_chat_template(messages, tokenize=False, add_generation_prompt=…)` renders it, with @huggingface/jinja (a
 * maintained reimplementation of Jinja for chat templates: trim_blocks and lstrip_blocks on, `raise_exception` and
 * `strftime_now` defined, as transformers' sandboxed environment).
 *
 * Where the template comes from, as transformers' `from_pretrained` looks it up in a local folder:
 * - `chat_template.jinja` (the "default" template) and `additional_chat_templates/NAME.jinja` (named ones) beside the
 *   tokenizer; such files take priority over the tokenizer config;
 * - else `tokenizer_config.json`'s `chat_template`: a string, or a list of `{name, template}`.
 * With several templates, the one named "default" is used (`get_chat_template` with no name and no tools).
 *
 * The template sees `messages`, `add_generation_prompt`, `tools` and `documents` (None, as transformers passes
 * them) and the tokenizer's named special tokens as strings (`special_tokens_map`): bos_token, eos_token, unk_token,
 * sep_token, pad_token, cls_token, mask_token when set, plus the model-specific ones (`extra_special_tokens` given as
 * a dict, and any other string `*_token` key of the config). Token ids: encode the text with no special tokens added
 * (`apply_chat_template(tokenize=True)` calls the tokenizer with `add_special_tokens=False`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { CheckpointError, UsageError } from '../errors';
import { besideWeights } from '../io/checkpoint';

export interface ChatMessage {
  role: string;
  content: string;
}

const CONFIG = 'tokenizer_config.json';
const TEMPLATE_FILE = 'chat_template.jinja';
const TEMPLATE_DIR = 'additional_chat_templates';
/** transformers' SPECIAL_TOKENS_ATTRIBUTES: the named special tokens every tokenizer has (unset ones are left out). */
const NAMED_TOKENS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'];

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CheckpointError(`cannot read ${path.basename(file)} (${(e as Error).message})`, {
      file,
      hint: 'fix or re-save the tokenizer files',
    });
  }
}

function readJson(file: string): Record<string, unknown> {
  const text = readText(file);
  try {
    const v = JSON.parse(text) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new CheckpointError(`${path.basename(file)} is not a JSON object`, {
    file,
    hint: 'fix or re-save the tokenizer files',
  });
}

/** A special token's text: a string, or an AddedToken object `{"content": …}` as tokenizer configs store them. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return undefined;
}

/** The template files beside the tokenizer, by name ("default" for chat_template.jinja). */
function templateFiles(modelDir: string): Map<string, string> {
  const out = new Map<string, string>();
  const main = besideWeights(modelDir, TEMPLATE_FILE);
  if (main) out.set('default', main);
  const dir = besideWeights(modelDir, TEMPLATE_DIR);
  if (dir && fs.statSync(dir).isDirectory()) {
    for (const f of fs.readdirSync(dir).sort()) {
      if (f.endsWith('.jinja')) out.set(f.slice(0, -'.jinja'.length), path.join(dir, f));
    }
  }
  return out;
}

/** The "default" template and the file it came from; undefined when the model has none. */
function findTemplate(
  modelDir: string,
  config: Record<string, unknown>,
  configFile: string | undefined,
): { template: string; file: string } | undefined {
  const files = templateFiles(modelDir);
  if (files.size) {
    const file = files.get('default');
    if (!file) {
      throw new CheckpointError(
        `the model has chat templates (${[...files.keys()].join(', ')}) but none is "default"`,
        {
          file: path.join(modelDir, TEMPLATE_DIR),
          hint: `add ${TEMPLATE_FILE}, or drop --chat`,
        },
      );
    }
    return { template: readText(file), file };
  }
  const t = config.chat_template;
  if (t === undefined || t === null || !configFile) return undefined;
  if (typeof t === 'string') return { template: t, file: configFile };
  if (Array.isArray(t)) {
    const named = t as { name?: unknown; template?: unknown }[];
    const def = named.find((x) => x && x.name === 'default');
    if (def && typeof def.template === 'string') return { template: def.template, file: configFile };
    const names = named.map((x) => String(x?.name)).join(', ');
    throw new CheckpointError(`"chat_template" lists templates (${names}) but none named "default"`, {
      file: configFile,
      hint: 'add a template named "default", or drop --chat',
    });
  }
  throw new CheckpointError('"chat_template" must be a string or a list of {name, template}', {
    file: configFile,
    hint: 'fix the tokenizer config, or drop --chat',
  });
}

/**
 * The named special tokens transformers passes to the template (`special_tokens_map`): the standard ones, then the
 * model-specific ones; a legacy special_tokens_map.json fills the keys the config leaves unset.
 */
function specialTokens(modelDir: string, config: Record<string, unknown>): Record<string, string> {
  const legacyFile = besideWeights(modelDir, 'special_tokens_map.json');
  const merged: Record<string, unknown> = { ...config };
  if (legacyFile) {
    for (const [k, v] of Object.entries(readJson(legacyFile))) if (!merged[k]) merged[k] = v;
  }
  const out: Record<string, string> = {};
  for (const key of NAMED_TOKENS) {
    const v = tokenText(merged[key]);
    if (v !== undefined) out[key] = v;
  }
  const extra = merged.extra_special_tokens;
  const specific: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(merged)) {
    if (k.endsWith('_token') && !NAMED_TOKENS.includes(k) && tokenText(v) !== undefined) specific[k] = v;
  }
  if (extra && typeof extra === 'object' && !Array.isArray(extra)) Object.assign(specific, extra);
  for (const [k, v] of Object.entries(specific)) {
    const s = tokenText(v);
    if (s !== undefined) out[k] = s;
  }
  return out;
}

/** The model folder's default chat template (the raw Jinja text), or undefined when it has none. */
export function chatTemplateOf(modelDir: string): string | undefined {
  const configFile = besideWeights(modelDir, CONFIG);
  return findTemplate(modelDir, configFile ? readJson(configFile) : {}, configFile)?.template;
}

/** The conversation rendered with the model's chat template, as transformers' apply_chat_template(tokenize=False). */
export function applyChatTemplate(
  modelDir: string,
  messages: { role: string; content: string }[],
  opts: { addGenerationPrompt: boolean },
): string {
  const configFile = besideWeights(modelDir, CONFIG);
  const config = configFile ? readJson(configFile) : {};
  const found = findTemplate(modelDir, config, configFile);
  if (!found) {
    throw new UsageError(`the model has no chat template (no "chat_template" in ${CONFIG}, no ${TEMPLATE_FILE})`, {
      file: configFile ?? modelDir,
      hint: 'drop --chat',
    });
  }
  return renderChatTemplate(found, specialTokens(modelDir, config), messages, opts);
}

/**
 * A chat template (from `file`: a model folder's, or a GGUF file's tokenizer.chat_template) rendered with the given
 * special tokens (bos_token, eos_token, …).
 */
export function renderChatTemplate(
  found: { template: string; file: string },
  tokens: Record<string, string>,
  messages: { role: string; content: string }[],
  opts: { addGenerationPrompt: boolean },
): string {
  if (!messages.length) throw new UsageError('the conversation is empty', { hint: 'give at least one message' });
  let template: Template;
  try {
    template = new Template(found.template);
  } catch (e) {
    throw new CheckpointError(`the chat template does not parse (${(e as Error).message})`, {
      file: found.file,
      hint: 'fix the template, or drop --chat',
    });
  }
  try {
    return template.render({
      ...tokens,
      messages,
      tools: null,
      documents: null,
      add_generation_prompt: opts.addGenerationPrompt,
    });
  } catch (e) {
    throw new CheckpointError(`the chat template failed (${(e as Error).message})`, {
      file: found.file,
      hint: 'check the messages against what the template accepts, or drop --chat',
    });
  }
}
