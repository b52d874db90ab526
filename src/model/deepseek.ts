/**
 * DeepSeek-V2 and -V3 (transformers models/deepseek_v2, deepseek_v3): MLA attention, shared experts fused into
 * one MLP of width moe_intermediate_size × n_shared_experts, and dense layers below first_k_dense_replace.
 * V2: softmax scores, greedy or group-limited (group = its best expert) top-k, × routed_scaling_factor, no
 * renormalisation (transformers 5 ignores norm_topk_prob for V2). V3: sigmoid scores, e_score_correction_bias
 * added for selection only, groups scored by their best two, renormalised with norm_topk_prob, then
 * × routed_scaling_factor. After removing experts, E must stay divisible by n_group.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import { Architecture, ArchitectureFamily, linear, mlp, RoutingRule, SYNTH_COMMON, TensorSpec, vector } from './arch';
import type { AttentionSpec, MlaSpec } from './forward/attention';
import { f32, GgufAttentionTensor, GgufHparams, GgufMapping, GgufReader, GgufScalar, u32 } from './gguf-map';

function yarnMscale(scale: number, mscale: number): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

export class DeepseekV2 extends Architecture {
  readonly modelType: string = 'deepseek_v2';
  protected readonly expertCountKey = 'n_routed_experts';

  isMoeLayer(layer: number): boolean {
    return layer >= this.cfg.int('first_k_dense_replace', 0);
  }

  get expertWidth(): number {
    return this.cfg.int('moe_intermediate_size');
  }

  get sharedExperts(): number {
    return this.cfg.int('n_shared_experts', 0);
  }

  override get sharedMode(): 'none' | 'gated' | 'plain' {
    return this.sharedExperts > 0 ? 'plain' : 'none';
  }

  override sharedExpertPrefix(layer: number): string {
    return `${this.moePrefix(layer)}.shared_experts`;
  }

  /** Rotary pairs (2i, 2i+1): always for V2, with rope_interleave for V3. */
  protected interleaved(): boolean {
    return true;
  }

  /** Multi-head latent attention. */
  attentionSpec(rope: Record<string, unknown>): AttentionSpec {
    const c = this.cfg;
    const nope = c.int('qk_nope_head_dim');
    const ropeDim = c.int('qk_rope_head_dim');
    let scale = (nope + ropeDim) ** -0.5;
    // transformers' yarn_apply_mscale: for any non-default rope with mscale_all_dim, the scale grows by mscale².
    const mAll = rope.mscale_all_dim as number | undefined;
    if (rope.rope_type !== 'default' && mAll) {
      const m = yarnMscale(Number(rope.factor), mAll);
      scale *= m * m;
    }
    return {
      kind: 'mla',
      heads: c.int('num_attention_heads'),
      qLoraRank: c.optInt('q_lora_rank') || undefined,
      kvLoraRank: c.int('kv_lora_rank'),
      nopeDim: nope,
      ropeDim,
      vDim: c.int('v_head_dim'),
      interleaved: this.interleaved(),
      scale,
      eps: 1e-6, // q_a_layernorm and kv_a_layernorm are built with the default eps
    };
  }

  /** llama.cpp's deepseek2 runs MLA as multi-query attention over the compressed latent (convert_hf_to_gguf.py). */
  override ggufMapping(spec: AttentionSpec, rope: Record<string, unknown>): GgufMapping {
    const att = spec as MlaSpec;
    const keys: [string, GgufScalar][] = [];
    const warnings: string[] = [];
    if (rope.rope_type === 'yarn' && rope.mscale_all_dim !== undefined) {
      // DeepSeek's YaRN scales attention by mscale_all_dim
      // (convert_hf_to_gguf.py: yarn_log_multiplier = 0.1 × mscale_all_dim).
      keys.push(['rope.scaling.yarn_log_multiplier', f32(0.1 * Number(rope.mscale_all_dim))]);
      if (Number(rope.mscale ?? 1) !== Number(rope.mscale_all_dim)) {
        warnings.push(
          `GGUF keeps only mscale_all_dim (${rope.mscale_all_dim}) and llama.cpp takes mscale equal to it; ` +
            `this ${this.modelType} has mscale ${rope.mscale ?? 1}, so llama.cpp's rotary scale differs`,
        );
      }
    }
    if (!att.interleaved) {
      throw new CheckpointError('GGUF output for DeepSeek needs the interleaved rotary layout (rope_interleave)', {
        file: this.dir,
      });
    }
    const r = this.routing;
    keys.push(
      ['attention.head_count_kv', u32(1)],
      ['leading_dense_block_count', u32(this.cfg.int('first_k_dense_replace', 0))],
      ['attention.q_lora_rank', u32(att.qLoraRank ?? 0)],
      ['attention.kv_lora_rank', u32(att.kvLoraRank)],
      ['attention.key_length', u32(att.kvLoraRank + att.ropeDim)],
      ['attention.value_length', u32(att.kvLoraRank)],
      ['attention.key_length_mla', u32(att.nopeDim + att.ropeDim)],
      ['attention.value_length_mla', u32(att.vDim)],
      ['rope.dimension_count', u32(att.ropeDim)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
      ['expert_shared_count', u32(this.sharedExperts)],
      ['expert_weights_scale', f32(r.scalingFactor)],
      ['expert_weights_norm', { type: 'bool', value: r.normTopK }],
      ['expert_gating_func', u32(r.scoring === 'sigmoid' ? 2 : 1)],
    );
    if (r.nGroup > 1) keys.push(['expert_group_count', u32(r.nGroup)], ['expert_group_used_count', u32(r.topkGroup)]);
    if (r.nGroup > 1 && r.groupScore !== 'top2sum') {
      warnings.push(
        `llama.cpp scores routing groups by their two best experts (DeepSeek-V3); this ${this.modelType} scores ` +
          'them by the best one, so llama.cpp may route some tokens differently',
      );
    }
    return {
      arch: 'deepseek2',
      feedForwardLength: this.cfg.int('intermediate_size', this.expertWidth),
      keys,
      warnings,
      attentionTensors: (l, blk) => mlaGgufTensors(att, l, blk),
    };
  }

  /** Groups for group-limited routing (1 when routing is not grouped). */
  get nGroup(): number {
    return this.grouped() ? this.cfg.int('n_group', 1) : 1;
  }

  protected grouped(): boolean {
    return this.cfg.str('topk_method', 'greedy') === 'group_limited_greedy';
  }

  get routing(): RoutingRule {
    return {
      scoring: 'softmax',
      topK: this.topK,
      normTopK: false,
      nGroup: this.nGroup,
      topkGroup: this.grouped() ? this.cfg.int('topk_group', 1) : 1,
      groupScore: 'max',
      groupMask: 'zero',
      scalingFactor: this.cfg.num('routed_scaling_factor', 1),
      correctionBias: false,
      logitBias: false,
    };
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const c = this.cfg;
    const h = this.hidden;
    const heads = c.int('num_attention_heads');
    const nope = c.int('qk_nope_head_dim');
    const rope = c.int('qk_rope_head_dim');
    const vDim = c.int('v_head_dim');
    const kvRank = c.int('kv_lora_rank');
    const qRank = c.optInt('q_lora_rank');
    const bias = c.bool('attention_bias', false);
    const p = `model.layers.${layer}.self_attn`;
    const attn = (name: string) => ({ kind: 'attn' as const, layer, name });
    const attnBias = (name: string) => ({ kind: 'attn' as const, layer, name, bias: true });
    const norm = (name: string) => ({ kind: 'norm' as const, layer, name });
    const out: TensorSpec[] = [];
    if (qRank === undefined || qRank === 0) {
      out.push(linear(`${p}.q_proj.weight`, heads * (nope + rope), h, attn('q_proj')));
    } else {
      out.push(linear(`${p}.q_a_proj.weight`, qRank, h, attn('q_a_proj')));
      if (bias) out.push(vector(`${p}.q_a_proj.bias`, qRank, attnBias('q_a_proj')));
      out.push(vector(`${p}.q_a_layernorm.weight`, qRank, norm('q_a_layernorm')));
      out.push(linear(`${p}.q_b_proj.weight`, heads * (nope + rope), qRank, attn('q_b_proj')));
    }
    out.push(linear(`${p}.kv_a_proj_with_mqa.weight`, kvRank + rope, h, attn('kv_a_proj_with_mqa')));
    if (bias) out.push(vector(`${p}.kv_a_proj_with_mqa.bias`, kvRank + rope, attnBias('kv_a_proj_with_mqa')));
    out.push(vector(`${p}.kv_a_layernorm.weight`, kvRank, norm('kv_a_layernorm')));
    out.push(linear(`${p}.kv_b_proj.weight`, heads * (nope + vDim), kvRank, attn('kv_b_proj')));
    out.push(linear(`${p}.o_proj.weight`, h, heads * vDim, attn('o_proj')));
    if (bias) out.push(vector(`${p}.o_proj.bias`, h, attnBias('o_proj')));
    return out;
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    if (!this.isMoeLayer(layer)) return this.denseMlp(layer);
    const out = [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
    const bias = this.correctionBiasKey(layer);
    if (bias) out.push(vector(bias, this.numExperts, { kind: 'router_bias', layer }));
    if (this.sharedExperts > 0) {
      const width = this.expertWidth * this.sharedExperts;
      out.push(...mlp(this.sharedExpertPrefix(layer), this.hidden, width, (proj) => ({ kind: 'shared', layer, proj })));
    }
    return out;
  }

  protected denseMlp(layer: number): TensorSpec[] {
    const p = `model.layers.${layer}.mlp`;
    const specs = mlp(p, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({
      kind: 'dense_mlp',
      layer,
      proj,
    }));
    if (!this.cfg.bool('mlp_bias', false)) return specs;
    const withBias: TensorSpec[] = [];
    for (const s of specs) {
      withBias.push(
        s,
        vector(s.name.replace(/\.weight$/, '.bias'), s.shape[0], {
          ...(s.role as { kind: 'dense_mlp'; layer: number; proj: 'gate' }),
          bias: true,
        }),
      );
    }
    return withBias;
  }
}

export class DeepseekV3 extends DeepseekV2 {
  override readonly modelType: string = 'deepseek_v3';

  protected override grouped(): boolean {
    return true;
  }

  protected override interleaved(): boolean {
    return this.cfg.bool('rope_interleave', true);
  }

  override get routing(): RoutingRule {
    return {
      scoring: 'sigmoid',
      topK: this.topK,
      normTopK: this.cfg.bool('norm_topk_prob', true),
      nGroup: this.cfg.int('n_group', 1),
      topkGroup: this.cfg.int('topk_group', 1),
      groupScore: 'top2sum',
      groupMask: 'neg_inf',
      scalingFactor: this.cfg.num('routed_scaling_factor', 1),
      correctionBias: true,
      logitBias: false,
    };
  }

  override correctionBiasKey(layer: number): string {
    return `${this.moePrefix(layer)}.gate.e_score_correction_bias`;
  }

  protected override denseMlp(layer: number): TensorSpec[] {
    return mlp(`model.layers.${layer}.mlp`, this.hidden, this.cfg.int('intermediate_size'), (proj) => ({
      kind: 'dense_mlp',
      layer,
      proj,
    }));
  }
}

/** llama.cpp's MLA tensors: kv_b_proj split per head into k_b (transposed) and v_b. */
export function mlaGgufTensors(att: MlaSpec, layer: number, blk: string): GgufAttentionTensor[] {
  const sa = `model.layers.${layer}.self_attn`;
  const out: GgufAttentionTensor[] = [];
  const names = [
    ['q_proj', 'attn_q'],
    ['q_a_proj', 'attn_q_a'],
    ['q_b_proj', 'attn_q_b'],
    ['kv_a_proj_with_mqa', 'attn_kv_a_mqa'],
  ];
  for (const [hf, gg] of names) {
    out.push({ name: `${blk}.${gg}.weight`, from: `${sa}.${hf}.weight`, kind: 'weight' });
  }
  out.push({ name: `${blk}.attn_q_a_norm.weight`, from: `${sa}.q_a_layernorm.weight`, kind: 'norm' });
  out.push({ name: `${blk}.attn_kv_a_norm.weight`, from: `${sa}.kv_a_layernorm.weight`, kind: 'norm' });
  const kvb = `${sa}.kv_b_proj.weight`;
  const split = { heads: att.heads, nope: att.nopeDim, v: att.vDim };
  const kShape = [att.heads, att.kvLoraRank, att.nopeDim];
  const vShape = [att.heads, att.vDim, att.kvLoraRank];
  out.push({
    name: `${blk}.attn_k_b.weight`,
    shape: kShape,
    from: kvb,
    kind: 'weight',
    splitKvB: { ...split, part: 'k' },
  });
  out.push({
    name: `${blk}.attn_v_b.weight`,
    shape: vShape,
    from: kvb,
    kind: 'weight',
    splitKvB: { ...split, part: 'v' },
  });
  out.push({ name: `${blk}.attn_output.weight`, from: `${sa}.o_proj.weight`, kind: 'weight' });
  return out;
}

/** deepseek2 back to a config: softmax gating is V2, sigmoid (expert_gating_func 2) V3. Only the current MLA layout. */
export function deepseekFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const heads = c.num_attention_heads as number;
  const ropeDim = h.num('rope.dimension_count');
  const kMla = h.opt('attention.key_length_mla');
  if (kMla === undefined || h.tensorNames().some((n) => n.endsWith('.attn_kv_b.weight'))) {
    throw new CheckpointError(
      'this deepseek2 GGUF has the older layout (attn_kv_b, no key_length_mla), which moe does not read',
      {
        file: h.file,
        hint: 'write it again with moe quantize --format gguf or a current convert_hf_to_gguf.py',
      },
    );
  }
  const sigmoid = h.num('expert_gating_func', 1) === 2;
  const groups = h.num('expert_group_count', 1);
  const qRank = h.num('attention.q_lora_rank', 0);
  Object.assign(c, {
    model_type: sigmoid ? 'deepseek_v3' : 'deepseek_v2',
    num_key_value_heads: heads,
    n_routed_experts: experts,
    n_shared_experts: h.num('expert_shared_count', 0),
    first_k_dense_replace: h.num('leading_dense_block_count', 0),
    intermediate_size: h.num('feed_forward_length'),
    moe_intermediate_size: h.num('expert_feed_forward_length'),
    q_lora_rank: qRank > 0 ? qRank : null,
    kv_lora_rank: h.num('attention.kv_lora_rank'),
    qk_rope_head_dim: ropeDim,
    qk_nope_head_dim: kMla - ropeDim,
    v_head_dim: h.num('attention.value_length_mla'),
    routed_scaling_factor: h.num('expert_weights_scale', 1),
    n_group: groups,
    topk_group: h.num('expert_group_used_count', 1),
    topk_method: sigmoid ? 'noaux_tc' : groups > 1 ? 'group_limited_greedy' : 'greedy',
    rope_interleave: true,
    attention_bias: false,
  });
  const rope = c.rope_parameters as Record<string, unknown>;
  const logMul = h.opt('rope.scaling.yarn_log_multiplier');
  if (rope.rope_type === 'yarn' && logMul !== undefined) {
    // convert_hf_to_gguf.py writes 0.1 × mscale_all_dim; llama.cpp's DeepSeek graph takes mscale equal to it (as in
    // DeepSeek's own configs), so rotary values are unscaled and the attention scale grows by mscale(factor)².
    rope.mscale_all_dim = logMul / 0.1;
    rope.mscale = logMul / 0.1;
  }
}

const deepseekReader: GgufReader = { arch: 'deepseek2', normTopKDefault: false, complete: deepseekFromGguf };

/** Preset keys V2 and V3 share (after SYNTH_COMMON, model_type and architectures). */
const DEEPSEEK_COMMON: Config = {
  num_hidden_layers: 3,
  num_key_value_heads: 4,
  intermediate_size: 96,
  moe_intermediate_size: 32,
  n_routed_experts: 8,
  n_shared_experts: 1,
  first_k_dense_replace: 1,
};

export const deepseekV2: ArchitectureFamily = {
  modelType: 'deepseek_v2',
  create: (c, d) => new DeepseekV2(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'deepseek_v2',
    architectures: ['DeepseekV2ForCausalLM'],
    ...DEEPSEEK_COMMON,
    q_lora_rank: null,
    kv_lora_rank: 32,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    v_head_dim: 16,
    topk_method: 'group_limited_greedy',
    n_group: 4,
    topk_group: 2,
    routed_scaling_factor: 1.0,
    rope_theta: 1e4,
  },
  ggufReader: deepseekReader,
};

export const deepseekV3: ArchitectureFamily = {
  modelType: 'deepseek_v3',
  create: (c, d) => new DeepseekV3(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'deepseek_v3',
    architectures: ['DeepseekV3ForCausalLM'],
    ...DEEPSEEK_COMMON,
    q_lora_rank: 24,
    kv_lora_rank: 32,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    v_head_dim: 16,
    n_group: 2,
    topk_group: 1,
    norm_topk_prob: true,
    routed_scaling_factor: 2.5,
    rope_theta: 1e4,
  },
  ggufReader: deepseekReader,
};
