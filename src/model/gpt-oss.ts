/**
 * gpt-oss (transformers models/gpt_oss): every layer sparse; grouped-query attention with q/k/v/o biases, a learned
 * per-head sink logit in each softmax denominator (`self_attn.sinks`) and sliding-window attention on the layers
 * `layer_types` names "sliding_attention" (a token sees itself and the sliding_window − 1 before it); YaRN RoPE.
 * The router is a linear layer with a bias: top-k of its logits, softmax over the k (softmax over all experts
 * renormalised over the top-k is the same). Experts have biases and the clamped SwiGLU
 * ((up + 1) · gate · σ(1.702 · gate), gate ≤ 7, |up| ≤ 7); the routing weight multiplies the expert's output
 * including its down bias.
 *
 * The checkpoint stores the experts fused, transposed relative to nn.Linear ([in, out]):
 * `mlp.experts.gate_up_proj` [E, H, 2I] with gate and up alternating on the last axis (gate even columns),
 * `gate_up_proj_bias` [E, 2I], `down_proj` [E, I, H], `down_proj_bias` [E, H]. The schema lists per-expert
 * tensors (`mlp.experts.E.{gate,up,down}_proj.{weight,bias}`, weights [out, in]); `fusedExperts` says how they are
 * stored, and src/model/fused.ts maps one to the other.
 */
import {
  Architecture,
  ArchitectureFamily,
  ClampedGlu,
  FusedExpertLayout,
  gqaAttention,
  linear,
  gqaGgufTensors,
  Proj,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
  vector,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import type { Config } from '../io/checkpoint';
import { GgufHparams, GgufMapping, headLengthKeys, u32 } from './gguf-map';

/**
 * transformers' GptOssExperts fixes alpha 1.702 and limit 7.0; it does not read the config's `swiglu_limit` (7.0 in
 * the published configs), so neither does moe.
 */
const GLU: ClampedGlu = { alpha: 1.702, limit: 7.0 };

export class GptOss extends Architecture {
  readonly modelType: string = 'gpt_oss';
  protected readonly expertCountKey: string = 'num_local_experts';

  override readonly fusedExperts: FusedExpertLayout = {
    gateUp: (l) => `${this.moePrefix(l)}.experts.gate_up_proj`,
    gateUpBias: (l) => `${this.moePrefix(l)}.experts.gate_up_proj_bias`,
    down: (l) => `${this.moePrefix(l)}.experts.down_proj`,
    downBias: (l) => `${this.moePrefix(l)}.experts.down_proj_bias`,
    interleaved: true,
  };

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
    return { ...softmaxTopK(this.topK, true), logitBias: true };
  }

  override get expertGlu(): ClampedGlu {
    return GLU;
  }

  override routerKey(layer: number): string {
    return `${this.moePrefix(layer)}.router.weight`;
  }

  /** The router's bias: sliced with its rows when experts are removed; part of the logits (routing.logitBias). */
  override correctionBiasKey(layer: number): string {
    return `${this.moePrefix(layer)}.router.bias`;
  }

  override expertBiasKey(layer: number, expert: number, p: Proj): string {
    return `${this.moePrefix(layer)}.experts.${expert}.${this.projName(p)}.bias`;
  }

  /** transformers' default when the config has no layer_types: sliding on even layers, full on odd ones. */
  protected layerType(layer: number): string {
    const types = this.config.layer_types;
    if (Array.isArray(types) && typeof types[layer] === 'string') return types[layer] as string;
    return layer % 2 === 0 ? 'sliding_attention' : 'full_attention';
  }

  override slidingWindow(layer: number): number | undefined {
    if (this.layerType(layer) !== 'sliding_attention') return undefined;
    const w = this.config.sliding_window;
    return typeof w === 'number' ? this.cfg.int('sliding_window') : undefined;
  }

  private headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    const bias = this.cfg.bool('attention_bias', true);
    return [
      ...gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), { qkv: bias, o: bias }),
      vector(`model.layers.${layer}.self_attn.sinks`, heads, { kind: 'attn', layer, name: 'sinks' }),
    ];
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [
      linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer }),
      vector(this.correctionBiasKey(layer), this.numExperts, { kind: 'router_bias', layer }),
    ];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'none', eps), sinks: true };
  }

  /**
   * llama.cpp's "gpt-oss" (LLM_ARCH_OPENAI_MOE; convert_hf_to_gguf.py GptOssModel): q/k/v/o with biases, attn_sinks,
   * post_attention_norm, ffn_gate_inp with its bias, gate and up split from gate_up_proj, expert biases; the
   * sliding window, and which layers slide as a period (llama.cpp's default 2: the even layers).
   */
  override ggufMapping(spec: AttentionSpec, rope: Record<string, unknown>): GgufMapping {
    const att = spec as GqaSpec;
    const keys: GgufMapping['keys'] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
      ['attention.sliding_window', u32(this.cfg.int('sliding_window'))],
      ...headLengthKeys(att.headDim),
    ];
    const warnings: string[] = [];
    const sliding = [...Array(this.numLayers).keys()].map((l) => this.layerType(l) === 'sliding_attention');
    const slides = (p: number, l: number) => l % p < p - 1; // llama_hparams::set_swa_pattern
    const periods = [GGUF_SWA_PERIOD, ...[...Array(this.numLayers + 1).keys()].map((p) => p + 1)];
    const period = periods.find((p) => sliding.every((s, l) => s === slides(p, l)));
    if (period === undefined)
      warnings.push(
        `llama.cpp slides the attention of every n-th layer but the last (by default the even layers); ` +
          `this model's layer_types follow no such period, so llama.cpp attends differently on some layers`,
      );
    else if (period !== GGUF_SWA_PERIOD) keys.push(['attention.sliding_window_pattern', u32(period)]);
    if (rope.rope_type === 'yarn' && rope.truncate === false)
      warnings.push(
        "llama.cpp rounds YaRN's correction range to whole dimensions (truncate: true); this model has truncate " +
          'false, so llama.cpp rotates a few dimensions slightly differently',
      );
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.expertWidth,
      keys,
      warnings,
      attentionTensors: (l, blk) => [
        ...gqaGgufTensors(l, blk),
        { name: `${blk}.attn_sinks.weight`, from: `model.layers.${l}.self_attn.sinks`, kind: 'norm' },
      ],
      postAttentionNorm: 'post_attention_norm',
    };
  }
}

const GGUF_ARCH = 'gpt-oss';
/** llama.cpp's attention.sliding_window_pattern when absent for gpt-oss: layer l slides when l % 2 < 1. */
const GGUF_SWA_PERIOD = 2;

/** The config of a gpt-oss GGUF file: what llama.cpp runs (its YaRN always truncates the correction range). */
function gptOssFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const period = h.num('attention.sliding_window_pattern', GGUF_SWA_PERIOD);
  const layers = Number(c.num_hidden_layers);
  const rope = c.rope_parameters as Record<string, unknown>;
  if (rope.rope_type === 'yarn') Object.assign(rope, { beta_fast: 32, beta_slow: 1, truncate: true });
  Object.assign(c, {
    model_type: 'gpt_oss',
    architectures: ['GptOssForCausalLM'],
    num_local_experts: experts,
    intermediate_size: h.num('expert_feed_forward_length'),
    head_dim: h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads)),
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
    sliding_window: h.num('attention.sliding_window'),
    layer_types: [...Array(layers).keys()].map((l) =>
      period === 0 || l % period < period - 1 ? 'sliding_attention' : 'full_attention',
    ),
  });
}

export const gptOss: ArchitectureFamily = {
  modelType: 'gpt_oss',
  create: (c, d) => new GptOss(c, d),
  ggufPreTokenizer: 'gpt-4o',
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: true, complete: gptOssFromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'gpt_oss',
    architectures: ['GptOssForCausalLM'],
    num_hidden_layers: 2,
    head_dim: 16,
    intermediate_size: 32,
    num_local_experts: 4,
    num_experts_per_tok: 2,
    attention_bias: true,
    layer_types: ['sliding_attention', 'full_attention'],
    sliding_window: 8,
    max_position_embeddings: 131072, // YaRN factor 32 over 4096, as published (transformers warns otherwise)
    rms_norm_eps: 1e-5,
    swiglu_limit: 7.0,
    router_aux_loss_coef: 0.001,
    output_router_logits: false,
    rope_parameters: {
      rope_type: 'yarn',
      rope_theta: 150000,
      factor: 32,
      beta_fast: 32,
      beta_slow: 1,
      truncate: false,
      original_max_position_embeddings: 4096,
    },
  },
};
