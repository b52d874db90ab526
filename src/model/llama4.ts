/**
 * Llama 4's text model (transformers models/llama4, Llama4ForCausalLM, model_type `llama4_text`): Scout and Maverick.
 * - MoE on `moe_layers` (default every interleave_moe_layer_step-th layer, the last of each step: Scout every layer,
 *   Maverick the odd ones); the other layers have a dense MLP `feed_forward.{gate,up,down}_proj` of width
 *   intermediate_size_mlp.
 * - MoE block (Llama4TextMoe): router `feed_forward.router` [E, H] without bias; the top-k (1 in the released models)
 *   of the raw logits; the chosen expert's weight sigmoid(logit) multiplies the expert's INPUT: y = E(σ · x), not
 *   σ · E(x); no renormalisation; plus one shared expert `feed_forward.shared_expert` (added unweighted).
 * - Experts stored fused, transposed relative to nn.Linear: `feed_forward.experts.gate_up_proj` [E, H, 2I], gate the
 *   first half of the last axis, `down_proj` [E, I, H]; moe reads them one expert at a time through views
 *   (src/model/fused.ts) named `feed_forward.experts.E.{gate,up,down}_proj.weight`.
 * - Attention: grouped-query with head_dim, optional biases (attention_bias). `no_rope_layers[l]` is 1 on the layers
 *   that use the rotary (default: all but every no_rope_layer_interval-th); those rotate (2i, 2i+1) pairs (the
 *   complex form), then, with use_qk_norm, RMS-normalise each head of q and k without a weight (eps rms_norm_eps),
 *   and attend within chunks of attention_chunk_size positions (layer_types "chunked_attention"). NoPE layers attend
 *   to every earlier position and, with attn_temperature_tuning, scale q by
 *   1 + attn_scale · log1p(⌊(pos + 1) / floor_scale⌋).
 *
 * REAP and merging for input-scaled experts (the choice, documented in the README): an expert's contribution to the
 * layer output is E(σ · x) itself, so REAP scores the mean ‖E(σ · x)‖ over the tokens routed to it (the routing
 * weight is already inside); calibration statistics (Hessians, activations) are those of the scaled inputs the
 * experts really see. A merged expert averages its members' weights like any other and is reached through the
 * group's router row, so it too receives σ · x. Methods that combine unscaled expert outputs with routing weights
 * (NAEE's reconstruction search, merge --refit) are refused for these models.
 */
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  FusedExpertLayout,
  gqaAttention,
  linear,
  mlp,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from './arch';
import type { AttentionSpec, LayerAttention } from './forward/attention';

export class Llama4Text extends Architecture {
  readonly modelType: string = 'llama4_text';
  protected readonly expertCountKey: string = 'num_local_experts';
  private readonly moe: Set<number>;
  private readonly ropeLayers: boolean[];
  private readonly chunked: boolean[];

  override readonly fusedExperts: FusedExpertLayout = {
    gateUp: (l) => `${this.moePrefix(l)}.experts.gate_up_proj`,
    down: (l) => `${this.moePrefix(l)}.experts.down_proj`,
    interleaved: false,
  };

  constructor(config: Config, dir: string) {
    super(config, dir);
    const c = this.cfg;
    const L = this.numLayers;
    if (c.str('hidden_act', 'silu') !== 'silu') throw c.error(`hidden_act "${c.str('hidden_act', '')}" is not silu`);
    const step = c.int('interleave_moe_layer_step', 1);
    this.moe = new Set(
      Array.isArray(config.moe_layers)
        ? (config.moe_layers as number[])
        : [...Array(L).keys()].filter((l) => l >= step - 1 && (l - (step - 1)) % step === 0),
    );
    // transformers: an empty or missing no_rope_layers means the default (1 = the layer uses the rotary)
    const noRope =
      Array.isArray(config.no_rope_layers) && config.no_rope_layers.length > 0 ? config.no_rope_layers : [];
    const interval = c.int('no_rope_layer_interval', 4);
    this.ropeLayers = [...Array(L).keys()].map((l) => (noRope.length ? Boolean(noRope[l]) : (l + 1) % interval !== 0));
    if (noRope.length && noRope.length < L) throw c.error(`no_rope_layers lists ${noRope.length} of ${L} layers`);
    const types = Array.isArray(config.layer_types) ? (config.layer_types as unknown[]) : undefined;
    this.chunked = [...Array(L).keys()].map((l) => {
      const t = types ? types[l] : this.ropeLayers[l] ? 'chunked_attention' : 'full_attention';
      if (t !== 'chunked_attention' && t !== 'full_attention')
        throw c.error(`layer_types[${l}] "${String(t)}" is not chunked_attention or full_attention`);
      return t === 'chunked_attention';
    });
  }

  isMoeLayer(layer: number): boolean {
    return this.moe.has(layer);
  }

  get expertWidth(): number {
    return this.cfg.int('intermediate_size');
  }

  get sharedExperts(): number {
    return 1;
  }

  override get sharedMode(): 'none' | 'gated' | 'plain' {
    return 'plain';
  }

  get routing(): RoutingRule {
    return { ...softmaxTopK(this.topK, false), scoring: 'sigmoid', groupMask: 'neg_inf', inputScaled: true };
  }

  override moePrefix(layer: number): string {
    return `model.layers.${layer}.feed_forward`;
  }

  override denseMlpPrefix(layer: number): string {
    return `model.layers.${layer}.feed_forward`;
  }

  override routerKey(layer: number): string {
    return `${this.moePrefix(layer)}.router.weight`;
  }

  override layerAttention(layer: number): LayerAttention {
    const chunk = this.config.attention_chunk_size;
    return {
      rope: this.ropeLayers[layer],
      chunk: this.chunked[layer] && typeof chunk === 'number' ? this.cfg.int('attention_chunk_size') : undefined,
    };
  }

  headDim(): number {
    return this.cfg.int('head_dim', Math.floor(this.hidden / this.cfg.int('num_attention_heads')));
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const kv = this.cfg.int('num_key_value_heads', heads);
    const bias = this.cfg.bool('attention_bias', false);
    return gqaAttention(layer, this.hidden, heads, kv, this.headDim(), { qkv: bias, o: bias });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    const h = this.hidden;
    if (!this.isMoeLayer(layer)) {
      const width = this.cfg.int('intermediate_size_mlp');
      return mlp(this.denseMlpPrefix(layer), h, width, (proj) => ({ kind: 'dense_mlp', layer, proj }));
    }
    return [
      linear(this.routerKey(layer), this.numExperts, h, { kind: 'router', layer }),
      ...mlp(this.sharedExpertPrefix(layer), h, this.expertWidth, (proj) => ({ kind: 'shared', layer, proj })),
    ];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    const c = this.cfg;
    // transformers tests attn_temperature_tuning for truth (the released configs write 4)
    const tune = this.config.attn_temperature_tuning;
    return {
      ...this.gqaSpec(this.headDim(), 'none', eps),
      interleaved: true,
      l2QkNorm: c.bool('use_qk_norm', true),
      temperature:
        tune === undefined || Boolean(tune)
          ? { floorScale: c.num('floor_scale', 8192), attnScale: c.num('attn_scale', 0.1) }
          : undefined,
    };
  }
}

export const llama4Text: ArchitectureFamily = {
  modelType: 'llama4_text',
  create: (c, d) => new Llama4Text(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'llama4_text',
    architectures: ['Llama4ForCausalLM'],
    num_hidden_layers: 4,
    head_dim: 32,
    intermediate_size: 32,
    intermediate_size_mlp: 48,
    num_local_experts: 8,
    num_experts_per_tok: 1,
    interleave_moe_layer_step: 2,
    no_rope_layer_interval: 4,
    attention_chunk_size: 16,
    attn_temperature_tuning: true,
    floor_scale: 8,
    attn_scale: 0.1,
    use_qk_norm: true,
    rope_parameters: {
      rope_type: 'llama3',
      rope_theta: 500000,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    },
  },
};
