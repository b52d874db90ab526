/**
 * Qwen3-Next (transformers models/qwen3_next): hybrid layers. `layer_types` (default: every
 * full_attention_interval-th layer full, the others linear) names each layer's token mixer:
 * - "linear_attention": Gated DeltaNet under `linear_attn.` (in_proj_qkvz, in_proj_ba, conv1d [C, 1, K], A_log,
 *   dt_bias, the gated norm norm.weight [value head dim], out_proj); src/model/forward/deltanet.ts has the rules.
 * - "full_attention": GQA under `self_attn.` whose q_proj gives per head [query | output gate] (2 · head_dim rows
 *   per head): attention · sigmoid(gate) before o_proj; per-head q/k RMSNorm; rotary on the first
 *   partial_rotary_factor (default 0.25) of each head, rotate-half.
 * Every RMSNorm but the gated one (input/post-attention/final/q/k) multiplies by (1 + weight): zero-centred weights.
 * MoE as Qwen2-MoE: softmax top-k (renormalised: norm_topk_prob defaults to true), a shared expert scaled by
 * sigmoid(shared_expert_gate); dense layers where mlp_only_layers / decoder_sparse_step say so.
 *
 * moe quantizes the 2-D projections (in_proj_qkvz, in_proj_ba, out_proj, q/k/v/o_proj) as attention linears, and
 * calibration observes their inputs; conv1d, A_log, dt_bias and the norms are kept as they are.
 */
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import {
  ArchitectureFamily,
  gqaGgufTensors,
  linear,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
  vector,
} from './arch';
import type { AttentionSpec, GqaSpec } from './forward/attention';
import type { DeltaNetSpec } from './forward/deltanet';
import { GgufAttentionTensor, GgufHparams, GgufMapping, GgufScalar, headLengthKeys, u32 } from './gguf-map';
import { Qwen2Moe } from './qwen2-moe';

export class Qwen3Next extends Qwen2Moe {
  override readonly modelType: string = 'qwen3_next';

  override isMoeLayer(layer: number): boolean {
    return this.numExperts > 0 && super.isMoeLayer(layer);
  }

  override get routing(): RoutingRule {
    return softmaxTopK(this.topK, this.cfg.bool('norm_topk_prob', true));
  }

  override get normOffset(): number {
    return 1;
  }

  protected override headDim(): number {
    return this.cfg.int('head_dim', 256);
  }

  /** transformers' default: linear attention but on every full_attention_interval-th layer (1-based). */
  layerType(layer: number): string {
    const types = this.config.layer_types;
    if (Array.isArray(types) && typeof types[layer] === 'string') return types[layer] as string;
    const interval = this.cfg.int('full_attention_interval', 4);
    return (layer + 1) % interval === 0 ? 'full_attention' : 'linear_attention';
  }

  override linearAttention(layer: number): DeltaNetSpec | undefined {
    return this.layerType(layer) === 'linear_attention' ? this.deltaNetSpec() : undefined;
  }

  /** The Gated DeltaNet's sizes (the same on every linear layer). */
  protected deltaNetSpec(): DeltaNetSpec {
    return {
      kind: 'gated_deltanet',
      keyHeads: this.cfg.int('linear_num_key_heads', 16),
      valueHeads: this.cfg.int('linear_num_value_heads', 32),
      keyDim: this.cfg.int('linear_key_head_dim', 128),
      valueDim: this.cfg.int('linear_value_head_dim', 128),
      convKernel: this.cfg.int('linear_conv_kernel_dim', 4),
      eps: this.cfg.num('rms_norm_eps', 1e-6),
    };
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const h = this.hidden;
    const lin = this.linearAttention(layer);
    if (lin) {
      const p = `model.layers.${layer}.linear_attn`;
      const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv, convKernel: K } = lin;
      const role = (name: string) => ({ kind: 'attn' as const, layer, name });
      const C = 2 * Hk * dk + Hv * dv;
      return [
        linear(`${p}.in_proj_qkvz.weight`, 2 * Hk * dk + 2 * Hv * dv, h, role('in_proj_qkvz')),
        linear(`${p}.in_proj_ba.weight`, 2 * Hv, h, role('in_proj_ba')),
        { name: `${p}.conv1d.weight`, shape: [C, 1, K], role: role('conv1d') },
        vector(`${p}.A_log`, Hv, role('A_log')),
        vector(`${p}.dt_bias`, Hv, role('dt_bias')),
        vector(`${p}.norm.weight`, dv, role('norm')),
        linear(`${p}.out_proj.weight`, h, Hv * dv, role('out_proj')),
      ];
    }
    const p = `model.layers.${layer}.self_attn`;
    const { heads, kvHeads: kv } = this.cfg.heads();
    const d = this.headDim();
    const bias = this.cfg.bool('attention_bias', false);
    const out: TensorSpec[] = [];
    const dims: [string, number, number][] = [
      ['q_proj', 2 * heads * d, h],
      ['k_proj', kv * d, h],
      ['v_proj', kv * d, h],
      ['o_proj', h, heads * d],
    ];
    for (const [name, o, i] of dims) {
      out.push(linear(`${p}.${name}.weight`, o, i, { kind: 'attn', layer, name }));
      if (bias) out.push(vector(`${p}.${name}.bias`, o, { kind: 'attn', layer, name, bias: true }));
    }
    out.push(vector(`${p}.q_norm.weight`, d, { kind: 'norm', layer, name: 'q_norm' }));
    out.push(vector(`${p}.k_norm.weight`, d, { kind: 'norm', layer, name: 'k_norm' }));
    return out;
  }

  override attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return { ...this.gqaSpec(this.headDim(), 'head', eps), outputGate: true };
  }

  /** llama.cpp's architecture name. */
  protected get ggufArch(): string {
    return 'qwen3next';
  }

  /**
   * llama.cpp's qwen3next (convert_hf_to_gguf.py Qwen3NextModel; src/models/qwen3next.cpp): the ssm.* sizes of the
   * Gated DeltaNet, which layers are linear (full_attention_interval), the rotary dimension count, the shared
   * expert's width; the zero-centred norms stored as 1 + w (src/gguf/arch.ts), the gated norm as it is.
   */
  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const arch = this.ggufArch;
    const lin = this.deltaNetSpec();
    this.checkGguf(lin);
    const keys: GgufMapping['keys'] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ['expert_feed_forward_length', u32(this.expertWidth)],
      ['expert_shared_feed_forward_length', u32(this.cfg.int('shared_expert_intermediate_size'))],
      ...headLengthKeys(att.headDim),
      ['rope.dimension_count', u32(Math.floor(att.headDim * this.cfg.num('partial_rotary_factor', 1)))],
      ...ssmKeys(lin),
      this.layerTypesKey(),
      ...this.extraGgufKeys(),
    ];
    return {
      arch,
      feedForwardLength: this.cfg.int('intermediate_size', this.expertWidth),
      keys,
      warnings: this.normTopKWarnings(arch, true),
      attentionTensors: (l, blk) => {
        const s = this.linearAttention(l);
        return s ? this.linearGgufTensors(l, blk, s) : gqaGgufTensors(l, blk);
      },
      postAttentionNorm: 'post_attention_norm',
    };
  }

  /** What llama.cpp's loader cannot run: a dense layer, no shared expert, key and value heads of different sizes. */
  private checkGguf(lin: DeltaNetSpec): void {
    const refuse = (why: string) =>
      new CheckpointError(`GGUF output for ${this.modelType} ${why}, which llama.cpp's ${this.ggufArch} cannot run`, {
        file: this.dir,
        hint: 'write safetensors (the default output)',
      });
    if (this.moeLayers.length !== this.numLayers) throw refuse('with dense layers (mlp_only_layers)');
    if (this.sharedExperts === 0) throw refuse('without a shared expert');
    if (lin.keyDim !== lin.valueDim)
      throw refuse(`with linear_key_head_dim ${lin.keyDim} ≠ linear_value_head_dim ${lin.valueDim}`);
  }

  /**
   * llama.cpp makes layer l linear when (l + 1) % full_attention_interval ≠ 0; layer_types that follow no such
   * interval are written as attention.recurrent_layers (one flag per layer).
   */
  private layerTypesKey(): [string, GgufScalar] {
    const linear = [...Array(this.numLayers).keys()].map((l) => this.layerType(l) === 'linear_attention');
    const intervals = [...Array(this.numLayers + 1).keys()].map((p) => p + 1);
    const interval = intervals.find((p) => linear.every((x, l) => x === ((l + 1) % p !== 0)));
    if (interval !== undefined) return ['full_attention_interval', u32(interval)];
    return ['attention.recurrent_layers', { type: 'array', of: 'bool', value: linear }];
  }

  /** Keys of Qwen3.5-MoE's qwen35moe beyond qwen3next's. */
  protected extraGgufKeys(): [string, GgufScalar][] {
    return [];
  }

  /**
   * A linear-attention layer's tensors: in_proj_qkvz (per key head [q | k | v | z]) split into attn_qkv (the conv's
   * channel order [q of every head | k | v]) and attn_gate (z), in_proj_ba as ssm_ba, conv1d [C, 1, K] as [C, K],
   * dt_bias as ssm_dt.bias, A_log as ssm_a = −exp(A_log), the gated norm as ssm_norm, out_proj as ssm_out.
   */
  protected linearGgufTensors(l: number, blk: string, s: DeltaNetSpec): GgufAttentionTensor[] {
    const p = `model.layers.${l}.linear_attn`;
    const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = s;
    const r = Hv / Hk;
    const group = 2 * dk + 2 * r * dv;
    const rows = (offset: number, n: number) =>
      [...Array(Hk).keys()].flatMap((g) => [...Array(n).keys()].map((i) => g * group + offset + i));
    const qkv = [...rows(0, dk), ...rows(dk, dk), ...rows(2 * dk, r * dv)];
    return [
      {
        name: `${blk}.attn_qkv.weight`,
        from: `${p}.in_proj_qkvz.weight`,
        kind: 'weight',
        shape: [qkv.length, this.hidden],
        transform: { rows: qkv },
      },
      {
        name: `${blk}.attn_gate.weight`,
        from: `${p}.in_proj_qkvz.weight`,
        kind: 'weight',
        shape: [Hv * dv, this.hidden],
        transform: { rows: rows(2 * dk + r * dv, r * dv) },
      },
      ...this.deltaNetTensors(l, blk, s),
      { name: `${blk}.ssm_ba.weight`, from: `${p}.in_proj_ba.weight`, kind: 'weight' },
    ];
  }

  /** conv1d, dt_bias, A_log, the gated norm and out_proj (Qwen3.5-MoE reorders their value heads). */
  protected deltaNetTensors(l: number, blk: string, s: DeltaNetSpec, v?: GgufHeadOrder): GgufAttentionTensor[] {
    const p = `model.layers.${l}.linear_attn`;
    const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv, convKernel: K } = s;
    const C = 2 * Hk * dk + Hv * dv;
    const conv = v && [...Array(2 * Hk * dk).keys(), ...v.rows(dv).map((i) => 2 * Hk * dk + i)];
    return [
      {
        name: `${blk}.ssm_conv1d.weight`,
        from: `${p}.conv1d.weight`,
        kind: 'norm',
        shape: [C, K],
        transform: conv && { rows: conv },
      },
      {
        name: `${blk}.ssm_dt.bias`,
        from: `${p}.dt_bias`,
        kind: 'norm',
        shape: [Hv],
        transform: v && { rows: v.rows(1) },
      },
      {
        name: `${blk}.ssm_a`,
        from: `${p}.A_log`,
        kind: 'norm',
        shape: [Hv],
        transform: { negExp: true, rows: v?.rows(1) },
      },
      { name: `${blk}.ssm_norm.weight`, from: `${p}.norm.weight`, kind: 'norm' },
      {
        name: `${blk}.ssm_out.weight`,
        from: `${p}.out_proj.weight`,
        kind: 'weight',
        shape: [this.hidden, Hv * dv],
        transform: v && { cols: v.rows(dv) },
      },
    ];
  }
}

/** A reordering of value heads: the HF rows of each GGUF row, for heads of `dim` rows each. */
export interface GgufHeadOrder {
  rows(dim: number): number[];
}

/** llama.cpp's ssm.* sizes of the Gated DeltaNet (its value head size is ssm.inner_size / ssm.time_step_rank). */
function ssmKeys(s: DeltaNetSpec): [string, GgufScalar][] {
  return [
    ['ssm.conv_kernel', u32(s.convKernel)],
    ['ssm.state_size', u32(s.keyDim)],
    ['ssm.group_count', u32(s.keyHeads)],
    ['ssm.time_step_rank', u32(s.valueHeads)],
    ['ssm.inner_size', u32(s.valueDim * s.valueHeads)],
  ];
}

/** The config of a qwen3next or qwen35moe GGUF file (every layer MoE with a gated shared expert). */
export function qwenHybridFromGguf(h: GgufHparams, c: Config, experts: number): void {
  const layers = Number(c.num_hidden_layers);
  const headDim = h.opt('attention.key_length') ?? Math.floor(Number(c.hidden_size) / Number(c.num_attention_heads));
  const valueHeads = h.num('ssm.time_step_rank');
  const recurrent = h.array('attention.recurrent_layers');
  const interval = h.num('full_attention_interval', 4);
  const linear = (l: number) => (recurrent ? recurrent[l] === true : (l + 1) % interval !== 0);
  const rotary = h.num('rope.dimension_count', headDim) / headDim;
  const full = [...Array(layers).keys()].find((l) => !linear(l));
  const shexp = h.tensorShape('blk.0.ffn_up_shexp.weight');
  Object.assign(c.rope_parameters as Config, { partial_rotary_factor: rotary });
  Object.assign(c, {
    model_type: 'qwen3_next',
    architectures: ['Qwen3NextForCausalLM'],
    num_experts: experts,
    head_dim: headDim,
    partial_rotary_factor: rotary,
    attention_bias: full !== undefined && h.hasTensor(`blk.${full}.attn_q.bias`),
    layer_types: [...Array(layers).keys()].map((l) => (linear(l) ? 'linear_attention' : 'full_attention')),
    linear_num_key_heads: h.num('ssm.group_count'),
    linear_num_value_heads: valueHeads,
    linear_key_head_dim: h.num('ssm.state_size'),
    linear_value_head_dim: h.num('ssm.inner_size') / valueHeads,
    linear_conv_kernel_dim: h.num('ssm.conv_kernel'),
    moe_intermediate_size: h.num('expert_feed_forward_length'),
    shared_expert_intermediate_size: h.opt('expert_shared_feed_forward_length') ?? (shexp ? shexp[0] : 0),
    intermediate_size: h.num('feed_forward_length'),
    decoder_sparse_step: 1,
    mlp_only_layers: [],
  });
  if (!recurrent) c.full_attention_interval = interval;
}

export const qwen3Next: ArchitectureFamily = {
  modelType: 'qwen3_next',
  create: (c, d) => new Qwen3Next(c, d),
  ggufPreTokenizer: 'qwen2',
  ggufReader: { arch: 'qwen3next', normTopKDefault: true, complete: qwenHybridFromGguf },
  preset: {
    ...SYNTH_COMMON,
    model_type: 'qwen3_next',
    architectures: ['Qwen3NextForCausalLM'],
    num_hidden_layers: 2,
    layer_types: ['linear_attention', 'full_attention'],
    head_dim: 16,
    partial_rotary_factor: 0.25,
    linear_num_key_heads: 2,
    linear_num_value_heads: 4,
    linear_key_head_dim: 8,
    linear_value_head_dim: 8,
    linear_conv_kernel_dim: 4,
    num_experts: 4,
    moe_intermediate_size: 32,
    shared_expert_intermediate_size: 32,
    intermediate_size: 96,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    attention_bias: false,
    rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.25 },
  },
};
