/**
 * Phi-3.5-MoE (Microsoft; transformers models/phimoe, PhimoeForCausalLM): Mixtral's names
 * (`block_sparse_moe.gate`, `block_sparse_moe.experts.E.w1/w3/w2`) with
 * - sparsemixer routing (eval): slot 1 the largest router logit, slot 2 the largest of the rest, each weighted by a
 *   softmax over the experts within 2 × router_jitter_noise (relative) of it (forward/moe.ts); top-2 only;
 * - LayerNorms with weight and bias (input_layernorm, post_attention_layernorm, model.norm; eps rms_norm_eps);
 * - q/k/v/o biases (attention_bias), an lm_head bias (lm_head_bias);
 * - longrope rotary: inverse frequencies from the short factors, cos/sin × short_mscale (forward/rope.ts); windows
 *   longer than original_max_position_embeddings are refused (transformers then rescales every position by
 *   long_mscale, which a cached decoder cannot follow).
 * `--recalibrate-router` is refused (its targets are defined for softmax and sigmoid routing).
 * `llama_cpp_phimoe: true` (set by the GGUF reader only) is the model llama.cpp's phimoe runs: softmax top-2 routing,
 * renormalised, and RMSNorms plus bias.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import {
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
  vector,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import { ropeParameters } from './forward/rope';
import { f32, GgufHparams, GgufMapping, GgufScalar, u32 } from './gguf-map';
import { Mixtral } from './mixtral';

const GGUF_ARCH = 'phimoe';

export class Phimoe extends Mixtral {
  override readonly modelType: string = 'phimoe';
  private withBiases?: TensorSpec[];

  constructor(config: Config, dir: string) {
    super(config, dir);
    const c = this.cfg;
    if (this.topK !== 2) throw c.error(`num_experts_per_tok ${this.topK}: PhiMoE's sparsemixer routes to 2 experts`);
    c.requireSilu();
    const rope = ropeParameters(c);
    if (rope.rope_type === 'longrope') {
      const half = this.headDim() / 2;
      const short = rope.short_factor;
      if (!Array.isArray(short) || short.length !== half || short.some((v) => typeof v !== 'number'))
        throw c.error(`rope_parameters.short_factor must be ${half} numbers (head_dim / 2)`);
      if (typeof rope.short_mscale !== 'number') throw c.error('rope_parameters.short_mscale must be a number');
    }
  }

  override get routing(): RoutingRule {
    // a phimoe GGUF file means what llama.cpp runs: softmax top-2, renormalised (phimoeFromGguf)
    if (this.cfg.bool('llama_cpp_phimoe', false)) return softmaxTopK(this.topK, true);
    const jitterEps = this.cfg.num('router_jitter_noise', 0.01);
    return { ...softmaxTopK(this.topK, false), scoring: 'sparsemixer', jitterEps };
  }

  override get layerNorms(): boolean {
    return true;
  }

  override get biasedRmsNorms(): boolean {
    return this.cfg.bool('llama_cpp_phimoe', false);
  }

  override get headBias(): string | undefined {
    return this.cfg.bool('lm_head_bias', false) ? 'lm_head.bias' : undefined;
  }

  override checkWindow(tokens: number): void {
    const rope = ropeParameters(this.cfg);
    const limit = Number(rope.original_max_position_embeddings ?? this.config.original_max_position_embeddings);
    if (rope.rope_type === 'longrope' && tokens > limit)
      throw new CheckpointError(
        `windows of ${tokens} tokens: this PhiMoE's longrope rescales every position past ${limit} tokens`,
        { file: this.dir, hint: `use --seq-len ${limit} or less` },
      );
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const { heads, kvHeads } = this.cfg.heads();
    const bias = this.cfg.bool('attention_bias', false);
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim(), { qkv: bias, o: bias });
  }

  /** Mixtral's tensors plus the LayerNorm biases and the lm_head bias, each after its weight. */
  override schema(): TensorSpec[] {
    if (this.withBiases) return this.withBiases;
    const out: TensorSpec[] = [];
    for (const s of super.schema()) {
      out.push(s);
      const r = s.role;
      if (r.kind === 'norm' && (r.name === 'input_layernorm' || r.name === 'post_attention_layernorm'))
        out.push(vector(s.name.replace(/\.weight$/, '.bias'), this.hidden, { ...r, name: `${r.name}.bias` }));
      else if (r.kind === 'final_norm') out.push(vector('model.norm.bias', this.hidden, r));
      else if (r.kind === 'lm_head' && this.headBias) out.push(vector(this.headBias, this.vocab, r));
    }
    this.withBiases = out;
    return out;
  }

  /**
   * llama.cpp's "phimoe" (convert_hf_to_gguf.py PhiMoeModel, src/models/phi3.cpp): rotate-half rotary as stored,
   * biases for the norms, attention and output, longrope as rope_factors_short/long with short_mscale as
   * rope.scaling.attn_factor. llama.cpp normalises with RMSNorm plus bias where PhiMoE has LayerNorms: every tensor
   * that writes into the residual stream is written with its mean removed (GgufMapping.centerResidual), which leaves
   * the model unchanged and makes the two norms equal. Its routing is a softmax top-2, renormalised, not sparsemixer:
   * warned.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const rope = ropeParameters(this.cfg);
    if (att.headDim * att.heads !== this.hidden)
      throw new CheckpointError(
        `llama.cpp's phimoe needs head_dim = hidden_size / heads; this model's is ${att.headDim}`,
        {
          file: this.dir,
          hint: 'write --format packed or dequantized instead',
        },
      );
    const keys: [string, GgufScalar][] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ['rope.dimension_count', u32(att.headDim)],
    ];
    const warnings = this.cfg.bool('llama_cpp_phimoe', false)
      ? []
      : [
          "llama.cpp routes phimoe with a softmax over all experts, top-2, renormalised; this model's sparsemixer " +
            'weighs the two experts differently (the same experts are chosen), so llama.cpp computes a different model',
        ];
    const computed: { name: string; values: Float32Array }[] = [];
    const type = String(rope.rope_type ?? 'default');
    if (type === 'longrope') {
      const factors = (k: string) => Float32Array.from(rope[k] as number[]);
      const original = Number(rope.original_max_position_embeddings ?? this.config.original_max_position_embeddings);
      keys.push(
        ['rope.scaling.original_context_length', u32(original)],
        ['rope.scaling.attn_factor', f32(Number(rope.short_mscale))],
      );
      if (JSON.stringify(rope.long_factor) !== JSON.stringify(rope.short_factor))
        warnings.push(
          `llama.cpp takes the long rope factors whenever its context size exceeds ${original} tokens (transformers ` +
            `only for sequences that long): run it with a context of ${original} or less`,
        );
      computed.push(
        { name: 'rope_factors_long.weight', values: factors('long_factor') },
        { name: 'rope_factors_short.weight', values: factors('short_factor') },
      );
    } else if (type !== 'default')
      throw new CheckpointError(`GGUF output of PhiMoE with rope_type "${type}" is not supported`, {
        file: this.dir,
        hint: 'default and longrope RoPE are written to GGUF',
      });
    if (this.tieEmbeddings)
      warnings.push("a tied embedding is not centred: llama.cpp's RMSNorm differs from the model's LayerNorms");
    return {
      arch: GGUF_ARCH,
      feedForwardLength: this.expertWidth,
      keys,
      warnings,
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk),
      ownRope: true,
      computed,
      centerResidual: true,
    };
  }
}

/**
 * A phimoe GGUF back to a config of the model llama.cpp runs (llama_cpp_phimoe, a key only this reader sets): PhiMoE
 * with softmax top-2 routing, renormalised, and RMSNorms plus bias (on the centred files moe writes, equal to the
 * LayerNorms), longrope from rope_factors_short/long.
 */
function phimoeFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const rope = c.rope_parameters as Record<string, unknown>;
  const short = h.tensorF32('rope_factors_short.weight');
  const long = h.tensorF32('rope_factors_long.weight');
  const mscale = h.num('rope.scaling.attn_factor', 1);
  Object.assign(c, {
    model_type: 'phimoe',
    architectures: ['PhimoeForCausalLM'],
    num_local_experts: experts,
    intermediate_size: h.num('feed_forward_length'),
    llama_cpp_phimoe: true,
    attention_bias: h.hasTensor('blk.0.attn_q.bias'),
    lm_head_bias: h.hasTensor('output.bias'),
    rope_parameters:
      short && long
        ? {
            rope_type: 'longrope',
            rope_theta: rope.rope_theta,
            short_factor: [...short],
            long_factor: [...long],
            short_mscale: mscale,
            long_mscale: mscale,
            original_max_position_embeddings: h.num('rope.scaling.original_context_length'),
          }
        : { rope_type: 'default', rope_theta: rope.rope_theta },
  });
}

export const phimoe: ArchitectureFamily = {
  modelType: 'phimoe',
  create: (c, d) => new Phimoe(c, d),
  ggufReader: { arch: GGUF_ARCH, normTopKDefault: true, complete: phimoeFromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'phimoe',
    architectures: ['PhimoeForCausalLM'],
    intermediate_size: 32,
    num_local_experts: 8,
    router_jitter_noise: 0.01,
    attention_bias: true,
    lm_head_bias: true,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_type: 'default', rope_theta: 10000 },
  },
};
