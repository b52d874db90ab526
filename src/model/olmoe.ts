/**
 * OLMoE (transformers models/olmoe): every layer sparse; softmax top-k with norm_topk_prob; q_norm and k_norm
 * are RMSNorms over the whole q and k projections (not per head).
 */
import { CheckpointError } from '../errors';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  linear,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
  vector,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';

export class Olmoe extends Architecture {
  readonly modelType: string = 'olmoe';
  protected readonly expertCountKey: string = 'num_experts';

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
    return softmaxTopK(this.topK, this.cfg.bool('norm_topk_prob', false));
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads: kv } = this.cfg.heads();
    const hd = Math.floor(this.hidden / heads);
    const bias = this.cfg.bool('attention_bias', false);
    const p = `model.layers.${layer}.self_attn`;
    return [
      ...gqaAttention(layer, this.hidden, heads, kv, hd, { qkv: bias, o: bias }),
      vector(`${p}.q_norm.weight`, this.hidden, { kind: 'norm', layer, name: 'q_norm' }),
      vector(`${p}.k_norm.weight`, hd * kv, { kind: 'norm', layer, name: 'k_norm' }),
    ];
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    const c = this.cfg;
    const clip = c.has('clip_qkv') ? c.num('clip_qkv') : undefined;
    return this.gqaSpec(Math.floor(this.hidden / c.int('num_attention_heads')), 'full', eps, clip);
  }

  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const keys: [string, GgufScalar][] = [['attention.head_count_kv', u32(att.kvHeads)]];
    if (att.headDim * att.heads !== this.hidden) keys.push(...headLengthKeys(att.headDim));
    if (att.kvHeads !== att.heads) {
      throw new CheckpointError(
        `GGUF output for olmoe with grouped-query attention (${att.kvHeads} key/value heads for ${att.heads}) is not supported by llama.cpp, whose OLMoE normalises k over all heads`,
        { file: this.dir },
      );
    }
    return {
      arch: 'olmoe',
      feedForwardLength: this.expertWidth,
      keys,
      warnings: this.normTopKWarnings('olmoe', false),
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
    };
  }
}

export const olmoe: ArchitectureFamily = {
  modelType: 'olmoe',
  create: (c, d) => new Olmoe(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'olmoe',
    architectures: ['OlmoeForCausalLM'],
    num_key_value_heads: 4,
    intermediate_size: 32,
    num_experts: 8,
    norm_topk_prob: false,
    rope_theta: 1e4,
  },
  ggufPreTokenizer: 'olmo',
  ggufReader: {
    arch: 'olmoe',
    normTopKDefault: false,
    complete(h, c, experts) {
      const keyLength = h.opt('attention.key_length');
      if (keyLength !== undefined && keyLength !== (c.hidden_size as number) / (c.num_attention_heads as number)) {
        throw new CheckpointError(
          `olmoe with key_length ${keyLength} ≠ embedding_length / head_count is not read by moe`,
          { file: h.file },
        );
      }
      const intermediate_size = h.num('feed_forward_length');
      Object.assign(c, { model_type: 'olmoe', num_experts: experts, intermediate_size, attention_bias: false });
      if (h.opt('attention.clamp_kqv') !== undefined) c.clip_qkv = h.opt('attention.clamp_kqv');
    },
  },
};
