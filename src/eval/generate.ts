/**
 * Text generation on the KV-cache decoder (src/model/forward/decode.ts): the prompt in one prefill pass, then one
 * token per step. Greedy at temperature 0 (the first maximum wins, as torch.argmax); otherwise seeded sampling from
 * softmax(logits / temperature), restricted to the top-p nucleus as transformers' TopPLogitsWarper does (the most
 * probable tokens until their mass reaches p, at least one). Stops at an EOS id (the token is kept in `ids`, not in
 * the text), at a stop string (the text is cut before it) or after maxNewTokens.
 */
import type { Decoder } from '../model/forward/decode';
import { mulberry32 } from '../util/random';
import type { TextTokenizer } from './tokenizer';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0: greedy. */
  temperature?: number;
  topP?: number;
  seed?: number;
  /** Stop strings: generation ends when the text contains one; the text is cut before it. */
  stop?: string[];
  /** End-of-sequence ids (none: generate maxNewTokens tokens unless a stop string ends it). */
  eos?: number[];
}

export type StopReason = 'eos' | 'stop' | 'length';

export interface Generation {
  /** The generated ids (with the EOS id when generation ended there). */
  ids: number[];
  text: string;
  stopReason: StopReason;
  /** Seconds of the prefill and of the decode steps. */
  prefillSeconds: number;
  decodeSeconds: number;
}

/**
 * The token ids of the prompt, with the tokenizer's own special tokens (as transformers' tokenizer(prompt) gives
 * them). `moe generate --chat` builds the prompt's text (the chat template) before this.
 */
export function promptIds(tok: TextTokenizer, prompt: string): number[] {
  return tok.encodeWithSpecial ? tok.encodeWithSpecial(prompt) : tok.encode(prompt);
}

/** Index of the largest value (the first of equal maxima). */
export function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** A token drawn from softmax(logits / temperature), within the top-p nucleus. */
export function sample(logits: Float32Array, temperature: number, topP: number, rand: () => number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i] - max) / temperature);
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b);
  let keep = order.length;
  if (topP < 1) {
    let mass = 0;
    for (let i = 0; i < order.length; i++) {
      mass += p[order[i]] / sum;
      if (mass >= topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += p[order[i]];
  let r = rand() * kept;
  for (let i = 0; i < keep; i++) {
    r -= p[order[i]];
    if (r < 0) return order[i];
  }
  return order[keep - 1];
}

/** The earliest occurrence of any stop string in `text`, or -1. */
function stopAt(text: string, stop: string[]): number {
  let at = -1;
  for (const s of stop) {
    const i = s ? text.indexOf(s) : -1;
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}

/** Generates after `prompt` (token ids) on a fresh decoder. */
export async function generate(
  dec: Decoder,
  tok: TextTokenizer,
  prompt: number[],
  o: GenerateOptions,
): Promise<Generation> {
  const temperature = o.temperature ?? 0;
  const rand = mulberry32(o.seed ?? 0);
  const eos = new Set(o.eos ?? []);
  const stop = o.stop ?? [];
  dec.reset();
  let t0 = performance.now();
  let logits = await dec.extend(Int32Array.from(prompt));
  const prefillSeconds = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const ids: number[] = [];
  let text = '';
  let stopReason: StopReason = 'length';
  while (ids.length < o.maxNewTokens) {
    const next = temperature > 0 ? sample(logits, temperature, o.topP ?? 1, rand) : argmax(logits);
    ids.push(next);
    if (eos.has(next)) {
      stopReason = 'eos';
      break;
    }
    text = tok.decode(ids);
    const at = stop.length ? stopAt(text, stop) : -1;
    if (at >= 0) {
      text = text.slice(0, at);
      stopReason = 'stop';
      break;
    }
    if (ids.length < o.maxNewTokens) logits = await dec.extend(Int32Array.of(next));
  }
  return { ids, text, stopReason, prefillSeconds, decodeSeconds: (performance.now() - t0) / 1000 };
}
