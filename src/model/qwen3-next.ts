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
import { ArchitectureFamily, linear, RoutingRule, softmaxTopK, SYNTH_COMMON, TensorSpec, vector } from './arch';
import type { AttentionSpec } from './forward/attention';
import type { DeltaNetSpec } from './forward/deltanet';
import type { GgufMapping } from './gguf-map';
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
    if (this.layerType(layer) !== 'linear_attention') return undefined;
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
    const heads = this.cfg.int('num_attention_heads');
    const kv = this.cfg.int('num_key_value_heads', heads);
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

  /** llama.cpp's qwen3next (and qwen35moe) export is not written yet. */
  override ggufMapping(): GgufMapping {
    throw new CheckpointError(`GGUF output for ${this.modelType} is not supported yet`, {
      file: this.dir,
      hint: 'write safetensors (the default output)',
    });
  }
}

export const qwen3Next: ArchitectureFamily = {
  modelType: 'qwen3_next',
  create: (c, d) => new Qwen3Next(c, d),
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
