/**
 * GLM-4.5 / 4.6 / 4.7 and -Air (transformers models/glm4_moe): DeepSeek-V3's MoE block under grouped-query
 * attention.
 * - Attention: q/k/v with biases when attention_bias (o_proj never has one), head_dim that may differ from
 *   hidden / heads, optional per-head q/k RMSNorm (use_qk_norm: self_attn.q_norm / k_norm [head_dim], before
 *   RoPE), and rotary on the first partial_rotary_factor of each head (rope_parameters' value, else the top-level
 *   key, else transformers' default 0.5), rotate-half (pairs i, i + rot/2), the rest passed through.
 * - MoE as DeepSeek-V3 (Glm4MoeTopkRouter): sigmoid scores, e_score_correction_bias added for selection only,
 *   groups (n_group) scored by their best two, the best topk_group kept, top-k renormalised with norm_topk_prob
 *   (default true, + 1e-20), × routed_scaling_factor; shared experts fused into one MLP of width
 *   moe_intermediate_size × n_shared_experts (default 1), added; layers below first_k_dense_replace (default 1)
 *   dense (intermediate_size).
 * - MTP: GLM-4.5 checkpoints hold num_nextn_predict_layers extra layers `model.layers.{num_hidden_layers}.*`
 *   (eh_proj, enorm, hnorm, shared_head, a full decoder layer) that transformers ignores on load. moe keeps them
 *   as tensors outside the layout, copied untouched by every safetensors output (their experts are not pruned or
 *   merged: `moe inspect` counts them as other tensors); GGUF output leaves them out (llama.cpp's glm4moe only
 *   skips them) and writes no nextn_predict_layers.
 * GGUF: llama.cpp's "glm4moe" (convert_hf_to_gguf.py Glm4MoeModel): NEOX rotary, so q/k rows are not permuted;
 * rope.dimension_count is the rotary part; post_attention_layernorm is post_attention_norm.
 */
import { ArchitectureFamily, gqaAttention, gqaGgufTensors, qkNormSpecs, SYNTH_COMMON, TensorSpec } from './arch';
import { DeepseekV3 } from './deepseek';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { ropeParameters } from './forward/rope';
import { f32, GgufHparams, GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';
import type { Config } from '../io/checkpoint';

/** transformers' Glm4MoeConfig default when neither rope_parameters nor the config names one. */
const DEFAULT_PARTIAL_ROTARY = 0.5;

export class Glm4Moe extends DeepseekV3 {
  override readonly modelType: string = 'glm4_moe';

  override isMoeLayer(layer: number): boolean {
    return layer >= this.cfg.int('first_k_dense_replace', 1);
  }

  override get sharedExperts(): number {
    return this.cfg.int('n_shared_experts', 1);
  }

  headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  /** Rotary dimensions of each head: int(head_dim × partial_rotary_factor), as Glm4MoeRotaryEmbedding. */
  ropeDim(): number {
    const rope = ropeParameters(this.cfg);
    const factor = rope.partial_rotary_factor ?? this.config.partial_rotary_factor ?? DEFAULT_PARTIAL_ROTARY;
    if (typeof factor !== 'number' || !(factor > 0 && factor <= 1))
      throw this.cfg.error(`partial_rotary_factor is ${JSON.stringify(factor)}, expected a number in (0, 1]`);
    return Math.floor(this.headDim() * factor);
  }

  get qkNorm(): boolean {
    return this.cfg.bool('use_qk_norm', false);
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    const bias = this.cfg.bool('attention_bias', false);
    const hd = this.headDim();
    const out = gqaAttention(layer, this.hidden, heads, kvHeads, hd, {
      qkv: bias,
      o: false,
    });
    if (this.qkNorm) out.push(...qkNormSpecs(layer, hd));
    return out;
  }

  /** (DeepseekV2's signature has no eps: the q/k norms take rms_norm_eps, as forward/spec.ts reads it.) */
  override attentionSpec(): AttentionSpec {
    const eps = this.cfg.num('rms_norm_eps', 1e-6);
    return { ...this.gqaSpec(this.headDim(), this.qkNorm ? 'head' : 'none', eps), ropeDim: this.ropeDim() };
  }

  /** llama.cpp's glm4moe (see the file comment); group-limited routing through the generic expert_group_* keys. */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const r = this.routing;
    const keys: [string, GgufScalar][] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ...headLengthKeys(att.headDim),
      ['rope.dimension_count', u32(this.ropeDim())],
      ['leading_dense_block_count', u32(this.moeLayers[0] ?? this.numLayers)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
      ['expert_shared_count', u32(this.sharedExperts)],
      ['expert_weights_scale', f32(r.scalingFactor)],
      ['expert_weights_norm', { type: 'bool', value: r.normTopK }],
      ['expert_gating_func', u32(2)], // sigmoid
    ];
    if (r.nGroup > 1) keys.push(['expert_group_count', u32(r.nGroup)], ['expert_group_used_count', u32(r.topkGroup)]);
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.cfg.int('intermediate_size', this.expertWidth),
      keys,
      warnings: [],
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
      postAttentionNorm: 'post_attention_norm',
    };
  }
}

const GGUF_ARCH = 'glm4moe';

/** A glm4moe GGUF back to a config, as llama.cpp runs it (without expert_weights_norm it does not renormalise). */
function glm4MoeFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const headDim = h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads));
  const partial = h.num('rope.dimension_count', headDim) / headDim;
  const nextn = h.num('nextn_predict_layers', 0); // convert_hf_to_gguf.py counts the MTP layers in block_count
  (c.rope_parameters as Record<string, unknown>).partial_rotary_factor = partial;
  Object.assign(c, {
    model_type: 'glm4_moe',
    architectures: ['Glm4MoeForCausalLM'],
    num_hidden_layers: Number(c.num_hidden_layers) - nextn,
    num_nextn_predict_layers: nextn,
    head_dim: headDim,
    partial_rotary_factor: partial,
    n_routed_experts: experts,
    n_shared_experts: h.num('expert_shared_count', 0),
    first_k_dense_replace: h.num('leading_dense_block_count', 0),
    intermediate_size: h.num('feed_forward_length'),
    moe_intermediate_size: h.num('expert_feed_forward_length'),
    routed_scaling_factor: h.num('expert_weights_scale', 1) || 1, // llama.cpp: 0 means no scaling
    n_group: h.num('expert_group_count', 1) || 1,
    topk_group: h.num('expert_group_used_count', 1) || 1,
    use_qk_norm: h.hasTensor('blk.0.attn_q_norm.weight'),
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
  });
}

export const glm4Moe: ArchitectureFamily = {
  modelType: 'glm4_moe',
  create: (c, d) => new Glm4Moe(c, d),
  ggufPreTokenizer: 'glm4',
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: false, complete: glm4MoeFromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'glm4_moe',
    architectures: ['Glm4MoeForCausalLM'],
    num_hidden_layers: 3,
    head_dim: 32,
    partial_rotary_factor: 0.5,
    use_qk_norm: true,
    attention_bias: true,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    n_routed_experts: 8,
    n_shared_experts: 1,
    first_k_dense_replace: 1,
    n_group: 2,
    topk_group: 1,
    norm_topk_prob: true,
    routed_scaling_factor: 2.5,
    num_nextn_predict_layers: 1,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_type: 'default', rope_theta: 1e6, partial_rotary_factor: 0.5 },
  },
};
