/**
 * Qwen3.5-MoE's text model (transformers models/qwen3_5_moe, Qwen3_5MoeForCausalLM, model_type
 * qwen3_5_moe_text): Qwen3-Next (./qwen3-next.ts) but for
 * - the linear attention's projections, stored apart: in_proj_qkv ([q of every key head | k | v], the conv1d's
 *   channel order), in_proj_z, in_proj_b, in_proj_a (Qwen3-Next fuses them per key head into in_proj_qkvz /
 *   in_proj_ba);
 * - MoE on every layer (no mlp_only_layers / decoder_sparse_step), the top-k always renormalised;
 * - mrope (rope_parameters.mrope_section): text positions are equal on the temporal/height/width axes, so it is
 *   plain rotary on the first partial_rotary_factor (default 0.25) of each head.
 */
import { ArchitectureFamily, linear, RoutingRule, softmaxTopK, TensorSpec } from './arch';
import type { DeltaNetSpec } from './forward/deltanet';
import { Qwen3Next, qwen3Next } from './qwen3-next';

export class Qwen3_5MoeText extends Qwen3Next {
  override readonly modelType: string = 'qwen3_5_moe_text';

  override isMoeLayer(_layer: number): boolean {
    return true;
  }

  override get routing(): RoutingRule {
    return softmaxTopK(this.topK, true);
  }

  override linearAttention(layer: number): DeltaNetSpec | undefined {
    const spec = super.linearAttention(layer);
    return spec && { ...spec, split: true };
  }

  protected override attentionSpecs(layer: number): TensorSpec[] {
    const specs = super.attentionSpecs(layer);
    const lin = this.linearAttention(layer);
    if (!lin) return specs;
    const p = `model.layers.${layer}.linear_attn`;
    const h = this.hidden;
    const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = lin;
    const role = (name: string) => ({ kind: 'attn' as const, layer, name });
    const split = [
      linear(`${p}.in_proj_qkv.weight`, 2 * Hk * dk + Hv * dv, h, role('in_proj_qkv')),
      linear(`${p}.in_proj_z.weight`, Hv * dv, h, role('in_proj_z')),
      linear(`${p}.in_proj_b.weight`, Hv, h, role('in_proj_b')),
      linear(`${p}.in_proj_a.weight`, Hv, h, role('in_proj_a')),
    ];
    const fused = new Set([`${p}.in_proj_qkvz.weight`, `${p}.in_proj_ba.weight`]);
    return [...split, ...specs.filter((s) => !fused.has(s.name))];
  }
}

export const qwen3_5MoeText: ArchitectureFamily = {
  modelType: 'qwen3_5_moe_text',
  create: (c, d) => new Qwen3_5MoeText(c, d),
  preset: (() => {
    const {
      intermediate_size: _i,
      norm_topk_prob: _n,
      decoder_sparse_step: _d,
      mlp_only_layers: _m,
      ...rest
    } = qwen3Next.preset as Record<string, unknown>;
    return {
      ...rest,
      model_type: 'qwen3_5_moe_text',
      architectures: ['Qwen3_5MoeForCausalLM'],
      rope_parameters: {
        rope_type: 'default',
        rope_theta: 10000,
        partial_rotary_factor: 0.25,
        mrope_section: [1, 1, 0],
        mrope_interleaved: true,
      },
    };
  })(),
};
