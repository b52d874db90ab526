/**
 * dots.llm1 (rednote-hilab; transformers models/dots1): DeepSeek-V3's MoE block under Qwen3's attention.
 * - Attention (Qwen3Attention): q/k/v/o with biases when attention_bias, head_dim that may differ from hidden /
 *   heads, per-head q_norm / k_norm [head_dim] before a full rotate-half RoPE; layers whose `layer_types` entry is
 *   "sliding_attention" (default: layers ≥ max_window_layers when sliding_window is set) see the sliding_window
 *   positions up to their own.
 * - MoE as DeepSeek-V3 (Dots1TopkRouter): sigmoid scores, e_score_correction_bias for selection only, n_group groups
 *   scored by their best two, the best topk_group kept, top-k renormalised with norm_topk_prob (default false here,
 *   + 1e-20), × routed_scaling_factor; the n_shared_experts shared experts fused into one MLP `mlp.shared_experts` of
 *   width moe_intermediate_size × n_shared_experts, added; layers below first_k_dense_replace (default 0) dense.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import { ArchitectureFamily, RoutingRule, SYNTH_COMMON, TensorSpec } from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { ropeParameters } from './forward/rope';
import { Glm4Moe } from './glm4-moe';
import type { GgufHparams, GgufMapping } from './gguf-map';
import { qwen3Attention } from './qwen3-moe';

const GGUF_ARCH = 'dots1';

export class Dots1 extends Glm4Moe {
  override readonly modelType: string = 'dots1';
  /** Each layer's attention type, checked before any tensor is read. */
  private readonly types: string[];

  constructor(config: Config, dir: string) {
    super(config, dir);
    // transformers multiplies moe_intermediate_size by it: a config without it does not build
    this.cfg.int('n_shared_experts');
    this.types = this.layerTypes();
  }

  override isMoeLayer(layer: number): boolean {
    return layer >= this.cfg.int('first_k_dense_replace', 0);
  }

  override get sharedExperts(): number {
    return this.cfg.int('n_shared_experts');
  }

  override get routing(): RoutingRule {
    return { ...super.routing, normTopK: this.cfg.bool('norm_topk_prob', false) };
  }

  /** Qwen3's rotary: the whole head unless rope_parameters or the config name a partial_rotary_factor. */
  override ropeDim(): number {
    const factor = ropeParameters(this.cfg).partial_rotary_factor ?? this.config.partial_rotary_factor ?? 1;
    if (typeof factor !== 'number' || !(factor > 0 && factor <= 1))
      throw this.cfg.error(`partial_rotary_factor is ${JSON.stringify(factor)}, expected a number in (0, 1]`);
    return Math.floor(this.headDim() * factor);
  }

  override get qkNorm(): boolean {
    return true;
  }

  /** transformers' Dots1Config default: sliding from max_window_layers on when sliding_window is set. */
  private layerTypes(): string[] {
    const c = this.cfg;
    const given = this.config.layer_types;
    const window = this.config.sliding_window;
    const types = Array.isArray(given)
      ? (given as unknown[]).map(String)
      : [...Array(this.numLayers).keys()].map((l) =>
          typeof window === 'number' && l >= c.int('max_window_layers', this.numLayers)
            ? 'sliding_attention'
            : 'full_attention',
        );
    types.forEach((t, l) => {
      if (t !== 'full_attention' && t !== 'sliding_attention')
        throw c.error(`layer_types[${l}] "${t}" is not full_attention or sliding_attention`);
    });
    if (types.length < this.numLayers) throw c.error(`layer_types lists ${types.length} of ${this.numLayers} layers`);
    if (types.includes('sliding_attention') && typeof window !== 'number')
      throw c.error('layer_types has sliding_attention layers but sliding_window is not set');
    return types;
  }

  override slidingWindow(layer: number): number | undefined {
    return this.types[layer] === 'sliding_attention' ? this.cfg.int('sliding_window') : undefined;
  }

  /**
   * llama.cpp's "dots1" (convert_hf_to_gguf.py Dots1Model): NEOX rotary over the whole head (q/k not permuted), q/k
   * norms, leading dense layers, sigmoid routing with exp_probs_b, shared experts; it has no sliding-window layers.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    // llama.cpp's dots1 sizes k_proj and v_proj by the query heads (dots.llm1 has 32 of each)
    if (att.kvHeads !== att.heads)
      throw new CheckpointError(
        `llama.cpp's dots1 loads as many key/value heads as query heads; this model has ${att.kvHeads} of ${att.heads}`,
        { file: this.dir, hint: 'write --format packed or dequantized instead (transformers and vLLM load those)' },
      );
    // glm4moe's keys (the rotary over the whole head here), without its post_attention_norm name
    const sliding = [...Array(this.numLayers).keys()].filter((l) => this.slidingWindow(l) !== undefined);
    return {
      ...super.ggufMapping(spec),
      arch: GGUF_ARCH,
      postAttentionNorm: undefined,
      warnings: sliding.length
        ? [`llama.cpp's dots1 has no sliding-window layers; layers ${sliding.join(', ')} will attend to every position`]
        : [],
    };
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    return qwen3Attention(this.cfg, layer, this.hidden, this.headDim());
  }
}

/** A dots1 GGUF back to a config, as llama.cpp runs it (no sliding layers; renormalised with expert_weights_norm). */
function dots1FromGguf(h: GgufHparams, c: Config, experts: number): void {
  const headDim = h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads));
  Object.assign(c, {
    model_type: 'dots1',
    architectures: ['Dots1ForCausalLM'],
    head_dim: headDim,
    n_routed_experts: experts,
    n_shared_experts: h.num('expert_shared_count', 0),
    first_k_dense_replace: h.num('leading_dense_block_count', 0),
    intermediate_size: h.num('feed_forward_length'),
    moe_intermediate_size: h.num('expert_feed_forward_length'),
    routed_scaling_factor: h.num('expert_weights_scale', 1) || 1, // llama.cpp: 0 means no scaling
    norm_topk_prob: h.bool('expert_weights_norm', false),
    n_group: h.num('expert_group_count', 1) || 1,
    topk_group: h.num('expert_group_used_count', 1) || 1,
    sliding_window: null,
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
  });
}

export const dots1: ArchitectureFamily = {
  modelType: 'dots1',
  create: (c, d) => new Dots1(c, d),
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: false, complete: dots1FromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'dots1',
    architectures: ['Dots1ForCausalLM'],
    num_hidden_layers: 3,
    head_dim: 32,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    n_routed_experts: 8,
    n_shared_experts: 2,
    first_k_dense_replace: 1,
    n_group: 2,
    topk_group: 1,
    norm_topk_prob: true,
    routed_scaling_factor: 2.5,
    sliding_window: 16,
    max_window_layers: 2,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_type: 'default', rope_theta: 1e4 },
  },
};
