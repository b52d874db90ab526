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
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  FusedExpertLayout,
  gqaAttention,
  gqaGgufTensors,
  linear,
  mlp,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from './arch';
import type { AttentionSpec, GqaSpec, LayerAttention } from './forward/attention';
import { ropeFreqFactors } from './forward/rope';
import { GgufHparams, GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';

const GGUF_ARCH = 'llama4';
/** What llama.cpp's llama4 fixes rather than reads (src/models/llama4.cpp): chunk, temperature floor and scale. */
const CPP = { chunk: 8192, floorScale: 8192, attnScale: 0.1, noRopeStep: 4 };

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
    c.requireSilu();
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
    return this.cfg.headDim(this.hidden);
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    const bias = this.cfg.bool('attention_bias', false);
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), { qkv: bias, o: bias });
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

  /**
   * llama.cpp's "llama4" (convert_hf_to_gguf.py Llama4Model, src/models/llama4.cpp): q/k rows as stored (its rotary
   * takes adjacent pairs, as Llama 4's does), MoE on every layer with (l + 1) % interleave_moe_layer_step == 0,
   * gate_up_proj split into ffn_gate_exps / ffn_up_exps, feed_forward_length the dense layers' intermediate_size_mlp,
   * llama3 scaling as the rope_freqs tensor, the chunked layers as attention.sliding_window_pattern. What llama.cpp
   * fixes (CPP) and this model sets otherwise is warned about; MoE layers llama.cpp would not load are refused.
   */
  override ggufMapping(spec: AttentionSpec, rope: Record<string, unknown>): GgufMapping {
    const att = spec as GqaSpec;
    const c = this.cfg;
    const L = this.numLayers;
    const step = c.int('interleave_moe_layer_step', 1);
    const moe = [...this.moe].sort((a, b) => a - b);
    const cpp = [...Array(L).keys()].filter((l) => (l + 1) % step === 0);
    if (cpp.join() !== moe.join())
      throw new CheckpointError(
        `llama.cpp runs Llama 4's MoE on layers ${cpp.join(', ')} (interleave_moe_layer_step ${step}); this model's are ${moe.join(', ')}`,
        { file: this.dir, hint: 'write --format packed or dequantized instead' },
      );
    const type = String(rope.rope_type ?? 'default');
    if (!['default', 'llama3', 'freq_factors'].includes(type))
      throw new CheckpointError(`GGUF output of Llama 4 with rope_type "${type}" is not supported`, {
        file: this.dir,
        hint: 'default and llama3 RoPE are written to GGUF',
      });
    const factors = ropeFreqFactors(rope, att.headDim);
    const keys: [string, GgufScalar][] = [['attention.head_count_kv', u32(att.kvHeads)]];
    if (att.headDim * att.heads !== this.hidden) keys.push(...headLengthKeys(att.headDim));
    keys.push(
      ['rope.dimension_count', u32(att.headDim)],
      ['interleave_moe_layer_step', u32(step)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
      ['attention.sliding_window_pattern', { type: 'array', of: 'bool', value: this.chunked }],
    );
    return {
      arch: GGUF_ARCH,
      feedForwardLength: c.int('intermediate_size_mlp'),
      keys,
      warnings: this.llamaCppWarnings(att),
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
      ownRope: true,
      computed: factors ? [{ name: 'rope_freqs.weight', values: Float32Array.from(factors) }] : [],
    };
  }

  /** Where llama.cpp's fixed Llama 4 constants (CPP) differ from this model's config. */
  private llamaCppWarnings(att: GqaSpec): string[] {
    const L = this.numLayers;
    const out: string[] = [];
    const chunk = [...Array(L).keys()].map((l) => this.layerAttention(l).chunk).find((x) => x !== undefined);
    if (chunk !== undefined && chunk !== CPP.chunk)
      out.push(
        `llama.cpp attends within chunks of ${CPP.chunk} positions; this model's are ${chunk}: contexts longer than ${chunk} differ`,
      );
    const nope = [...Array(L).keys()].filter((l) => !this.ropeLayers[l]);
    const cppNope = [...Array(L).keys()].filter((l) => (l + 1) % CPP.noRopeStep === 0);
    if (nope.join() !== cppNope.join())
      out.push(
        `llama.cpp leaves the rotary out of layers ${cppNope.join(', ') || 'none'}; this model's NoPE layers are ${nope.join(', ') || 'none'}`,
      );
    const t = att.temperature;
    if (nope.length && (!t || t.floorScale !== CPP.floorScale || t.attnScale !== CPP.attnScale))
      out.push(
        `llama.cpp scales the NoPE layers' queries with floor_scale ${CPP.floorScale} and attn_scale ${CPP.attnScale}; ` +
          (t
            ? `this model's are ${t.floorScale} and ${t.attnScale}`
            : 'this model does not (attn_temperature_tuning false)'),
      );
    const cppNorm = this.numExperts !== 128;
    if (Boolean(att.l2QkNorm) !== cppNorm)
      out.push(
        `llama.cpp ${cppNorm ? 'applies' : 'skips'} the q/k L2 norm for a Llama 4 with ${this.numExperts} experts ` +
          `(it applies it unless there are 128); this model has use_qk_norm ${Boolean(att.l2QkNorm)}`,
      );
    return out;
  }
}

/**
 * A llama4 GGUF back to a config, as llama.cpp runs it: NoPE every 4th layer, chunks of 8192, temperature floor
 * 8192 and scale 0.1, the q/k L2 norm unless the model has 128 experts, the chunked layers from
 * attention.sliding_window_pattern (default: 3 chunked, 1 full), llama3 scaling from rope_freqs.
 */
function llama4FromGguf(h: GgufHparams, c: Config, experts: number): void {
  const L = Number(c.num_hidden_layers);
  if (h.opt('attention.sliding_window') === 0)
    throw new CheckpointError('a llama4 GGUF without chunked attention (sliding_window 0) is not read by moe', {
      file: h.file,
      hint: 'moe reads the Llama 4 MoE files it writes',
    });
  const pattern = h.array('attention.sliding_window_pattern');
  const chunked = [...Array(L).keys()].map((l) => (pattern ? Boolean(pattern[l]) : l % CPP.noRopeStep < 3));
  const rope = c.rope_parameters as Record<string, unknown>;
  const factors = h.tensorF32('rope_freqs.weight');
  Object.assign(c, {
    model_type: 'llama4_text',
    architectures: ['Llama4ForCausalLM'],
    num_local_experts: experts,
    head_dim: h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads)),
    intermediate_size: h.num('expert_feed_forward_length'),
    intermediate_size_mlp: h.num('feed_forward_length'),
    interleave_moe_layer_step: h.num('interleave_moe_layer_step', 1),
    no_rope_layer_interval: CPP.noRopeStep,
    layer_types: chunked.map((x) => (x ? 'chunked_attention' : 'full_attention')),
    attention_chunk_size: CPP.chunk,
    attn_temperature_tuning: true,
    floor_scale: CPP.floorScale,
    attn_scale: CPP.attnScale,
    use_qk_norm: experts !== 128,
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
    rope_parameters: factors
      ? { rope_type: 'freq_factors', rope_theta: rope.rope_theta, factors: [...factors] }
      : { rope_type: 'default', rope_theta: rope.rope_theta },
  });
}

export const llama4Text: ArchitectureFamily = {
  modelType: 'llama4_text',
  create: (c, d) => new Llama4Text(c, d),
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: false, complete: llama4FromGguf },
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
