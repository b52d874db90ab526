/**
 * Qwen2-MoE (transformers models/qwen2_moe): softmax top-k (renormalised only with norm_topk_prob), a shared
 * expert scaled by sigmoid(shared_expert_gate), q/k/v biases, and dense layers where `mlp_only_layers` or
 * `decoder_sparse_step` say so.
 */
import { Architecture, gqaAttention, linear, mlp, RoutingRule, TensorSpec } from './arch';

export class Qwen2Moe extends Architecture {
  readonly modelType: string = 'qwen2_moe';
  protected readonly expertCountKey: string = 'num_experts';

  /** Sparse unless listed in mlp_only_layers, and only every decoder_sparse_step-th layer (1-based). */
  isMoeLayer(layer: number): boolean {
    const step = this.cfg.int('decoder_sparse_step', 1);
    return !this.cfg.intList('mlp_only_layers').includes(layer) && step > 0 && (layer + 1) % step === 0;
  }

  get expertWidth(): number {
    return this.cfg.int('moe_intermediate_size');
  }

  get sharedExperts(): number {
    return this.cfg.int('shared_expert_intermediate_size', 0) > 0 ? 1 : 0;
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

  protected headDim(): number {
    return this.cfg.int('head_dim', Math.floor(this.hidden / this.cfg.int('num_attention_heads')));
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    return gqaAttention(layer, this.hidden, heads, this.cfg.int('num_key_value_heads', heads), this.headDim(), { qkv: this.cfg.bool('qkv_bias', true), o: false });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    if (!this.isMoeLayer(layer)) return mlp(p, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({ kind: 'dense_mlp', layer, proj }));
    const out = [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
    // transformers builds the shared expert unconditionally; a width of 0 gives empty tensors.
    const width = this.cfg.int('shared_expert_intermediate_size', 0);
    out.push(...mlp(`${p}.shared_expert`, this.hidden, width, (proj) => ({ kind: 'shared', layer, proj })));
    out.push(linear(`${p}.shared_expert_gate.weight`, 1, this.hidden, { kind: 'shared_gate', layer }));
    return out;
  }
}
