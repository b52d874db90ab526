/**
 * Writing config.json so that every key moe does not change keeps its exact source text. JSON.parse/stringify
 * loses the number form (`0.0` becomes `0`, `1e-05` becomes `0.00001`), and transformers 5's strict config
 * validation refuses an int where the field is a float ("Field 'router_jitter_noise' expected float, got int").
 * So the new config is spliced into the source text: unchanged values (compared after parsing) keep their raw
 * text, key order and layout; objects present in both are edited member by member; changed values are written
 * in the number kind the source used (a float stays a float: 1 → `1.0`); removed keys disappear with their comma;
 * new keys are appended in the source's indentation.
 */
import * as fs from 'node:fs';
import { besideWeights } from './checkpoint';
import type { OutputFolder } from './output';

interface Member {
  /** Text between the previous `{` or `,` and the key (whitespace). */
  lead: string;
  key: string;
  keyRaw: string;
  /** Text between the key and the value (`: `). */
  colon: string;
  value: Value;
}

interface Value {
  start: number;
  end: number;
  /** For objects: the members, and the text between the last member (or `{`) and `}`. */
  members?: Member[];
  tail?: string;
}

const SCALAR = /-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null/y;

class Parser {
  i = 0;
  constructor(readonly text: string) {}

  fail(why: string): never {
    throw new SyntaxError(`JSON text at ${this.i}: ${why}`);
  }

  ws(): void {
    while (this.i < this.text.length && ' \t\n\r'.includes(this.text[this.i])) this.i++;
  }

  string(): string {
    const start = this.i;
    if (this.text[this.i] !== '"') this.fail('expected a string');
    this.i++;
    while (this.i < this.text.length && this.text[this.i] !== '"') this.i += this.text[this.i] === '\\' ? 2 : 1;
    if (this.i >= this.text.length) this.fail('unterminated string');
    this.i++;
    return JSON.parse(this.text.slice(start, this.i)) as string;
  }

  value(): Value {
    this.ws();
    const start = this.i;
    const c = this.text[this.i];
    if (c === '{') return this.object(start);
    if (c === '[') {
      this.i++;
      this.ws();
      if (this.text[this.i] !== ']') {
        for (;;) {
          this.value();
          this.ws();
          if (this.text[this.i] === ',') this.i++;
          else break;
        }
      }
      if (this.text[this.i] !== ']') this.fail('expected , or ]');
      this.i++;
    } else if (c === '"') this.string();
    else {
      SCALAR.lastIndex = this.i;
      const m = SCALAR.exec(this.text);
      if (!m) this.fail('expected a value');
      this.i += m[0].length;
    }
    return { start, end: this.i };
  }

  object(start: number): Value {
    this.i++; // {
    const members: Member[] = [];
    let from = this.i;
    this.ws();
    if (this.text[this.i] !== '}') {
      for (;;) {
        this.ws();
        const lead = this.text.slice(from, this.i);
        const keyStart = this.i;
        const key = this.string();
        const keyRaw = this.text.slice(keyStart, this.i);
        const colonStart = this.i;
        this.ws();
        if (this.text[this.i] !== ':') this.fail('expected :');
        this.i++;
        this.ws();
        const colon = this.text.slice(colonStart, this.i);
        members.push({ lead, key, keyRaw, colon, value: this.value() });
        from = this.i;
        this.ws();
        if (this.text[this.i] !== ',') break;
        this.i++;
        from = this.i;
      }
    }
    const tail = this.text.slice(from, this.i);
    if (this.text[this.i] !== '}') this.fail('expected , or }');
    this.i++;
    return { start, end: this.i, members, tail };
  }
}

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (
    typeof a !== 'object' ||
    typeof b !== 'object' ||
    a === null ||
    b === null ||
    Array.isArray(a) !== Array.isArray(b)
  )
    return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return (
    ka.length === kb.length &&
    ka.every((k) => k in b && sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  );
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Fields transformers 5.18 declares float-only (`configuration_<arch>.py` of the supported types): its strict
 * validation refuses an int there, so an integral value is written as `1.0`.
 */
const FLOAT_KEYS = new Set([
  'initializer_range',
  'rms_norm_eps',
  'routed_scaling_factor',
  'router_aux_loss_coef',
  'router_jitter_noise',
  'clip_qkv',
  'attention_dropout',
]);

/** A new value of `key` at `indent`; a number keeps the kind (int or float) of the value it replaces. */
function format(value: unknown, indent: string, key: string, replacedRaw?: string): string {
  const wasFloat = replacedRaw !== undefined && /^-?\d+(\.\d+|[eE])/.test(replacedRaw);
  if (
    typeof value === 'number' &&
    Number.isInteger(value) &&
    !/[.eE]/.test(String(value)) &&
    (wasFloat || FLOAT_KEYS.has(key))
  )
    return `${value}.0`;
  return JSON.stringify(value, null, 2).replace(/\n/g, `\n${indent}`);
}

function indentOf(lead: string): string {
  const nl = lead.lastIndexOf('\n');
  return nl >= 0 ? lead.slice(nl + 1) : '';
}

/** The leading whitespace of the line holding `pos`. */
function lineIndent(text: string, pos: number): string {
  return /^[ \t]*/.exec(text.slice(text.lastIndexOf('\n', pos - 1) + 1))![0];
}

function edit(text: string, v: Value, value: unknown, key = ''): string {
  const raw = text.slice(v.start, v.end);
  if (sameJson(JSON.parse(raw), value)) return raw;
  if (!v.members || !isPlainObject(value)) return format(value, lineIndent(text, v.start), key, raw);
  const parts: string[] = [];
  const seen = new Set<string>();
  for (const m of v.members) {
    seen.add(m.key);
    if (!(m.key in value) || value[m.key] === undefined) continue;
    parts.push(m.lead + m.keyRaw + m.colon + edit(text, m.value, value[m.key], m.key));
  }
  const last = v.members[v.members.length - 1];
  const lead = last?.lead ?? `\n${lineIndent(text, v.start)}  `;
  const colon = last?.colon ?? ': ';
  for (const [k, x] of Object.entries(value)) {
    if (seen.has(k) || x === undefined) continue;
    parts.push(lead + JSON.stringify(k) + colon + format(x, indentOf(lead), k));
  }
  const tail = v.members.length > 0 ? v.tail! : parts.length > 0 ? `\n${lineIndent(text, v.start)}` : v.tail!;
  return `{${parts.join(',')}${tail}}`;
}

/** `value` written as JSON text that keeps `source`'s text wherever the two agree. */
export function editJsonText(source: string, value: unknown): string {
  const p = new Parser(source);
  const root = p.value();
  p.ws();
  if (p.i !== source.length) p.fail('text after the value');
  return source.slice(0, root.start) + edit(source, root, value) + source.slice(root.end);
}

/** The exact text of a model folder's config.json, or undefined when there is none. */
export function readConfigText(dir: string): string | undefined {
  const file = besideWeights(dir, 'config.json');
  return file ? fs.readFileSync(file, 'utf8') : undefined;
}

/**
 * config.json text for `config`: `source`'s text edited where they differ, or (no source) JSON indented by 2 with float
 * fields as floats.
 */
export function configJson(config: unknown, source?: string): string {
  if (source !== undefined) {
    try {
      return editJsonText(source, config);
    } catch {
      // The source was parsed once already (readConfig); a text this parser cannot follow falls back to plain JSON.
    }
  }
  return editJsonText('{}\n', config);
}

/** Writes `config` as the output's config.json, keeping the text of `sourceDir`'s config.json where they agree. */
export function writeConfig(out: OutputFolder, config: unknown, sourceDir?: string): void {
  fs.writeFileSync(
    out.file('config.json'),
    configJson(config, sourceDir === undefined ? undefined : readConfigText(sourceDir)),
  );
}
