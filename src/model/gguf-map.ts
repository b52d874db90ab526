/**
 * The plain data an architecture gives the GGUF writer and reader (src/gguf/arch.ts, src/gguf/config.ts): its
 * llama.cpp architecture name, hyperparameter keys, attention tensor names, and the reverse direction from
 * metadata back to config.json keys. Data only: the model layer does not import the GGUF code.
 */
import type { Config } from '../io/checkpoint';

/** A GGUF metadata value an architecture writes (cases of src/gguf/writer's GgufValue): a scalar or a short array. */
export type GgufScalar =
  | { type: 'u32' | 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; of: 'i32' | 'u32' | 'bool'; value: (number | boolean)[] };

export const u32 = (value: number): GgufScalar => ({ type: 'u32', value });
export const f32 = (value: number): GgufScalar => ({ type: 'f32', value });

/** attention.key_length and value_length, written when a head is not hidden / heads wide. */
export const headLengthKeys = (headDim: number): [string, GgufScalar][] => [
  ['attention.key_length', u32(headDim)],
  ['attention.value_length', u32(headDim)],
];

export type GgufProj = 'gate' | 'up' | 'down' | 'attn' | 'embed' | 'output';

/**
 * Values moved or changed on the way from the checkpoint to llama.cpp's layout (applied by src/gguf/load.ts,
 * undone by src/gguf/source.ts). The HF tensor is seen as rows × its last axis (a vector: one value per row).
 */
export interface GgufTransform {
  /** GGUF row i is HF row rows[i] (a subset: one HF tensor split into several GGUF tensors; or a reordering). */
  rows?: number[];
  /** GGUF column j is HF column cols[j]. */
  cols?: number[];
  /** Added to every value: zero-centred RMSNorm weights stored as 1 + w, as convert_hf_to_gguf.py does. */
  add?: number;
  /** −exp(value): Gated DeltaNet's A_log stored as llama.cpp's ssm_a. */
  negExp?: boolean;
  /**
   * Mean removed along the hidden axis of what the tensor writes into the residual stream: 'rows' subtracts from
   * each column its mean over the rows (o_proj, down_proj [hidden, in] and their biases), 'cols' from each row its
   * mean (an embedding row). Under LayerNorms the residual's mean is never read, so the model is unchanged and
   * llama.cpp's RMSNorm then equals the LayerNorm (PhiMoE). Not undone when read back: the values are an
   * equivalent model.
   */
  center?: 'rows' | 'cols';
}

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
  transform?: GgufTransform;
  layer?: number;
  proj?: GgufProj;
  /** A tensor computed from the config, not read (llama.cpp's rope_freqs); `from` is empty, kind 'norm'. */
  values?: Float32Array;
}

/**
 * One attention tensor of a layer: written when the checkpoint holds `from` (with its shape), or always when
 * `shape` is given (a tensor made from another, as DeepSeek's k_b and v_b from kv_b_proj).
 */
export interface GgufAttentionTensor {
  name: string;
  from: string;
  kind: GgufSource['kind'];
  shape?: number[];
  permuteHeads?: number;
  splitKvB?: GgufSource['splitKvB'];
  transform?: GgufTransform;
}

/** What an architecture writes to GGUF beyond the common keys and tensors (src/gguf/arch.ts). */
export interface GgufMapping {
  /** llama.cpp's architecture name, the prefix of its keys. */
  arch: string;
  /** `<arch>.feed_forward_length`. */
  feedForwardLength: number;
  /** Keys after the common ones and the rope scaling ones, without the `<arch>.` prefix, in the order written. */
  keys: [string, GgufScalar][];
  /** What llama.cpp will run differently from the checkpoint's own model. */
  warnings: string[];
  /** The attention tensors of one layer (between attn_norm and attn_q_norm), in the order written. */
  attentionTensors(layer: number, blk: string): GgufAttentionTensor[];
  /** llama.cpp's name of post_attention_layernorm (`ffn_norm` unless given; gpt-oss: `post_attention_norm`). */
  postAttentionNorm?: string;
  /**
   * The rotary's scaling is written by the mapping itself (keys and `computed` tensors: Llama 4's llama3 factors,
   * PhiMoE's longrope), so the common writer accepts its rope_type.
   */
  ownRope?: boolean;
  /** F32 tensors computed from the config, written before the others (rope_freqs, rope_factors_short/long). */
  computed?: { name: string; values: Float32Array }[];
  /** Remove the residual stream's mean from every tensor that writes into it (GgufTransform.center; PhiMoE). */
  centerResidual?: boolean;
}

/** A GGUF file's `<arch>.*` metadata as the reverse mapping reads it (src/gguf/config.ts supplies it). */
export interface GgufHparams {
  file: string;
  arch: string;
  /** A number, or undefined when absent (not a number: CheckpointError). */
  opt(key: string): number | undefined;
  /** A number, the fallback when absent, else CheckpointError. */
  num(key: string, fallback?: number): number;
  bool(key: string, fallback: boolean): boolean;
  /** An array value, or undefined when absent. */
  array(key: string): unknown[] | undefined;
  hasTensor(name: string): boolean;
  tensorShape(name: string): number[] | undefined;
  tensorNames(): string[];
  /** The values of a small F32 tensor (rope factors), or undefined when absent; another type: CheckpointError. */
  tensorF32(name: string): Float32Array | undefined;
}

/** Reading a GGUF file of one llama.cpp architecture back into a config.json. */
export interface GgufReader {
  arch: string;
  /** llama.cpp's default for renormalising the selected experts' weights (its build_moe_ffn calls). */
  normTopKDefault: boolean;
  /**
   * Adds this family's keys (model_type, expert count key, widths...) to `c`, which holds the common ones
   * (hidden_size, layers, heads, vocab, rope_parameters...). `experts`: `<arch>.expert_count`.
   */
  complete(h: GgufHparams, c: Config, experts: number): void;
}
