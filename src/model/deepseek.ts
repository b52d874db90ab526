/**
 * DeepSeek-V2 and -V3 (transformers models/deepseek_v2, deepseek_v3): MLA attention, shared experts fused into
 * one MLP of width moe_intermediate_size × n_shared_experts, and dense layers below first_k_dense_replace.
 * V2: softmax scores, greedy or group-limited (group = its best expert) top-k, × routed_scaling_factor, no
 * renormalisation (transformers 5 ignores norm_topk_prob for V2). V3: sigmoid scores, e_score_correction_bias
 * added for selection only, groups scored by their best two, renormalised with norm_topk_prob, then
 * × routed_scaling_factor. After removing experts, E must stay divisible by n_group.
 */
import { Architecture, linear, mlp, RoutingRule, TensorSpec, vector } from './arch';

export class DeepseekV2 extends Architecture {
  readonly modelType: string = 'deepseek_v2';
  protected readonly expertCountKey = 'n_routed_experts';

  isMoeLayer(layer: number): boolean {
    return layer >= this.cfg.int('first_k_dense_replace', 0);
  }

  get expertWidth(): number {
    return this.cfg.int('moe_intermediate_size');
  }

  get sharedExperts(): number {
    return this.cfg.int('n_shared_experts', 0);
  }

  /** Groups for group-limited routing (1 when routing is not grouped). */
  get nGroup(): number {
    return this.grouped() ? this.cfg.int('n_group', 1) : 1;
  }

  protected grouped(): boolean {
    return this.cfg.str('topk_method', 'greedy') === 'group_limited_greedy';
  }

  get routing(): RoutingRule {
    return {
      scoring: 'softmax',
      topK: this.topK,
      normTopK: false,
      nGroup: this.nGroup,
      topkGroup: this.grouped() ? this.cfg.int('topk_group', 1) : 1,
      groupScore: 'max',
      groupMask: 'zero',
      scalingFactor: this.cfg.num('routed_scaling_factor', 1),
      correctionBias: false,
    };
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const c = this.cfg;
    const h = this.hidden;
    const heads = c.int('num_attention_heads');
    const nope = c.int('qk_nope_head_dim');
    const rope = c.int('qk_rope_head_dim');
    const vDim = c.int('v_head_dim');
    const kvRank = c.int('kv_lora_rank');
    const qRank = c.optInt('q_lora_rank');
    const bias = c.bool('attention_bias', false);
    const p = `model.layers.${layer}.self_attn`;
    const attn = (name: string) => ({ kind: 'attn' as const, layer, name });
    const attnBias = (name: string) => ({ kind: 'attn' as const, layer, name, bias: true });
    const norm = (name: string) => ({ kind: 'norm' as const, layer, name });
    const out: TensorSpec[] = [];
    if (qRank === undefined || qRank === 0) {
      out.push(linear(`${p}.q_proj.weight`, heads * (nope + rope), h, attn('q_proj')));
    } else {
      out.push(linear(`${p}.q_a_proj.weight`, qRank, h, attn('q_a_proj')));
      if (bias) out.push(vector(`${p}.q_a_proj.bias`, qRank, attnBias('q_a_proj')));
      out.push(vector(`${p}.q_a_layernorm.weight`, qRank, norm('q_a_layernorm')));
      out.push(linear(`${p}.q_b_proj.weight`, heads * (nope + rope), qRank, attn('q_b_proj')));
    }
    out.push(linear(`${p}.kv_a_proj_with_mqa.weight`, kvRank + rope, h, attn('kv_a_proj_with_mqa')));
    if (bias) out.push(vector(`${p}.kv_a_proj_with_mqa.bias`, kvRank + rope, attnBias('kv_a_proj_with_mqa')));
    out.push(vector(`${p}.kv_a_layernorm.weight`, kvRank, norm('kv_a_layernorm')));
    out.push(linear(`${p}.kv_b_proj.weight`, heads * (nope + vDim), kvRank, attn('kv_b_proj')));
    out.push(linear(`${p}.o_proj.weight`, h, heads * vDim, attn('o_proj')));
    if (bias) out.push(vector(`${p}.o_proj.bias`, h, attnBias('o_proj')));
    return out;
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    if (!this.isMoeLayer(layer)) return this.denseMlp(layer);
    const out = [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
    const bias = this.correctionBiasKey(layer);
    if (bias) out.push(vector(bias, this.numExperts, { kind: 'router_bias', layer }));
    if (this.sharedExperts > 0) {
      out.push(...mlp(`${p}.shared_experts`, this.hidden, this.expertWidth * this.sharedExperts, (proj) => ({ kind: 'shared', layer, proj })));
    }
    return out;
  }

  protected denseMlp(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    const specs = mlp(p, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({ kind: 'dense_mlp', layer, proj }));
    if (!this.cfg.bool('mlp_bias', false)) return specs;
    const withBias: TensorSpec[] = [];
    for (const s of specs) {
      withBias.push(s, vector(s.name.replace(/\.weight$/, '.bias'), s.shape[0], { ...(s.role as { kind: 'dense_mlp'; layer: number; proj: 'gate' }), bias: true }));
    }
    return withBias;
  }
}

export class DeepseekV3 extends DeepseekV2 {
  override readonly modelType: string = 'deepseek_v3';

  protected override grouped(): boolean {
    return true;
  }

  override get routing(): RoutingRule {
    return {
      scoring: 'sigmoid',
      topK: this.topK,
      normTopK: this.cfg.bool('norm_topk_prob', true),
      nGroup: this.cfg.int('n_group', 1),
      topkGroup: this.cfg.int('topk_group', 1),
      groupScore: 'top2sum',
      groupMask: 'neg_inf',
      scalingFactor: this.cfg.num('routed_scaling_factor', 1),
      correctionBias: true,
    };
  }

  override correctionBiasKey(layer: number): string {
    return `${this.moePrefix(layer)}.gate.e_score_correction_bias`;
  }

  protected override denseMlp(layer: number): TensorSpec[] {
    return mlp(`model.layers.${layer}.mlp`, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({ kind: 'dense_mlp', layer, proj }));
  }
}
