/**
 * OLMoE (transformers models/olmoe): every layer sparse; softmax top-k with norm_topk_prob; q_norm and k_norm
 * are RMSNorms over the whole q and k projections (not per head).
 */
import { Architecture, gqaAttention, linear, RoutingRule, TensorSpec, vector } from './arch';

export class Olmoe extends Architecture {
  readonly modelType = 'olmoe';
  protected readonly expertCountKey = 'num_experts';

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
    return {
      scoring: 'softmax',
      topK: this.topK,
      normTopK: this.cfg.bool('norm_topk_prob', false),
      nGroup: 1,
      topkGroup: 1,
      groupScore: 'max',
      groupMask: 'zero',
      scalingFactor: 1,
      correctionBias: false,
    };
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const kv = this.cfg.int('num_key_value_heads', heads);
    const hd = Math.floor(this.hidden / heads);
    const bias = this.cfg.bool('attention_bias', false);
    const p = `model.layers.${layer}.self_attn`;
    return [
      ...gqaAttention(layer, this.hidden, heads, kv, hd, { qkv: bias, o: bias }),
      vector(`${p}.q_norm.weight`, this.hidden, { kind: 'norm', layer, name: 'q_norm' }),
      vector(`${p}.k_norm.weight`, hd * kv, { kind: 'norm', layer, name: 'k_norm' }),
    ];
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }
}
