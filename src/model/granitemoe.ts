/**
 * IBM Granite 3.0 / 3.1 MoE (transformers models/granitemoe): granite-3.x-1b-a400m, -3b-a800m.
 * - As Mixtral's routing: top-k of the router logits, softmax over the k (the same weights as softmax over all,
 *   renormalised over the top-k); no shared expert; every layer MoE. The router is `block_sparse_moe.router.layer`.
 * - Experts stored fused in nn.Linear orientation: `block_sparse_moe.input_linear.weight` [E, 2I, H] (gate rows,
 *   then up rows) and `output_linear.weight` [E, H, I]; moe reads them as per-expert views
 *   `block_sparse_moe.experts.E.{gate,up,down}_proj.weight` (src/model/fused.ts, `outIn`).
 * - Scalars: embeddings × embedding_multiplier; each attention and MLP output × residual_multiplier before the
 *   residual add; attention scores × attention_multiplier (instead of head_dim^-0.5); logits ÷ logits_scaling.
 * - Attention: grouped-query, head_dim = hidden / heads, biases with attention_bias, rotate-half RoPE.
 */
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  FusedExpertLayout,
  gqaAttention,
  linear,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { f32, GgufHparams, GgufMapping, u32 } from './gguf-map';
import { gqaGgufTensors } from './arch';

const GGUF_ARCH = 'granitemoe';

export class GraniteMoe extends Architecture {
  readonly modelType: string = 'granitemoe';
  protected readonly expertCountKey: string = 'num_local_experts';

  override readonly fusedExperts: FusedExpertLayout = {
    gateUp: (l) => `${this.moePrefix(l)}.input_linear.weight`,
    down: (l) => `${this.moePrefix(l)}.output_linear.weight`,
    interleaved: false,
    outIn: true,
  };

  constructor(config: Config, dir: string) {
    super(config, dir);
    this.cfg.requireSilu();
    for (const k of ['embedding_multiplier', 'residual_multiplier', 'attention_multiplier', 'logits_scaling'])
      if (!(this.cfg.num(k, 1) > 0)) throw this.cfg.error(`${k} must be a positive number`);
  }

  isMoeLayer(): boolean {
    return true;
  }

  get expertWidth(): number {
    return this.cfg.int('intermediate_size');
  }

  get sharedExperts(): number {
    return 0;
  }

  get routing(): RoutingRule {
    return softmaxTopK(this.topK, true);
  }

  override get multipliers(): { embedding: number; residual: number; logits: number } {
    const c = this.cfg;
    return {
      embedding: c.num('embedding_multiplier', 1),
      residual: c.num('residual_multiplier', 1),
      logits: c.num('logits_scaling', 1),
    };
  }

  override moePrefix(layer: number): string {
    return `model.layers.${layer}.block_sparse_moe`;
  }

  override routerKey(layer: number): string {
    return `${this.moePrefix(layer)}.router.layer.weight`;
  }

  private headDim(): number {
    return Math.floor(this.hidden / this.cfg.int('num_attention_heads'));
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    const bias = this.cfg.bool('attention_bias', false);
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), { qkv: bias, o: bias });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'none', eps), scale: this.cfg.num('attention_multiplier', 1) };
  }

  /**
   * llama.cpp's "granitemoe" (convert_hf_to_gguf.py GraniteMoeModel): Llama's layout (q/k rows permuted to its
   * adjacent-pair rotary), input_linear split into ffn_gate_exps / ffn_up_exps, and the four scalars as
   * embedding_scale, residual_scale, attention.scale and logit_scale.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const m = this.multipliers;
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.expertWidth,
      keys: [
        ['attention.head_count_kv', u32(att.kvHeads)],
        ['rope.dimension_count', u32(att.headDim)],
        ['embedding_scale', f32(m.embedding)],
        ['residual_scale', f32(m.residual)],
        ['attention.scale', f32(att.scale)],
        ['logit_scale', f32(m.logits)],
      ],
      warnings: [],
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk, { q: att.heads, k: att.kvHeads }),
    };
  }
}

/** A granitemoe GGUF back to a config: the four scalars from their keys. */
function graniteFromGguf(h: GgufHparams, c: Config, experts: number): void {
  Object.assign(c, {
    model_type: 'granitemoe',
    architectures: ['GraniteMoeForCausalLM'],
    num_local_experts: experts,
    intermediate_size: h.num('feed_forward_length'),
    embedding_multiplier: h.num('embedding_scale', 1),
    residual_multiplier: h.num('residual_scale', 1),
    attention_multiplier: h.num('attention.scale', 1),
    logits_scaling: h.num('logit_scale', 1),
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
  });
}

export const granitemoe: ArchitectureFamily = {
  modelType: 'granitemoe',
  create: (c, d) => new GraniteMoe(c, d),
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: true, complete: graniteFromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'granitemoe',
    architectures: ['GraniteMoeForCausalLM'],
    intermediate_size: 32,
    num_local_experts: 8,
    embedding_multiplier: 12,
    residual_multiplier: 0.22,
    attention_multiplier: 0.015625,
    logits_scaling: 6,
    tie_word_embeddings: true,
    rope_parameters: { rope_type: 'default', rope_theta: 10000 },
  },
};
