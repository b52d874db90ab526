/**
 * DeepSeek-V3.2 / V3.2-Exp (transformers models/deepseek_v32): DeepSeek-V3 (MLA with q_a_proj always, RoPE always
 * interleaved, sigmoid group routing with e_score_correction_bias, routed scaling, shared experts, dense layers
 * where mlp_layer_types says "dense", by default below first_k_dense_replace) plus DeepSeek Sparse Attention: a
 * lightning indexer per layer (self_attn.indexer.wq_b [index_n_heads·index_head_dim, q_lora_rank], wk
 * [index_head_dim, hidden], k_norm.weight/bias (a LayerNorm), weights_proj [index_n_heads, hidden]) scores every
 * earlier token and each query attends only to its index_topk best.
 *
 * In a window of at most index_topk tokens the selection is every earlier token, so attention is dense MLA and the
 * indexer does not change the output: moe runs such windows with DeepSeek-V3's forward and refuses longer ones
 * (checkWindow) until sparse attention is implemented. The indexer tensors have the role 'aux': every command
 * keeps them as stored (prune, merge and quantize copy them; an FP8 source's wq_b and wk are decoded as the other
 * FP8 weights are). They are not quantized: they decide which tokens are attended to, a discrete choice that
 * rounding would change, and deepseek-ai's own FP8 release keeps weights_proj in bf16 (transformers keeps it in
 * float32). GGUF: llama.cpp's deepseek32 (convert_hf_to_gguf.py DeepseekV32Model, src/models/deepseek32.cpp).
 */
import { CheckpointError, UsageError } from '../errors';
import type { Config } from '../io/checkpoint';
import { ArchitectureFamily, linear, SYNTH_COMMON, TensorSpec, vector } from './arch';
import { deepseekFromGguf, DeepseekV3 } from './deepseek';
import type { AttentionSpec } from './forward/attention';
import { GgufAttentionTensor, GgufHparams, GgufMapping, u32 } from './gguf-map';

export class DeepseekV32 extends DeepseekV3 {
  override readonly modelType: string = 'deepseek_v32';

  /** transformers' DeepseekV32Config: mlp_layer_types, else first_k_dense_replace (default 3) dense layers. */
  override isMoeLayer(layer: number): boolean {
    const types = this.config.mlp_layer_types;
    if (Array.isArray(types) && typeof types[layer] === 'string') return types[layer] === 'sparse';
    return layer >= this.cfg.int('first_k_dense_replace', 3);
  }

  /** DeepseekV32Attention rotates adjacent pairs whatever the config says (it has no rope_interleave). */
  protected override interleaved(): boolean {
    return true;
  }

  get indexTopK(): number {
    return this.cfg.int('index_topk', 2048);
  }

  override checkWindow(tokens: number): void {
    const k = this.indexTopK;
    if (tokens <= k) return;
    throw new UsageError(
      `a window of ${tokens} tokens is longer than index_topk ${k}: deepseek_v32 then attends only to the ` +
        `${k} tokens its indexer selects, and moe runs dense attention only (sparse attention is not implemented)`,
      { file: this.cfg.file, hint: `use --seq-len ${k} or less` },
    );
  }

  /** The indexer's tensors of one layer, in the order transformers saves them. */
  indexerSpecs(layer: number): TensorSpec[] {
    const c = this.cfg;
    const p = `model.layers.${layer}.self_attn.indexer`;
    const heads = c.int('index_n_heads', 64);
    const dim = c.int('index_head_dim', 128);
    const aux = (name: string) => ({ kind: 'aux' as const, layer, name: `indexer.${name}` });
    return [
      vector(`${p}.k_norm.bias`, dim, aux('k_norm.bias')),
      vector(`${p}.k_norm.weight`, dim, aux('k_norm.weight')),
      linear(`${p}.weights_proj.weight`, heads, this.hidden, aux('weights_proj')),
      linear(`${p}.wk.weight`, dim, this.hidden, aux('wk')),
      linear(`${p}.wq_b.weight`, heads * dim, c.int('q_lora_rank'), aux('wq_b')),
    ];
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    return [...super.attentionSpecs(layer), ...this.indexerSpecs(layer)];
  }

  /** deepseek2's keys and MLA tensors, plus the indexer (llama.cpp runs DSA: dense while a window fits index_topk). */
  override ggufMapping(spec: AttentionSpec, rope: Record<string, unknown>): GgufMapping {
    const base = super.ggufMapping(spec, rope);
    const c = this.cfg;
    const dim = c.int('index_head_dim', 128);
    if (dim < 64 || (dim & (dim - 1)) !== 0) {
      // llama.cpp multiplies the indexer's q and k by a Hadamard matrix of the largest power of two ≥ 64 dividing
      // index_head_dim (llama_kv_cache::build_input_k_rot) and aborts when that is not index_head_dim itself
      throw new CheckpointError(`GGUF output for deepseek_v32 needs index_head_dim a power of two ≥ 64, not ${dim}`, {
        file: this.cfg.file,
        hint: "llama.cpp's deepseek32 rotates the indexer's query and key by a Hadamard matrix of that size",
      });
    }
    return {
      ...base,
      arch: 'deepseek32',
      keys: [
        ...base.keys,
        ['attention.indexer.head_count', u32(c.int('index_n_heads', 64))],
        ['attention.indexer.key_length', u32(dim)],
        ['attention.indexer.top_k', u32(this.indexTopK)],
      ],
      attentionTensors: (l, blk) => [...base.attentionTensors(l, blk), ...indexerGgufTensors(l, blk)],
    };
  }
}

/** convert_hf_to_gguf.py's names (gguf-py INDEXER_*); weights_proj stays F32, as transformers keeps it in float32. */
function indexerGgufTensors(layer: number, blk: string): GgufAttentionTensor[] {
  const p = `model.layers.${layer}.self_attn.indexer`;
  return [
    { name: `${blk}.indexer.k_norm.weight`, from: `${p}.k_norm.weight`, kind: 'norm' },
    { name: `${blk}.indexer.k_norm.bias`, from: `${p}.k_norm.bias`, kind: 'norm' },
    { name: `${blk}.indexer.proj.weight`, from: `${p}.weights_proj.weight`, kind: 'router' },
    { name: `${blk}.indexer.attn_k.weight`, from: `${p}.wk.weight`, kind: 'weight' },
    { name: `${blk}.indexer.attn_q_b.weight`, from: `${p}.wq_b.weight`, kind: 'weight' },
  ];
}

/** deepseek32 back to a config: deepseek2's keys, the indexer's, and no V3-only keys transformers' V3.2 lacks. */
function deepseekV32FromGguf(h: GgufHparams, c: Config, experts: number): void {
  deepseekFromGguf(h, c, experts);
  delete c.rope_interleave;
  delete c.topk_method;
  Object.assign(c, {
    model_type: 'deepseek_v32',
    index_n_heads: h.num('attention.indexer.head_count'),
    index_head_dim: h.num('attention.indexer.key_length'),
    index_topk: h.num('attention.indexer.top_k'),
  });
}

export const deepseekV32: ArchitectureFamily = {
  modelType: 'deepseek_v32',
  create: (c, d) => new DeepseekV32(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'deepseek_v32',
    architectures: ['DeepseekV32ForCausalLM'],
    num_hidden_layers: 3,
    num_key_value_heads: 4,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    n_routed_experts: 8,
    n_shared_experts: 1,
    first_k_dense_replace: 1,
    mlp_layer_types: ['dense', 'sparse', 'sparse'],
    q_lora_rank: 24,
    kv_lora_rank: 32,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    v_head_dim: 16,
    n_group: 2,
    topk_group: 1,
    norm_topk_prob: true,
    routed_scaling_factor: 2.5,
    index_n_heads: 4,
    index_head_dim: 16,
    index_topk: 64,
    rope_parameters: { rope_type: 'default', rope_theta: 1e4 },
  },
  ggufReader: { arch: 'deepseek32', normTopKDefault: false, complete: deepseekV32FromGguf },
};
