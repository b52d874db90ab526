/**
 * What llama.cpp expects of each architecture in a GGUF file: its architecture name, the hyperparameter keys,
 * and the tensor names, with the routed experts of a layer stacked into one tensor per projection
 * (ffn_{gate,up,down}_exps, [experts, out, in]). Names and keys follow llama.cpp's convert_hf_to_gguf.py and
 * gguf-py's constants; Mixtral is llama.cpp's "llama" architecture with experts, and its q/k rows are permuted
 * from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one, as that converter does.
 */
import { CheckpointError } from '../errors';
import type { Architecture, Proj } from '../model/arch';
import { forwardSpec } from '../model/forward/spec';
import type { GgufValue } from './writer';

/** How a GGUF tensor is made from the checkpoint. */
export interface GgufSource {
  name: string;
  /** PyTorch order, outermost first. */
  shape: number[];
  /** HF tensors, stacked along a new first axis when more than one (routed experts). */
  from: string[];
  /** 'norm': 1-D, stays F32; 'router': stays F32; 'weight': takes the quantization type. */
  kind: 'norm' | 'router' | 'weight';
  /** Rows reordered from HF's rotate-half to llama.cpp's interleaved RoPE layout, with this many heads. */
  permuteHeads?: number;
  /** DeepSeek's kv_b_proj split per head into llama.cpp's k_b (transposed) or v_b. */
  splitKvB?: { part: 'k' | 'v'; heads: number; nope: number; v: number };
  layer?: number;
  proj?: Proj | 'attn' | 'embed' | 'output';
}

export interface GgufModel {
  arch: string;
  /** What llama.cpp will run differently from the checkpoint's own model. */
  warnings: string[];
  metadata: [string, GgufValue][];
  tensors: GgufSource[];
}

const ARCH_NAMES: Record<string, string> = { qwen3_moe: 'qwen3moe', qwen2_moe: 'qwen2moe', olmoe: 'olmoe', mixtral: 'llama', deepseek_v2: 'deepseek2', deepseek_v3: 'deepseek2' };

const u32 = (value: number): GgufValue => ({ type: 'u32', value });
const f32 = (value: number): GgufValue => ({ type: 'f32', value });

export function ggufModel(a: Architecture, shapes: Map<string, number[]>): GgufModel {
  const arch = ARCH_NAMES[a.modelType];
  if (!arch) {
    throw new CheckpointError(`GGUF output for ${a.modelType} is not supported yet (supported: ${Object.keys(ARCH_NAMES).join(', ')})`, {
      file: a.dir,
      hint: 'write --format packed or dequantized, then use llama.cpp\'s convert_hf_to_gguf.py',
    });
  }
  const spec = forwardSpec(a);
  const c = a.cfg;
  const rope = spec.rope;
  if (rope.rope_type && rope.rope_type !== 'default' && rope.rope_type !== 'yarn' && rope.rope_type !== 'linear') {
    throw new CheckpointError(`GGUF output with rope_type ${JSON.stringify(rope.rope_type)} is not supported yet`, { file: a.dir, hint: 'default, linear and yarn RoPE are written to GGUF' });
  }
  const k = (name: string) => `${arch}.${name}`;
  const att = spec.attention;
  const warnings: string[] = [];
  const metadata: [string, GgufValue][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.quantization_version', u32(2)],
    [k('context_length'), u32(spec.maxPositions)],
    [k('embedding_length'), u32(a.hidden)],
    [k('block_count'), u32(a.numLayers)],
    [k('feed_forward_length'), u32(a.modelType === 'olmoe' || a.modelType === 'mixtral' ? a.expertWidth : c.int('intermediate_size', a.expertWidth))],
    [k('attention.head_count'), u32(att.heads)],
    [k('rope.freq_base'), f32(Number(rope.rope_theta ?? 10000))],
    [k('attention.layer_norm_rms_epsilon'), f32(spec.eps)],
    [k('expert_count'), u32(a.numExperts)],
    [k('expert_used_count'), u32(a.topK)],
  ];
  if (rope.rope_type === 'yarn' || rope.rope_type === 'linear') {
    metadata.push([k('rope.scaling.type'), { type: 'string', value: String(rope.rope_type) }], [k('rope.scaling.factor'), f32(Number(rope.factor ?? 1))]);
    if (rope.original_max_position_embeddings !== undefined) metadata.push([k('rope.scaling.original_context_length'), u32(Number(rope.original_max_position_embeddings))]);
    // DeepSeek's YaRN scales attention by mscale_all_dim (convert_hf_to_gguf.py: yarn_log_multiplier = 0.1 × mscale_all_dim).
    if (rope.rope_type === 'yarn' && att.kind === 'mla' && rope.mscale_all_dim !== undefined) metadata.push([k('rope.scaling.yarn_log_multiplier'), f32(0.1 * Number(rope.mscale_all_dim))]);
    if (rope.rope_type === 'yarn' && att.kind === 'mla' && rope.mscale_all_dim !== undefined && Number(rope.mscale ?? 1) !== Number(rope.mscale_all_dim)) {
      warnings.push(`GGUF keeps only mscale_all_dim (${rope.mscale_all_dim}) and llama.cpp takes mscale equal to it; this ${a.modelType} has mscale ${rope.mscale ?? 1}, so llama.cpp's rotary scale differs`);
    }
  }
  if (att.kind === 'mla') {
    // llama.cpp runs MLA as multi-query attention over the compressed latent (convert_hf_to_gguf.py's DeepseekV2Model).
    if (!att.interleaved) throw new CheckpointError('GGUF output for DeepSeek needs the interleaved rotary layout (rope_interleave)', { file: a.dir });
    const r = a.routing;
    metadata.push(
      [k('attention.head_count_kv'), u32(1)],
      [k('leading_dense_block_count'), u32(c.int('first_k_dense_replace', 0))],
      [k('attention.q_lora_rank'), u32(att.qLoraRank ?? 0)],
      [k('attention.kv_lora_rank'), u32(att.kvLoraRank)],
      [k('attention.key_length'), u32(att.kvLoraRank + att.ropeDim)],
      [k('attention.value_length'), u32(att.kvLoraRank)],
      [k('attention.key_length_mla'), u32(att.nopeDim + att.ropeDim)],
      [k('attention.value_length_mla'), u32(att.vDim)],
      [k('rope.dimension_count'), u32(att.ropeDim)],
      [k('expert_feed_forward_length'), u32(a.expertWidth)],
      [k('expert_shared_count'), u32(a.sharedExperts)],
      [k('expert_weights_scale'), f32(r.scalingFactor)],
      [k('expert_weights_norm'), { type: 'bool', value: r.normTopK }],
      [k('expert_gating_func'), u32(r.scoring === 'sigmoid' ? 2 : 1)],
    );
    if (r.nGroup > 1) metadata.push([k('expert_group_count'), u32(r.nGroup)], [k('expert_group_used_count'), u32(r.topkGroup)]);
    if (r.nGroup > 1 && r.groupScore !== 'top2sum') warnings.push(`llama.cpp scores routing groups by their two best experts (DeepSeek-V3); this ${a.modelType} scores them by the best one, so llama.cpp may route some tokens differently`);
  } else {
    metadata.push([k('attention.head_count_kv'), u32(att.kvHeads)]);
    if (a.modelType === 'qwen3_moe' || a.modelType === 'qwen2_moe') metadata.push([k('expert_feed_forward_length'), u32(a.expertWidth)]);
    if (a.modelType === 'qwen2_moe' && a.sharedExperts > 0) metadata.push([k('expert_shared_feed_forward_length'), u32(c.int('shared_expert_intermediate_size'))]);
    if (att.headDim * att.heads !== a.hidden || a.modelType === 'qwen3_moe') {
      metadata.push([k('attention.key_length'), u32(att.headDim)], [k('attention.value_length'), u32(att.headDim)]);
    }
    if (a.modelType === 'mixtral') metadata.push([k('rope.dimension_count'), u32(att.headDim)]);
    if (a.modelType === 'olmoe' && att.kvHeads !== att.heads) {
      throw new CheckpointError(`GGUF output for olmoe with grouped-query attention (${att.kvHeads} key/value heads for ${att.heads}) is not supported by llama.cpp, whose OLMoE normalises k over all heads`, { file: a.dir });
    }
  }
  // llama.cpp renormalises the top-k weights of qwen3moe and llama (Mixtral) and never of qwen2moe and olmoe
  // (its build_moe_ffn calls); moe reads the file back the same way (src/gguf/config.ts).
  const llamaNorm: Record<string, boolean> = { qwen3_moe: true, qwen2_moe: false, olmoe: false };
  if (a.modelType in llamaNorm && a.routing.normTopK !== llamaNorm[a.modelType]) {
    warnings.push(`llama.cpp ${llamaNorm[a.modelType] ? 'always' : 'never'} renormalises the top-k routing weights of ${arch}; this model has norm_topk_prob ${a.routing.normTopK}, so llama.cpp weighs the experts differently`);
  }
  if (a.modelType === 'qwen2_moe' && a.moeLayers.length !== a.numLayers) {
    throw new CheckpointError('GGUF output for qwen2_moe with dense layers (mlp_only_layers / decoder_sparse_step) is not supported by llama.cpp', { file: a.dir });
  }

  const tensors: GgufSource[] = [];
  const has = (n: string) => shapes.has(n);
  const one = (name: string, from: string, kind: GgufSource['kind'], extra: Partial<GgufSource> = {}) => {
    if (!has(from)) return;
    let shape = shapes.get(from)!;
    if (kind !== 'norm' && shape.length === 2 && shape[0] === 1 && name.includes('shexp')) shape = [shape[1]]; // shared_expert_gate [1, h] → {h}
    tensors.push({ name, shape, from: [from], kind, ...extra });
  };
  one('token_embd.weight', 'model.embed_tokens.weight', 'weight', { proj: 'embed' });
  for (let l = 0; l < a.numLayers; l++) {
    const p = `model.layers.${l}`;
    const b = `blk.${l}`;
    one(`${b}.attn_norm.weight`, `${p}.input_layernorm.weight`, 'norm', { layer: l });
    if (att.kind === 'mla') {
      const sa = `${p}.self_attn`;
      for (const [hf, gg] of [['q_proj', 'attn_q'], ['q_a_proj', 'attn_q_a'], ['q_b_proj', 'attn_q_b'], ['kv_a_proj_with_mqa', 'attn_kv_a_mqa']]) one(`${b}.${gg}.weight`, `${sa}.${hf}.weight`, 'weight', { layer: l, proj: 'attn' });
      one(`${b}.attn_q_a_norm.weight`, `${sa}.q_a_layernorm.weight`, 'norm', { layer: l });
      one(`${b}.attn_kv_a_norm.weight`, `${sa}.kv_a_layernorm.weight`, 'norm', { layer: l });
      const kvb = `${sa}.kv_b_proj.weight`;
      const split = { heads: att.heads, nope: att.nopeDim, v: att.vDim };
      tensors.push({ name: `${b}.attn_k_b.weight`, shape: [att.heads, att.kvLoraRank, att.nopeDim], from: [kvb], kind: 'weight', layer: l, proj: 'attn', splitKvB: { part: 'k', ...split } });
      tensors.push({ name: `${b}.attn_v_b.weight`, shape: [att.heads, att.vDim, att.kvLoraRank], from: [kvb], kind: 'weight', layer: l, proj: 'attn', splitKvB: { part: 'v', ...split } });
      one(`${b}.attn_output.weight`, `${sa}.o_proj.weight`, 'weight', { layer: l, proj: 'attn' });
    } else {
      for (const [hf, gg] of [['q_proj', 'attn_q'], ['k_proj', 'attn_k'], ['v_proj', 'attn_v'], ['o_proj', 'attn_output']]) {
        const permute = a.modelType === 'mixtral' && (hf === 'q_proj' || hf === 'k_proj') ? (hf === 'q_proj' ? att.heads : att.kvHeads) : undefined;
        one(`${b}.${gg}.weight`, `${p}.self_attn.${hf}.weight`, 'weight', { layer: l, proj: 'attn', permuteHeads: permute });
        one(`${b}.${gg}.bias`, `${p}.self_attn.${hf}.bias`, 'norm', { layer: l });
      }
    }
    one(`${b}.attn_q_norm.weight`, `${p}.self_attn.q_norm.weight`, 'norm', { layer: l });
    one(`${b}.attn_k_norm.weight`, `${p}.self_attn.k_norm.weight`, 'norm', { layer: l });
    one(`${b}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`, 'norm', { layer: l });
    if (a.isMoeLayer(l)) {
      one(`${b}.ffn_gate_inp.weight`, a.routerKey(l), 'router', { layer: l });
      for (const [proj, gg] of [['gate', 'ffn_gate_exps'], ['up', 'ffn_up_exps'], ['down', 'ffn_down_exps']] as [Proj, string][]) {
        const from = [...Array(a.numExperts).keys()].map((e) => a.expertKey(l, e, proj));
        tensors.push({ name: `${b}.${gg}.weight`, shape: [a.numExperts, ...shapes.get(from[0])!], from, kind: 'weight', layer: l, proj });
      }
      const bias = a.correctionBiasKey(l);
      if (bias) one(`${b}.exp_probs_b.bias`, bias, 'norm', { layer: l });
      const s = `${a.moePrefix(l)}.${spec.sharedPrefix}`;
      for (const [proj, gg] of [['gate', 'ffn_gate_shexp'], ['up', 'ffn_up_shexp'], ['down', 'ffn_down_shexp']] as [Proj, string][]) one(`${b}.${gg}.weight`, `${s}.${proj}_proj.weight`, 'weight', { layer: l, proj });
      one(`${b}.ffn_gate_inp_shexp.weight`, `${a.moePrefix(l)}.shared_expert_gate.weight`, 'router', { layer: l });
    } else {
      for (const [proj, gg] of [['gate', 'ffn_gate'], ['up', 'ffn_up'], ['down', 'ffn_down']] as [Proj, string][]) one(`${b}.${gg}.weight`, `${p}.mlp.${proj}_proj.weight`, 'weight', { layer: l, proj });
    }
  }
  one('output_norm.weight', 'model.norm.weight', 'norm');
  one('output.weight', a.tieEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight', 'weight', { proj: 'output' });
  return { arch, metadata, tensors, warnings };
}

/**
 * llama.cpp's q/k row order for "llama" models: within each head, HF keeps the two rotary halves apart
 * (rows 0..d/2 then d/2..d); llama.cpp interleaves them (row 2i from the first half, 2i+1 from the second).
 */
export function permuteRows(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      out.set(w.subarray((h * d + i) * cols, (h * d + i + 1) * cols), (h * d + 2 * i) * cols);
      out.set(w.subarray((h * d + d / 2 + i) * cols, (h * d + d / 2 + i + 1) * cols), (h * d + 2 * i + 1) * cols);
    }
  }
  return out;
}

/** The inverse of permuteRows: llama.cpp's interleaved q/k rows back to HF's rotate-half order. */
export function unpermuteRows(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const d = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < d / 2; i++) {
      out.set(w.subarray((h * d + 2 * i) * cols, (h * d + 2 * i + 1) * cols), (h * d + i) * cols);
      out.set(w.subarray((h * d + 2 * i + 1) * cols, (h * d + 2 * i + 2) * cols), (h * d + d / 2 + i) * cols);
    }
  }
  return out;
}
