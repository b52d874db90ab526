/**
 * ERNIE 4.5 MoE (Baidu; transformers models/ernie4_5_moe): ERNIE-4.5-21B-A3B and -300B-A47B.
 * - Config keys of its own: moe_num_experts (the expert count), moe_k (the top-k), moe_intermediate_size,
 *   moe_num_shared_experts; tie_word_embeddings defaults to true.
 * - MoE on layer l when (l + 1) % moe_layer_interval == 0 and moe_layer_start_index ≤ l ≤ moe_layer_end_index
 *   (−1: the last layer); the others have a dense MLP of width intermediate_size.
 * - Routing (Ernie4_5_MoeTopKRouter, float32): softmax over all experts; the top-k chosen on softmax +
 *   `mlp.moe_statics.e_score_correction_bias` ([1, E], sliced with the router rows); the weights are the unbiased
 *   softmax of the chosen experts divided by max(their sum, moe_norm_min) — renormalised (the clamp at 1e-12 never
 *   binds for softmax weights); the moe_num_shared_experts shared experts fused into one MLP `mlp.shared_experts` of
 *   width moe_intermediate_size × moe_num_shared_experts, added.
 * - Attention: grouped-query, head_dim (default hidden / heads); rotary on interleaved pairs (2i, 2i + 1) with
 *   frequency i over the whole head.
 * - use_bias puts biases on every linear including lm_head; the released models have none and moe refuses it.
 */
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  linear,
  mlp,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from './arch';
import { CheckpointError } from '../errors';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufHparams, GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';
import { gqaGgufTensors } from './arch';

const GGUF_ARCH = 'ernie4_5-moe';

export class Ernie4_5Moe extends Architecture {
  readonly modelType: string = 'ernie4_5_moe';
  protected readonly expertCountKey: string = 'moe_num_experts';

  constructor(config: Config, dir: string) {
    super(config, dir);
    const c = this.cfg;
    if (c.bool('use_bias', false))
      throw c.error('use_bias: ERNIE 4.5 with biases on every linear (lm_head too) is not supported');
    c.requireSilu();
    if (c.int('moe_layer_interval', 1) < 1) throw c.error('moe_layer_interval must be at least 1');
  }

  protected override get tiedByDefault(): boolean {
    return true;
  }

  isMoeLayer(layer: number): boolean {
    const c = this.cfg;
    const end = c.num('moe_layer_end_index', -1);
    const last = end === -1 ? this.numLayers - 1 : end;
    return (
      (layer + 1) % c.int('moe_layer_interval', 1) === 0 && layer >= c.int('moe_layer_start_index', 1) && layer <= last
    );
  }

  get expertWidth(): number {
    return this.cfg.int('moe_intermediate_size');
  }

  get sharedExperts(): number {
    return this.cfg.int('moe_num_shared_experts', 0);
  }

  override get sharedMode(): 'none' | 'gated' | 'plain' {
    return this.sharedExperts > 0 ? 'plain' : 'none';
  }

  override sharedExpertPrefix(layer: number): string {
    return `${this.moePrefix(layer)}.shared_experts`;
  }

  get routing(): RoutingRule {
    return { ...softmaxTopK(this.topK, true), correctionBias: true };
  }

  override correctionBiasKey(layer: number): string {
    return `${this.moePrefix(layer)}.moe_statics.e_score_correction_bias`;
  }

  headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), { qkv: false, o: false });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    const h = this.hidden;
    if (!this.isMoeLayer(layer)) {
      const width = this.cfg.int('intermediate_size');
      return mlp(this.denseMlpPrefix(layer), h, width, (proj) => ({ kind: 'dense_mlp', layer, proj }));
    }
    const out = [
      linear(this.routerKey(layer), this.numExperts, h, { kind: 'router', layer }),
      { name: this.correctionBiasKey(layer), shape: [1, this.numExperts], role: { kind: 'router_bias', layer } },
    ] as TensorSpec[];
    if (this.sharedExperts > 0) {
      const width = this.expertWidth * this.sharedExperts;
      out.push(...mlp(this.sharedExpertPrefix(layer), h, width, (proj) => ({ kind: 'shared', layer, proj })));
    }
    return out;
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'none', eps), interleaved: true };
  }

  /**
   * llama.cpp's "ernie4_5-moe" (convert_hf_to_gguf.py Ernie4_5MoeModel, src/models/ernie4-5-moe.cpp): rotary on
   * adjacent pairs as the checkpoint stores them (q/k not permuted), MoE on layer l ≥ leading_dense_block_count with
   * (l + 1) % interleave_moe_layer_step == 0 up to the last layer, softmax routing with exp_probs_b, renormalised.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const start = this.cfg.int('moe_layer_start_index', 1);
    const step = this.cfg.int('moe_layer_interval', 1);
    const cpp = [...Array(this.numLayers).keys()].filter((l) => l >= start && (l + 1) % step === 0);
    if (cpp.join() !== this.moeLayers.join())
      throw new CheckpointError(
        `llama.cpp runs ERNIE 4.5's MoE layers from moe_layer_start_index to the last layer; this model's are ${this.moeLayers.join(', ')}`,
        { file: this.dir, hint: 'write --format packed or dequantized instead' },
      );
    const keys: [string, GgufScalar][] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ...headLengthKeys(att.headDim),
      ['rope.dimension_count', u32(att.headDim)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
      ['leading_dense_block_count', u32(start)],
      ['interleave_moe_layer_step', u32(step)],
    ];
    if (this.sharedExperts > 0)
      keys.push(['expert_shared_feed_forward_length', u32(this.expertWidth * this.sharedExperts)]);
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.cfg.int('intermediate_size'),
      keys,
      warnings: [],
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
    };
  }
}

/** An ernie4_5-moe GGUF back to a config (MoE layers as llama.cpp runs them: up to the last layer). */
function ernieFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const width = h.num('expert_feed_forward_length');
  Object.assign(c, {
    model_type: 'ernie4_5_moe',
    architectures: ['Ernie4_5_MoeForCausalLM'],
    moe_num_experts: experts,
    head_dim: h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads)),
    intermediate_size: h.num('feed_forward_length'),
    moe_intermediate_size: width,
    moe_num_shared_experts: h.num('expert_shared_feed_forward_length', 0) / width,
    moe_layer_start_index: h.num('leading_dense_block_count', 0),
    moe_layer_interval: h.num('interleave_moe_layer_step', 1),
    moe_layer_end_index: -1,
    use_bias: false,
  });
}

/** SYNTH_COMMON without num_experts_per_tok: ERNIE's config names the top-k moe_k. */
const { num_experts_per_tok: _k, ...COMMON } = SYNTH_COMMON;

export const ernie4_5Moe: ArchitectureFamily = {
  modelType: 'ernie4_5_moe',
  create: (c, d) => new Ernie4_5Moe(c, d),
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: true, complete: ernieFromGguf },
  preset: {
    ...COMMON,
    model_type: 'ernie4_5_moe',
    architectures: ['Ernie4_5_MoeForCausalLM'],
    num_hidden_layers: 3,
    head_dim: 32,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    moe_k: 2,
    moe_num_experts: 8,
    moe_num_shared_experts: 2,
    moe_layer_start_index: 1,
    moe_layer_end_index: -1,
    moe_layer_interval: 1,
    use_bias: false,
    tie_word_embeddings: true,
    rope_parameters: { rope_type: 'default', rope_theta: 500000 },
  },
};
