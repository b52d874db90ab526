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
import type { AttentionSpec } from './forward/attention';

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
    if (this.cfg.str('hidden_act', 'silu') !== 'silu')
      throw this.cfg.error(`hidden_act "${this.cfg.str('hidden_act', '')}" is not silu`);
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
    const heads = this.cfg.int('num_attention_heads');
    const kv = this.cfg.int('num_key_value_heads', heads);
    const bias = this.cfg.bool('attention_bias', false);
    return gqaAttention(layer, this.hidden, heads, kv, this.headDim(), { qkv: bias, o: bias });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'none', eps), scale: this.cfg.num('attention_multiplier', 1) };
  }
}

export const granitemoe: ArchitectureFamily = {
  modelType: 'granitemoe',
  create: (c, d) => new GraniteMoe(c, d),
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
