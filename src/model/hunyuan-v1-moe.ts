/**
 * Hunyuan-A13B (Tencent; transformers models/hunyuan_v1_moe, HunYuanMoEV1ForCausalLM).
 * - Config keys of its own: num_experts and moe_topk (transformers also accepts a list per layer; moe refuses one
 *   that is not the same on every layer), intermediate_size is the width of every routed expert and of the shared MLP.
 * - Every layer MoE: router `mlp.gate.wg` [E, H] without bias (float32 in the released checkpoints), softmax over all
 *   experts, top-k renormalised; plus `mlp.shared_mlp` added unweighted.
 * - Attention: grouped-query with head_dim, q/k/v/o biases with attention_bias; rotate-half RoPE, THEN per-head
 *   RMSNorms `self_attn.query_layernorm` / `key_layernorm` [head_dim]. The rotary is rope_type "dynamic" with an
 *   NTK alpha (Hunyuan-A13B: 1000): base = rope_theta · alpha^(head_dim / (head_dim − 2)) (forward/rope.ts).
 */
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  linear,
  mlp,
  RoutingRule,
  SYNTH_COMMON,
  TensorSpec,
  vector,
  softmaxTopK,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufHparams, GgufMapping, headLengthKeys, u32 } from './gguf-map';
import { gqaGgufTensors } from './arch';

const GGUF_ARCH = 'hunyuan-moe';

export class HunyuanV1Moe extends Architecture {
  readonly modelType: string = 'hunyuan_v1_moe';
  protected readonly expertCountKey: string = 'num_experts';

  constructor(config: Config, dir: string) {
    super(config, dir);
    this.cfg.requireSilu();
  }

  isMoeLayer(): boolean {
    return true;
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

  override sharedExpertPrefix(layer: number): string {
    return `${this.moePrefix(layer)}.shared_mlp`;
  }

  get routing(): RoutingRule {
    return softmaxTopK(this.topK, true);
  }

  override routerKey(layer: number): string {
    return `${this.moePrefix(layer)}.gate.wg.weight`;
  }

  headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads: kv } = this.cfg.heads();
    const bias = this.cfg.bool('attention_bias', false);
    const hd = this.headDim();
    const p = `model.layers.${layer}.self_attn`;
    return [
      ...gqaAttention(layer, this.hidden, heads, kv, hd, { qkv: bias, o: bias }),
      vector(`${p}.query_layernorm.weight`, hd, { kind: 'norm', layer, name: 'query_layernorm' }),
      vector(`${p}.key_layernorm.weight`, hd, { kind: 'norm', layer, name: 'key_layernorm' }),
    ];
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    const h = this.hidden;
    return [
      linear(this.routerKey(layer), this.numExperts, h, { kind: 'router', layer }),
      ...mlp(this.sharedExpertPrefix(layer), h, this.expertWidth, (proj) => ({ kind: 'shared', layer, proj })),
    ];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'head', eps), qkNormAfterRope: true };
  }

  /**
   * llama.cpp's "hunyuan-moe" (convert_hf_to_gguf.py HunYuanMoEModel, src/models/hunyuan-moe.cpp): NEOX rotary with
   * the alpha-raised base as rope.freq_base (src/gguf/arch.ts), q/k norms after it, softmax top-k renormalised, the
   * routed experts sized by feed_forward_length, the shared MLP by expert_shared_feed_forward_length.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.expertWidth,
      keys: [
        ['attention.head_count_kv', u32(att.kvHeads)],
        ...headLengthKeys(att.headDim),
        ['rope.dimension_count', u32(att.headDim)],
        ['expert_feed_forward_length', u32(this.expertWidth)],
        ['expert_shared_feed_forward_length', u32(this.expertWidth)],
      ],
      warnings: [],
      attentionTensors: (l, blk) => [
        ...gqaGgufTensors(l, blk),
        { name: `${blk}.attn_q_norm.weight`, from: `model.layers.${l}.self_attn.query_layernorm.weight`, kind: 'norm' },
        { name: `${blk}.attn_k_norm.weight`, from: `model.layers.${l}.self_attn.key_layernorm.weight`, kind: 'norm' },
      ],
    };
  }
}

/** A hunyuan-moe GGUF back to a config (the rotary base as written: the alpha is already in it). */
function hunyuanFromGguf(h: GgufHparams, c: Config, experts: number): void {
  Object.assign(c, {
    model_type: 'hunyuan_v1_moe',
    architectures: ['HunYuanMoEV1ForCausalLM'],
    num_experts: experts,
    head_dim: h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads)),
    intermediate_size: h.num('feed_forward_length'),
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
  });
}

const { num_experts_per_tok: _k, ...COMMON } = SYNTH_COMMON;

export const hunyuanV1Moe: ArchitectureFamily = {
  modelType: 'hunyuan_v1_moe',
  create: (c, d) => new HunyuanV1Moe(c, d),
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: true, complete: hunyuanFromGguf },
  preset: {
    ...COMMON,
    model_type: 'hunyuan_v1_moe',
    architectures: ['HunYuanMoEV1ForCausalLM'],
    head_dim: 32,
    intermediate_size: 32,
    num_experts: 8,
    moe_topk: 2,
    attention_bias: false,
    rope_parameters: { rope_type: 'dynamic', alpha: 1000, factor: 1, rope_theta: 10000 },
  },
};
