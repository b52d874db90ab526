/**
 * Qwen2-MoE (transformers models/qwen2_moe): softmax top-k (renormalised only with norm_topk_prob), a shared
 * expert scaled by sigmoid(shared_expert_gate), q/k/v biases, and dense layers where `mlp_only_layers` or
 * `decoder_sparse_step` say so.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  linear,
  mlp,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufHparams, GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';

export class Qwen2Moe extends Architecture {
  readonly modelType: string = 'qwen2_moe';
  protected readonly expertCountKey: string = 'num_experts';

  /** Sparse unless listed in mlp_only_layers, and only every decoder_sparse_step-th layer (1-based). */
  isMoeLayer(layer: number): boolean {
    const step = this.cfg.int('decoder_sparse_step', 1);
    return !this.cfg.intList('mlp_only_layers').includes(layer) && step > 0 && (layer + 1) % step === 0;
  }

  get expertWidth(): number {
    return this.cfg.int('moe_intermediate_size');
  }

  get sharedExperts(): number {
    return this.cfg.int('shared_expert_intermediate_size', 0) > 0 ? 1 : 0;
  }

  override get sharedMode(): 'none' | 'gated' | 'plain' {
    return this.sharedExperts > 0 ? 'gated' : 'none';
  }

  get routing(): RoutingRule {
    return softmaxTopK(this.topK, this.cfg.bool('norm_topk_prob', false));
  }

  protected headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), {
      qkv: this.cfg.bool('qkv_bias', true),
      o: false,
    });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    if (!this.isMoeLayer(layer))
      return mlp(p, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({ kind: 'dense_mlp', layer, proj }));
    const out = [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
    // transformers builds the shared expert unconditionally; a width of 0 gives empty tensors.
    const width = this.cfg.int('shared_expert_intermediate_size', 0);
    out.push(...mlp(this.sharedExpertPrefix(layer), this.hidden, width, (proj) => ({ kind: 'shared', layer, proj })));
    out.push(linear(this.sharedGateKey(layer), 1, this.hidden, { kind: 'shared_gate', layer }));
    return out;
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return this.gqaSpec(this.headDim(), 'none', eps);
  }

  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const keys: [string, GgufScalar][] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
    ];
    const shared = this.cfg.int('shared_expert_intermediate_size', 0);
    if (this.sharedExperts > 0) keys.push(['expert_shared_feed_forward_length', u32(shared)]);
    if (att.headDim * att.heads !== this.hidden) keys.push(...headLengthKeys(att.headDim));
    if (this.moeLayers.length !== this.numLayers) {
      throw new CheckpointError(
        'GGUF output for qwen2_moe with dense layers (mlp_only_layers / decoder_sparse_step) is not supported by llama.cpp',
        { file: this.dir },
      );
    }
    return {
      arch: 'qwen2moe',
      feedForwardLength: this.cfg.int('intermediate_size', this.expertWidth),
      keys,
      warnings: this.normTopKWarnings('qwen2moe', false),
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
    };
  }
}

/** The keys Qwen2-MoE and Qwen3-MoE read back from GGUF. */
export function qwenFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const qwen3 = h.arch === 'qwen3moe';
  Object.assign(c, {
    model_type: qwen3 ? 'qwen3_moe' : 'qwen2_moe',
    num_experts: experts,
    head_dim: h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads)),
    intermediate_size: h.num('feed_forward_length'),
    moe_intermediate_size: h.num('expert_feed_forward_length'),
    decoder_sparse_step: 1,
    mlp_only_layers: [],
  });
  if (qwen3) c.attention_bias = h.hasTensor('blk.0.attn_q.bias');
  else {
    c.qkv_bias = h.hasTensor('blk.0.attn_q.bias');
    const shexp = h.tensorShape('blk.0.ffn_up_shexp.weight');
    c.shared_expert_intermediate_size = h.opt('expert_shared_feed_forward_length') ?? (shexp ? shexp[0] : 0);
  }
}

export const qwen2Moe: ArchitectureFamily = {
  modelType: 'qwen2_moe',
  create: (c, d) => new Qwen2Moe(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'qwen2_moe',
    architectures: ['Qwen2MoeForCausalLM'],
    num_hidden_layers: 3,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    shared_expert_intermediate_size: 48,
    num_experts: 4,
    mlp_only_layers: [1],
    decoder_sparse_step: 1,
    norm_topk_prob: false,
    rope_theta: 1e6,
  },
  ggufPreTokenizer: 'qwen2',
  ggufReader: { arch: 'qwen2moe', normTopKDefault: false, complete: qwenFromGguf },
};
