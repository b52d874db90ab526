/**
 * The forward pass, one layer at a time: a layer's dense weights are loaded (as float32), every window of the
 * batch runs through it, and they are released before the next layer; routed experts are loaded one at a time.
 * Memory is one layer's attention and dense weights, one expert, and the activations.
 */
import type { Backend } from '../../backend/backend';
import { TensorReader } from '../../io/checkpoint';
import type { Architecture } from '../arch';
import { gqa, mla } from './attention';
import { gatherRows, MlpWeights, route, Routing, runMlp, tokensPerExpert } from './moe';
import { addInPlace, concatRows, rmsNorm, sigmoid } from './ops';
import { ropeTables, RopeTables } from './rope';
import { forwardSpec, ForwardSpec } from './spec';

/** Observer hooks, for calibration and routing comparisons. Arrays are only valid during the call. */
export interface ForwardObserver {
  /** The router's decision in a MoE layer; `input` is the MoE block's input [tokens, hidden]. */
  router?(layer: number, routing: Routing, input: Float32Array, tokens: number): void;
  /** One routed expert: its input rows, its (unweighted) output rows, and which tokens they are. */
  expert?(layer: number, expert: number, input: Float32Array, output: Float32Array, tokens: Int32Array): void;
  /** The whole MoE block (routed + shared), [tokens, hidden] each. */
  moe?(layer: number, input: Float32Array, output: Float32Array, tokens: number): void;
  /** The residual stream after a layer, [tokens, hidden]. */
  layer?(layer: number, hidden: Float32Array, tokens: number): void;
}

/** Receives logits in blocks of rows × vocab range: logits [rows, count] for vocab ids [vocabStart, vocabStart+count). */
export type LogitSink = (logits: Float32Array, rows: number, vocabStart: number, count: number) => void;

export interface LogitBlock {
  /** [rows, count] logits for vocab ids [start, start + count). */
  logits: Float32Array;
  rows: number;
  start: number;
  count: number;
}

/** lm_head rows per block: bounds the logits buffer and the weight slice for large vocabularies. */
const VOCAB_BLOCK = 8192;

export class ForwardPass {
  readonly spec: ForwardSpec;
  private rope?: RopeTables;

  constructor(
    private readonly reader: TensorReader,
    readonly arch: Architecture,
    private readonly be: Backend,
  ) {
    this.spec = forwardSpec(arch);
  }

  private f32(name: string): Float32Array {
    return this.reader.f32(name);
  }

  private opt(name: string): Float32Array | undefined {
    return this.arch.classify(name) ? this.reader.f32(name) : undefined;
  }

  private ropeFor(T: number): RopeTables {
    if (!this.rope || this.rope.positions < T) this.rope = ropeTables(this.spec.rope, this.spec.ropeDim, T, this.spec.maxPositions);
    return this.rope;
  }

  /** Embeds `windows` equal-length windows of token ids: [windows × T, hidden]. */
  embed(ids: Int32Array): Float32Array {
    return this.reader.gatherF32('model.embed_tokens.weight', ids);
  }

  /** Runs all layers over the hidden states of `windows` windows of length T, in place. */
  async layers(hidden: Float32Array, windows: number, T: number, observer?: ForwardObserver): Promise<void> {
    for (let l = 0; l < this.arch.numLayers; l++) await this.layer(l, hidden, windows, T, observer);
  }

  async layer(l: number, hidden: Float32Array, windows: number, T: number, observer?: ForwardObserver): Promise<void> {
    const h = this.arch.hidden;
    const N = windows * T;
    const p = `model.layers.${l}`;
    const normed = rmsNorm(hidden, this.f32(`${p}.input_layernorm.weight`), h, this.spec.eps);
    const attnWeights = new Map<string, Float32Array>();
    const w = (name: string) => {
      const full = `${p}.self_attn.${name}`;
      if (!attnWeights.has(full) && this.arch.classify(full)) attnWeights.set(full, this.f32(full));
      return attnWeights.get(full);
    };
    const a = this.spec.attention;
    const rope = this.ropeFor(T);
    const attn = a.kind === 'gqa' ? await gqa(this.be, normed, h, windows, T, a, w, rope) : await mla(this.be, normed, h, windows, T, a, w, rope);
    attnWeights.clear();
    addInPlace(hidden, attn);
    const x = rmsNorm(hidden, this.f32(`${p}.post_attention_layernorm.weight`), h, this.spec.eps);
    const out = this.arch.isMoeLayer(l) ? await this.moeBlock(l, x, N, observer) : await runMlp(this.be, x, N, h, this.mlpWeights(`${p}.mlp`));
    addInPlace(hidden, out);
    observer?.layer?.(l, hidden, N);
  }

  private mlpWeights(prefix: string): MlpWeights {
    const gate = this.f32(`${prefix}.gate_proj.weight`);
    const width = gate.length / this.arch.hidden;
    return { gateUp: concatRows(gate, this.f32(`${prefix}.up_proj.weight`)), down: this.f32(`${prefix}.down_proj.weight`), width };
  }

  private expertWeights(l: number, e: number): MlpWeights {
    const a = this.arch;
    return {
      gateUp: concatRows(this.f32(a.expertKey(l, e, 'gate')), this.f32(a.expertKey(l, e, 'up'))),
      down: this.f32(a.expertKey(l, e, 'down')),
      width: a.expertWidth,
    };
  }

  private async moeBlock(l: number, x: Float32Array, N: number, observer?: ForwardObserver): Promise<Float32Array> {
    const a = this.arch;
    const h = a.hidden;
    const E = a.numExperts;
    const k = a.topK;
    const logits = await this.be.linear(x, this.f32(a.routerKey(l)), N, h, E);
    const biasKey = a.correctionBiasKey(l);
    const routing = route(logits, N, E, a.routing, biasKey ? this.f32(biasKey) : undefined);
    observer?.router?.(l, routing, x, N);
    const out = new Float32Array(N * h);
    const lists = tokensPerExpert(routing, N, k, E);
    for (let e = 0; e < E; e++) {
      const { tokens, slots } = lists[e];
      if (tokens.length === 0) continue;
      const xe = gatherRows(x, h, tokens);
      const ye = await runMlp(this.be, xe, tokens.length, h, this.expertWeights(l, e));
      observer?.expert?.(l, e, xe, ye, tokens);
      for (let i = 0; i < tokens.length; i++) {
        const g = routing.weights[tokens[i] * k + slots[i]];
        const o = tokens[i] * h;
        for (let j = 0; j < h; j++) out[o + j] += g * ye[i * h + j];
      }
    }
    if (this.spec.shared !== 'none') {
      const prefix = `model.layers.${l}.mlp.${this.spec.sharedPrefix}`;
      const s = await runMlp(this.be, x, N, h, this.mlpWeights(prefix));
      if (this.spec.shared === 'gated') {
        const gate = await this.be.linear(x, this.f32(`model.layers.${l}.mlp.shared_expert_gate.weight`), N, h, 1);
        for (let n = 0; n < N; n++) {
          const g = sigmoid(gate[n]);
          for (let j = 0; j < h; j++) s[n * h + j] *= g;
        }
      }
      addInPlace(out, s);
    }
    observer?.moe?.(l, x, out, N);
    return out;
  }

  /** Final norm and lm_head (tied to the embeddings when the config says so), in blocks of the vocabulary. */
  async *headBlocks(hidden: Float32Array, N: number): AsyncGenerator<LogitBlock> {
    const a = this.arch;
    const x = rmsNorm(hidden, this.f32('model.norm.weight'), a.hidden, this.spec.eps);
    const name = a.tieEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    for (let start = 0; start < a.vocab; start += VOCAB_BLOCK) {
      const count = Math.min(VOCAB_BLOCK, a.vocab - start);
      const w = this.reader.rowsF32(name, start, count);
      yield { logits: await this.be.linear(x, w, N, a.hidden, count), rows: N, start, count };
    }
  }

  async head(hidden: Float32Array, N: number, sink: LogitSink): Promise<void> {
    for await (const b of this.headBlocks(hidden, N)) sink(b.logits, b.rows, b.start, b.count);
  }

  /** Embeds, runs every layer and the head for windows of equal length T (ids: [windows × T]). */
  async run(ids: Int32Array, windows: number, T: number, sink: LogitSink, observer?: ForwardObserver): Promise<void> {
    const hidden = this.embed(ids);
    await this.layers(hidden, windows, T, observer);
    await this.head(hidden, windows * T, sink);
  }
}

/** A sink that keeps the full logits [rows, vocab] (small models and tests only). */
export function fullLogits(rows: number, vocab: number): { sink: LogitSink; logits: Float32Array } {
  const logits = new Float32Array(rows * vocab);
  const sink: LogitSink = (block, n, start, count) => {
    for (let r = 0; r < n; r++) logits.set(block.subarray(r * count, (r + 1) * count), r * vocab + start);
  };
  return { sink, logits };
}
