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
import type { Config } from '../io/checkpoint';
import { ArchitectureFamily, gqaAttention, RoutingRule, SYNTH_COMMON, TensorSpec, vector } from './arch';
import { ropeParameters } from './forward/rope';
import { Glm4Moe } from './glm4-moe';

export class Dots1 extends Glm4Moe {
  override readonly modelType: string = 'dots1';

  constructor(config: Config, dir: string) {
    super(config, dir);
    // transformers multiplies moe_intermediate_size by it: a config without it does not build
    this.cfg.int('n_shared_experts');
    this.layerTypes(); // checked before any tensor is read
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
    return this.layerTypes()[layer] === 'sliding_attention' ? this.cfg.int('sliding_window') : undefined;
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const bias = this.cfg.bool('attention_bias', false);
    const hd = this.headDim();
    const p = `model.layers.${layer}.self_attn`;
    return [
      ...gqaAttention(layer, this.hidden, heads, this.cfg.int('num_key_value_heads', heads), hd, {
        qkv: bias,
        o: bias,
      }),
      vector(`${p}.q_norm.weight`, hd, { kind: 'norm', layer, name: 'q_norm' }),
      vector(`${p}.k_norm.weight`, hd, { kind: 'norm', layer, name: 'k_norm' }),
    ];
  }
}

export const dots1: ArchitectureFamily = {
  modelType: 'dots1',
  create: (c, d) => new Dots1(c, d),
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
