/**
 * MiniMax-M2 / M2.1 (transformers models/minimax_m2): every layer sparse, Mixtral's tensor names
 * (`block_sparse_moe.gate`, `block_sparse_moe.experts.E.w1/w3/w2` for gate/up/down), no shared expert.
 * - Routing (MiniMaxM2TopKRouter): sigmoid of the router logits over all experts; the top-k is chosen on
 *   sigmoid + `block_sparse_moe.e_score_correction_bias` (a module buffer beside the gate, not under it), the
 *   weights are the unbiased sigmoids of the chosen experts, always renormalised to sum 1, no scaling.
 * - Attention: grouped-query, no biases; q_norm / k_norm are RMSNorms over the whole q and k projections
 *   (qk_norm_type "per_layer": weights of heads × head_dim and kv_heads × head_dim, as OLMoE's), applied before
 *   the head split; rotate-half RoPE on the first rotary dims of each head. transformers 5.18 takes
 *   rope_parameters.partial_rotary_factor, else partial_rotary_factor, else the released checkpoints' legacy
 *   `rotary_dim` / head_dim (MiniMax-M2: 64 of 128).
 * - Multi-token prediction (use_mtp, num_mtp_modules): transformers builds no MTP module; the config keys are kept
 *   and tensors outside this schema (an MTP module's, if a checkpoint holds them) are copied as they are.
 * GGUF: llama.cpp's `minimax-m2` (convert_hf_to_gguf.py MiniMaxM2Model): experts stacked, q/k not permuted (NEOX
 * rotary), rope.dimension_count = the rotary dims, the selection bias as exp_probs_b, sigmoid gating.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  linear,
  Proj,
  RoutingRule,
  SYNTH_COMMON,
  TensorSpec,
  vector,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { GgufHparams, GgufMapping, headLengthKeys, u32 } from './gguf-map';

const MINIMAX_PROJ: Record<Proj, string> = { gate: 'w1', up: 'w3', down: 'w2' };
const GGUF_ARCH = 'minimax-m2';
/** llama.cpp's llama_expert_gating_func_type: 2 is sigmoid. */
const GGUF_GATING_SIGMOID = 2;

export class MinimaxM2 extends Architecture {
  readonly modelType: string = 'minimax_m2';
  protected readonly expertCountKey: string = 'num_local_experts';

  constructor(config: Config, dir: string) {
    super(config, dir);
    const c = this.cfg;
    // Variants transformers' MiniMaxM2 does not build: refused rather than run differently.
    if (c.str('scoring_func', 'sigmoid') !== 'sigmoid')
      throw c.error(`scoring_func "${c.str('scoring_func', '')}" is not MiniMax-M2's sigmoid routing`);
    if (c.bool('use_qk_norm', true) === false || c.str('qk_norm_type', 'per_layer') !== 'per_layer')
      throw c.error('MiniMax-M2 without its per_layer q/k norm (use_qk_norm / qk_norm_type) is not supported');
    if (c.num('shared_intermediate_size', 0) > 0)
      throw c.error('shared_intermediate_size > 0: MiniMax-M2 as transformers builds it has no shared expert');
    this.rotaryDim(); // checked before any tensor is read
  }

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
    return {
      scoring: 'sigmoid',
      topK: this.topK,
      normTopK: true,
      nGroup: 1,
      topkGroup: 1,
      groupScore: 'max',
      groupMask: 'neg_inf',
      scalingFactor: 1,
      correctionBias: true,
      logitBias: false,
    };
  }

  override moePrefix(layer: number): string {
    return `model.layers.${layer}.block_sparse_moe`;
  }

  override projName(p: Proj): string {
    return MINIMAX_PROJ[p];
  }

  override correctionBiasKey(layer: number): string {
    return `${this.moePrefix(layer)}.e_score_correction_bias`;
  }

  headDim(): number {
    return this.cfg.headDim(this.hidden);
  }

  /** Rotated dims per head, by transformers 5.18's precedence (see the header). */
  rotaryDim(): number {
    const c = this.cfg;
    const rope = (this.config.rope_parameters ?? {}) as Record<string, unknown>;
    const d = this.headDim();
    let factor = 1;
    if (typeof rope.partial_rotary_factor === 'number') factor = rope.partial_rotary_factor;
    else if (c.has('partial_rotary_factor')) factor = c.num('partial_rotary_factor');
    else if (c.has('rotary_dim')) factor = c.int('rotary_dim') / d;
    const dim = Math.floor(d * factor);
    if (dim < 2 || dim > d || dim % 2 !== 0)
      throw c.error(`the rotary dimension ${dim} is not an even number between 2 and head_dim ${d}`);
    return dim;
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads: kv } = this.cfg.heads();
    const hd = this.headDim();
    const p = `model.layers.${layer}.self_attn`;
    return [
      ...gqaAttention(layer, this.hidden, heads, kv, hd, { qkv: false, o: false }),
      vector(`${p}.q_norm.weight`, heads * hd, { kind: 'norm', layer, name: 'q_norm' }),
      vector(`${p}.k_norm.weight`, kv * hd, { kind: 'norm', layer, name: 'k_norm' }),
    ];
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [
      linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer }),
      vector(this.correctionBiasKey(layer), this.numExperts, { kind: 'router_bias', layer }),
    ];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'full', eps), ropeDim: this.rotaryDim() };
  }

  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.expertWidth,
      keys: [
        ['attention.head_count_kv', u32(att.kvHeads)],
        ...headLengthKeys(att.headDim),
        ['rope.dimension_count', u32(att.ropeDim ?? att.headDim)],
        ['expert_feed_forward_length', u32(this.expertWidth)],
        ['expert_gating_func', u32(GGUF_GATING_SIGMOID)],
      ],
      warnings: [],
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
    };
  }
}

/** A minimax-m2 GGUF file back to a config.json: what llama.cpp runs. */
function minimaxFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const gating = h.num('expert_gating_func', GGUF_GATING_SIGMOID);
  if (gating !== GGUF_GATING_SIGMOID)
    throw new CheckpointError(`minimax-m2 with expert_gating_func ${gating} (not sigmoid) is not read by moe`, {
      file: h.file,
      hint: 'MiniMax-M2 routes by sigmoid scores (expert_gating_func 2)',
    });
  if (!h.hasTensor('blk.0.exp_probs_b.bias'))
    throw new CheckpointError('the minimax-m2 GGUF file has no blk.0.exp_probs_b.bias (the selection bias)', {
      file: h.file,
      hint: 'the file is incomplete or was not written for llama.cpp',
    });
  const headDim = h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads));
  Object.assign(c, {
    model_type: 'minimax_m2',
    architectures: ['MiniMaxM2ForCausalLM'],
    num_local_experts: experts,
    intermediate_size: h.num('expert_feed_forward_length'),
    head_dim: headDim,
    rotary_dim: h.num('rope.dimension_count', headDim),
  });
}

export const minimaxM2: ArchitectureFamily = {
  modelType: 'minimax_m2',
  create: (c, d) => new MinimaxM2(c, d),
  ggufPreTokenizer: 'minimax-m2',
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: true, complete: minimaxFromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'minimax_m2',
    architectures: ['MiniMaxM2ForCausalLM'],
    head_dim: 32, // heads × head_dim (128) ≠ hidden (64), as in MiniMax-M2 (48 × 128 vs 3072)
    intermediate_size: 32,
    num_local_experts: 8,
    rotary_dim: 16,
    rope_theta: 5e6,
    qk_norm_type: 'per_layer',
    use_qk_norm: true,
    scoring_func: 'sigmoid',
    use_routing_bias: true,
    shared_intermediate_size: 0,
  },
};
