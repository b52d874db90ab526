/**
 * Qwen3-MoE (transformers models/qwen3_moe): as Qwen2-MoE but without a shared expert, with per-head RMSNorm on
 * q and k (q_norm/k_norm of size head_dim), optional attention biases, and head_dim that may differ from
 * hidden/heads.
 */
import {
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  linear,
  mlp,
  SYNTH_COMMON,
  TensorSpec,
  qkNormSpecs,
} from './arch';
import type { ConfigReader } from './config';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufMapping, headLengthKeys, u32 } from './gguf-map';
import { Qwen2Moe, qwenFromGguf } from './qwen2-moe';

export class Qwen3Moe extends Qwen2Moe {
  override readonly modelType: string = 'qwen3_moe';
  protected override readonly expertCountKey: string = 'num_experts';

  override get sharedExperts(): number {
    return 0;
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    return qwen3Attention(this.cfg, layer, this.hidden, this.headDim());
  }

  protected override mlpSpecs(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    if (!this.isMoeLayer(layer))
      return mlp(p, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({ kind: 'dense_mlp', layer, proj }));
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }

  override attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return this.gqaSpec(this.headDim(), 'head', eps);
  }

  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    return {
      arch: 'qwen3moe',
      feedForwardLength: this.cfg.int('intermediate_size', this.expertWidth),
      keys: [
        ['attention.head_count_kv', u32(att.kvHeads)],
        ['expert_feed_forward_length', u32(this.expertWidth)],
        ...headLengthKeys(att.headDim),
      ],
      warnings: this.normTopKWarnings('qwen3moe', true),
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
    };
  }
}

export const qwen3Moe: ArchitectureFamily = {
  modelType: 'qwen3_moe',
  create: (c, d) => new Qwen3Moe(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'qwen3_moe',
    architectures: ['Qwen3MoeForCausalLM'],
    head_dim: 32,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    num_experts: 8,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    rope_parameters: { rope_theta: 1e6, rope_type: 'default' },
  },
  ggufPreTokenizer: 'qwen2',
  ggufReader: { arch: 'qwen3moe', normTopKDefault: true, complete: qwenFromGguf },
};

/** Qwen3's attention tensors (dots.llm1's too): q/k/v/o with attention_bias on all four, per-head q/k norms. */
export function qwen3Attention(cfg: ConfigReader, layer: number, hidden: number, headDim: number): TensorSpec[] {
  const { heads, kvHeads } = cfg.heads();
  const bias = cfg.bool('attention_bias', false);
  return [
    ...gqaAttention(layer, hidden, heads, kvHeads, headDim, { qkv: bias, o: bias }),
    ...qkNormSpecs(layer, headDim),
  ];
}
