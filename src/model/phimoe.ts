/**
 * Phi-3.5-MoE (Microsoft; transformers models/phimoe, PhimoeForCausalLM): Mixtral's names
 * (`block_sparse_moe.gate`, `block_sparse_moe.experts.E.w1/w3/w2`) with
 * - sparsemixer routing (eval): slot 1 the largest router logit, slot 2 the largest of the rest, each weighted by a
 *   softmax over the experts within 2 × router_jitter_noise (relative) of it (forward/moe.ts); top-2 only;
 * - LayerNorms with weight and bias (input_layernorm, post_attention_layernorm, model.norm; eps rms_norm_eps);
 * - q/k/v/o biases (attention_bias), an lm_head bias (lm_head_bias);
 * - longrope rotary: inverse frequencies from the short factors, cos/sin × short_mscale (forward/rope.ts); windows
 *   longer than original_max_position_embeddings are refused (transformers then rescales every position by
 *   long_mscale, which a cached decoder cannot follow).
 * `--recalibrate-router` is refused (its targets are defined for softmax and sigmoid routing).
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import { ArchitectureFamily, gqaAttention, RoutingRule, softmaxTopK, SYNTH_COMMON, TensorSpec, vector } from './arch';
import { ropeParameters } from './forward/rope';
import { Mixtral } from './mixtral';

export class Phimoe extends Mixtral {
  override readonly modelType: string = 'phimoe';
  private withBiases?: TensorSpec[];

  constructor(config: Config, dir: string) {
    super(config, dir);
    const c = this.cfg;
    if (this.topK !== 2) throw c.error(`num_experts_per_tok ${this.topK}: PhiMoE's sparsemixer routes to 2 experts`);
    if (c.str('hidden_act', 'silu') !== 'silu') throw c.error(`hidden_act "${c.str('hidden_act', '')}" is not silu`);
    const rope = ropeParameters(c);
    if (rope.rope_type === 'longrope') {
      const half = this.headDim() / 2;
      const short = rope.short_factor;
      if (!Array.isArray(short) || short.length !== half || short.some((v) => typeof v !== 'number'))
        throw c.error(`rope_parameters.short_factor must be ${half} numbers (head_dim / 2)`);
      if (typeof rope.short_mscale !== 'number') throw c.error('rope_parameters.short_mscale must be a number');
    }
  }

  override get routing(): RoutingRule {
    const jitterEps = this.cfg.num('router_jitter_noise', 0.01);
    return { ...softmaxTopK(this.topK, false), scoring: 'sparsemixer', jitterEps };
  }

  override get layerNorms(): boolean {
    return true;
  }

  override get headBias(): string | undefined {
    return this.cfg.bool('lm_head_bias', false) ? 'lm_head.bias' : undefined;
  }

  override checkWindow(tokens: number): void {
    const rope = ropeParameters(this.cfg);
    const limit = Number(rope.original_max_position_embeddings ?? this.config.original_max_position_embeddings);
    if (rope.rope_type === 'longrope' && tokens > limit)
      throw new CheckpointError(
        `windows of ${tokens} tokens: this PhiMoE's longrope rescales every position past ${limit} tokens`,
        { file: this.dir, hint: `use --seq-len ${limit} or less` },
      );
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const kv = this.cfg.int('num_key_value_heads', heads);
    const bias = this.cfg.bool('attention_bias', false);
    return gqaAttention(layer, this.hidden, heads, kv, this.headDim(), { qkv: bias, o: bias });
  }

  /** Mixtral's tensors plus the LayerNorm biases and the lm_head bias, each after its weight. */
  override schema(): TensorSpec[] {
    if (this.withBiases) return this.withBiases;
    const out: TensorSpec[] = [];
    for (const s of super.schema()) {
      out.push(s);
      const r = s.role;
      if (r.kind === 'norm' && (r.name === 'input_layernorm' || r.name === 'post_attention_layernorm'))
        out.push(vector(s.name.replace(/\.weight$/, '.bias'), this.hidden, { ...r, name: `${r.name}.bias` }));
      else if (r.kind === 'final_norm') out.push(vector('model.norm.bias', this.hidden, r));
      else if (r.kind === 'lm_head' && this.headBias) out.push(vector(this.headBias, this.vocab, r));
    }
    this.withBiases = out;
    return out;
  }
}

export const phimoe: ArchitectureFamily = {
  modelType: 'phimoe',
  create: (c, d) => new Phimoe(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'phimoe',
    architectures: ['PhimoeForCausalLM'],
    intermediate_size: 32,
    num_local_experts: 8,
    router_jitter_noise: 0.01,
    attention_bias: true,
    lm_head_bias: true,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_type: 'default', rope_theta: 10000 },
  },
};
