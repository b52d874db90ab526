/**
 * Qwen3-MoE (transformers models/qwen3_moe): as Qwen2-MoE but without a shared expert, with per-head RMSNorm on
 * q and k (q_norm/k_norm of size head_dim), optional attention biases, and head_dim that may differ from
 * hidden/heads.
 */
import { gqaAttention, linear, mlp, TensorSpec, vector } from './arch';
import { Qwen2Moe } from './qwen2-moe';

export class Qwen3Moe extends Qwen2Moe {
  override readonly modelType: string = 'qwen3_moe';
  protected override readonly expertCountKey: string = 'num_experts';

  override get sharedExperts(): number {
    return 0;
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const bias = this.cfg.bool('attention_bias', false);
    const hd = this.headDim();
    const p = `model.layers.${layer}.self_attn`;
    return [
      ...gqaAttention(layer, this.hidden, heads, this.cfg.int('num_key_value_heads', heads), hd, { qkv: bias, o: bias }),
      vector(`${p}.q_norm.weight`, hd, { kind: 'norm', layer, name: 'q_norm' }),
      vector(`${p}.k_norm.weight`, hd, { kind: 'norm', layer, name: 'k_norm' }),
    ];
  }

  protected override mlpSpecs(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    if (!this.isMoeLayer(layer)) return mlp(p, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({ kind: 'dense_mlp', layer, proj }));
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }
}
