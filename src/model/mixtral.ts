/** Mixtral (transformers models/mixtral): every layer sparse; softmax over all experts, top-k, renormalised. */
import { Architecture, gqaAttention, Proj, RoutingRule, TensorSpec, linear } from './arch';

const MIXTRAL_PROJ: Record<Proj, string> = { gate: 'w1', up: 'w3', down: 'w2' };

export class Mixtral extends Architecture {
  readonly modelType = 'mixtral';
  protected readonly expertCountKey = 'num_local_experts';

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
    return { scoring: 'softmax', topK: this.topK, normTopK: true, nGroup: 1, topkGroup: 1, groupScore: 'max',
      groupMask: 'zero', scalingFactor: 1, correctionBias: false };
  }

  override moePrefix(layer: number): string {
    return `model.layers.${layer}.block_sparse_moe`;
  }

  override projName(p: Proj): string {
    return MIXTRAL_PROJ[p];
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const headDim = this.cfg.int('head_dim', Math.floor(this.hidden / heads));
    return gqaAttention(layer, this.hidden, heads, this.cfg.int('num_key_value_heads', heads), headDim, { qkv: false, o: false });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }
}
