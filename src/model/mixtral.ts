/** Mixtral (transformers models/mixtral): every layer sparse; softmax over all experts, top-k, renormalised. */
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  linear,
  Proj,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';

const MIXTRAL_PROJ: Record<Proj, string> = { gate: 'w1', up: 'w3', down: 'w2' };

export class Mixtral extends Architecture {
  readonly modelType: string = 'mixtral';
  protected readonly expertCountKey: string = 'num_local_experts';

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
    return softmaxTopK(this.topK, true);
  }

  override moePrefix(layer: number): string {
    return `model.layers.${layer}.block_sparse_moe`;
  }

  override projName(p: Proj): string {
    return MIXTRAL_PROJ[p];
  }

  protected headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), { qkv: false, o: false });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return this.gqaSpec(this.headDim(), 'none', eps);
  }

  /**
   * llama.cpp's "llama" architecture with experts; q/k rows permuted from HF's rotate-half RoPE layout to
   * llama.cpp's interleaved one, as convert_hf_to_gguf.py does.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const keys: [string, GgufScalar][] = [['attention.head_count_kv', u32(att.kvHeads)]];
    if (att.headDim * att.heads !== this.hidden) keys.push(...headLengthKeys(att.headDim));
    keys.push(['rope.dimension_count', u32(att.headDim)]);
    return {
      arch: 'llama',
      feedForwardLength: this.expertWidth,
      keys,
      warnings: [],
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk, { q: att.heads, k: att.kvHeads }),
    };
  }
}

export const mixtral: ArchitectureFamily = {
  modelType: 'mixtral',
  create: (c, d) => new Mixtral(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'mixtral',
    architectures: ['MixtralForCausalLM'],
    intermediate_size: 32,
    num_local_experts: 4,
    rope_theta: 1e6,
  },
  ggufReader: {
    arch: 'llama',
    normTopKDefault: true,
    // llama.cpp's llama architecture with experts; a dense llama has none and is refused before this.
    complete(h, c: Config, experts) {
      const heads = c.num_attention_heads as number;
      const hidden = c.hidden_size as number;
      const headDim = h.opt('attention.key_length') ?? h.opt('rope.dimension_count') ?? Math.floor(hidden / heads);
      const intermediate_size = h.num('feed_forward_length');
      Object.assign(c, { model_type: 'mixtral', num_local_experts: experts, intermediate_size, head_dim: headDim });
    },
  },
};
