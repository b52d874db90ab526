/**
 * A Hugging Face config.json rebuilt from a GGUF file's `<arch>.*` metadata, for the architectures moe writes
 * (src/gguf/arch.ts): qwen3moe, qwen2moe, olmoe, llama with experts (Mixtral) and deepseek2 (DeepSeek-V2 with
 * softmax gating, -V3 with sigmoid gating). Where a key is absent, llama.cpp's own default for that architecture
 * applies (e.g. whether the top-k weights are renormalised), since llama.cpp defines what the file means.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import type { GgufFile } from '../io/gguf-reader';

/** GGUF architecture → model_type (llama only with experts: a dense llama is not a MoE model). */
export const GGUF_ARCHES = ['qwen3moe', 'qwen2moe', 'olmoe', 'llama', 'deepseek2'];

/** llama.cpp's default for renormalising the selected experts' weights, per architecture (its build_moe_ffn calls). */
const NORM_TOPK_DEFAULT: Record<string, boolean> = { qwen3moe: true, qwen2moe: false, olmoe: false, llama: true, deepseek2: false };

export function configFromGguf(g: GgufFile): Config {
  const file = g.file;
  const m = g.metadata;
  const arch = m.get('general.architecture');
  if (typeof arch !== 'string') throw new CheckpointError('the GGUF file has no general.architecture', { file, hint: 'this is not a model file' });
  if (!GGUF_ARCHES.includes(arch)) {
    throw new CheckpointError(`GGUF architecture "${arch}" is not read by moe`, { file, hint: `moe reads the MoE architectures it writes: ${GGUF_ARCHES.join(', ')} (llama with experts)` });
  }
  const key = (k: string) => `${arch}.${k}`;
  const opt = (k: string): number | undefined => {
    const v = m.get(key(k));
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new CheckpointError(`GGUF metadata ${key(k)} is ${JSON.stringify(v)}, expected a number`, { file, hint: 'moe reads one value per model (not per layer)' });
    return v;
  };
  const num = (k: string, fallback?: number): number => {
    const v = opt(k) ?? fallback;
    if (v === undefined) throw new CheckpointError(`the GGUF file has no ${key(k)}`, { file, hint: 'the file is incomplete or was not written for llama.cpp' });
    return v;
  };
  const bool = (k: string, fallback: boolean): boolean => {
    const v = m.get(key(k));
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') throw new CheckpointError(`GGUF metadata ${key(k)} is ${JSON.stringify(v)}, expected true or false`, { file });
    return v;
  };
  const has = (name: string) => g.tensors.some((t) => t.name === name);
  const embd = g.tensors.find((t) => t.name === 'token_embd.weight');
  if (!embd || embd.shape.length !== 2) throw new CheckpointError('the GGUF file has no 2-D token_embd.weight', { file, hint: 'the file is incomplete' });

  const hidden = num('embedding_length');
  const heads = num('attention.head_count');
  const experts = num('expert_count', 0);
  if (experts < 1) throw new CheckpointError(`the GGUF file's ${arch} model has no experts (${key('expert_count')})`, { file, hint: 'moe evaluates Mixture-of-Experts models' });
  const c: Config = {
    hidden_size: hidden,
    num_hidden_layers: num('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: num('attention.head_count_kv', heads),
    vocab_size: embd.shape[0],
    max_position_embeddings: num('context_length', 4096),
    rms_norm_eps: num('attention.layer_norm_rms_epsilon'),
    num_experts_per_tok: num('expert_used_count'),
    tie_word_embeddings: !has('output.weight'),
    norm_topk_prob: bool('expert_weights_norm', NORM_TOPK_DEFAULT[arch]),
    rope_parameters: rope(g, arch, opt),
  };
  const keyLength = opt('attention.key_length');
  switch (arch) {
    case 'qwen3moe':
    case 'qwen2moe':
      Object.assign(c, {
        model_type: arch === 'qwen3moe' ? 'qwen3_moe' : 'qwen2_moe',
        num_experts: experts,
        head_dim: keyLength ?? Math.floor(hidden / heads),
        intermediate_size: num('feed_forward_length'),
        moe_intermediate_size: num('expert_feed_forward_length'),
        decoder_sparse_step: 1,
        mlp_only_layers: [],
      });
      if (arch === 'qwen3moe') c.attention_bias = has('blk.0.attn_q.bias');
      else {
        c.qkv_bias = has('blk.0.attn_q.bias');
        const shexp = g.tensors.find((t) => t.name === 'blk.0.ffn_up_shexp.weight');
        c.shared_expert_intermediate_size = opt('expert_shared_feed_forward_length') ?? (shexp ? shexp.shape[0] : 0);
      }
      break;
    case 'olmoe':
      if (keyLength !== undefined && keyLength !== hidden / heads) throw new CheckpointError(`olmoe with key_length ${keyLength} ≠ embedding_length / head_count is not read by moe`, { file });
      Object.assign(c, { model_type: 'olmoe', num_experts: experts, intermediate_size: num('feed_forward_length'), attention_bias: false });
      if (opt('attention.clamp_kqv') !== undefined) c.clip_qkv = opt('attention.clamp_kqv');
      break;
    case 'llama':
      // Mixtral: llama.cpp's llama architecture with experts.
      Object.assign(c, { model_type: 'mixtral', num_local_experts: experts, intermediate_size: num('feed_forward_length'), head_dim: keyLength ?? opt('rope.dimension_count') ?? Math.floor(hidden / heads) });
      break;
    case 'deepseek2': {
      const ropeDim = num('rope.dimension_count');
      const kMla = opt('attention.key_length_mla');
      if (kMla === undefined || g.tensors.some((t) => t.name.endsWith('.attn_kv_b.weight'))) {
        throw new CheckpointError('this deepseek2 GGUF has the older layout (attn_kv_b, no key_length_mla), which moe does not read', { file, hint: 'write it again with moe quantize --format gguf or a current convert_hf_to_gguf.py' });
      }
      const sigmoid = num('expert_gating_func', 1) === 2;
      const groups = num('expert_group_count', 1);
      const qRank = num('attention.q_lora_rank', 0);
      Object.assign(c, {
        model_type: sigmoid ? 'deepseek_v3' : 'deepseek_v2',
        num_key_value_heads: heads,
        n_routed_experts: experts,
        n_shared_experts: num('expert_shared_count', 0),
        first_k_dense_replace: num('leading_dense_block_count', 0),
        intermediate_size: num('feed_forward_length'),
        moe_intermediate_size: num('expert_feed_forward_length'),
        q_lora_rank: qRank > 0 ? qRank : null,
        kv_lora_rank: num('attention.kv_lora_rank'),
        qk_rope_head_dim: ropeDim,
        qk_nope_head_dim: kMla - ropeDim,
        v_head_dim: num('attention.value_length_mla'),
        routed_scaling_factor: num('expert_weights_scale', 1),
        n_group: groups,
        topk_group: num('expert_group_used_count', 1),
        topk_method: sigmoid ? 'noaux_tc' : groups > 1 ? 'group_limited_greedy' : 'greedy',
        rope_interleave: true,
        attention_bias: false,
      });
      break;
    }
  }
  return c;
}

/** rope_parameters from rope.freq_base and rope.scaling.*: none, linear and yarn (what moe writes). */
function rope(g: GgufFile, arch: string, opt: (k: string) => number | undefined): Record<string, unknown> {
  const m = g.metadata;
  const theta = opt('rope.freq_base') ?? 10000;
  const type = m.get(`${arch}.rope.scaling.type`) ?? 'none';
  if (type === 'none') return { rope_theta: theta, rope_type: 'default' };
  if (type !== 'linear' && type !== 'yarn') throw new CheckpointError(`GGUF rope scaling "${String(type)}" is not read by moe`, { file: g.file, hint: 'moe reads none, linear and yarn' });
  const out: Record<string, unknown> = { rope_theta: theta, rope_type: type, factor: opt('rope.scaling.factor') ?? 1 };
  const original = opt('rope.scaling.original_context_length');
  if (original !== undefined) out.original_max_position_embeddings = original;
  const logMul = opt('rope.scaling.yarn_log_multiplier');
  if (type === 'yarn' && logMul !== undefined && arch === 'deepseek2') {
    // convert_hf_to_gguf.py writes 0.1 × mscale_all_dim; llama.cpp's DeepSeek graph takes mscale equal to it (as in
    // DeepSeek's own configs), so rotary values are unscaled and the attention scale grows by mscale(factor)².
    out.mscale_all_dim = logMul / 0.1;
    out.mscale = logMul / 0.1;
  }
  return out;
}
