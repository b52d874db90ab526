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
import type { Config } from '../io/checkpoint';
import { ArchitectureFamily, linear, RoutingRule, softmaxTopK, TensorSpec } from './arch';
import type { DeltaNetSpec } from './forward/deltanet';
import { ropeParameters } from './forward/rope';
import type { GgufAttentionTensor, GgufHparams, GgufScalar } from './gguf-map';
import { GgufHeadOrder, Qwen3Next, qwen3Next, qwenHybridFromGguf } from './qwen3-next';

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

  protected override get ggufArch(): string {
    return 'qwen35moe';
  }

  /**
   * rope.dimension_sections, which llama.cpp's qwen35moe requires: mrope_section padded to 4 as convert_hf_to_gguf.py
   * writes it, or, without one, the interleaved split of the rotary pairs (Qwen3.5's [11, 11, 10] for 32 pairs).
   */
  protected override extraGgufKeys(): [string, GgufScalar][] {
    const rope = ropeParameters(this.cfg);
    const pairs = Math.floor((this.headDim() * this.cfg.num('partial_rotary_factor', 1)) / 2);
    const given = Array.isArray(rope.mrope_section) ? rope.mrope_section.map(Number) : undefined;
    const sections = given ?? [0, 1, 2].map((k) => Math.ceil((pairs - k) / 3));
    return [['rope.dimension_sections', { type: 'array', of: 'i32', value: [...sections, 0, 0, 0, 0].slice(0, 4) }]];
  }

  /**
   * llama.cpp's qwen35moe (convert_hf_to_gguf.py Qwen3_5MoeTextModel, _LinearAttentionVReorderBase): in_proj_qkv as
   * attn_qkv, in_proj_z as attn_gate, in_proj_b / in_proj_a as ssm_beta / ssm_alpha. llama.cpp broadcasts the key
   * heads over the value heads tiled (value head n uses key head n mod Hk) where transformers groups them (value head
   * g·r + j uses key head g), so every value-head axis is reordered: v rows of in_proj_qkv and of conv1d, in_proj_z,
   * in_proj_b, in_proj_a, dt_bias, A_log, and out_proj's columns.
   */
  protected override linearGgufTensors(l: number, blk: string, s: DeltaNetSpec): GgufAttentionTensor[] {
    const p = `model.layers.${l}.linear_attn`;
    const { keyHeads: Hk, valueHeads: Hv, keyDim: dk, valueDim: dv } = s;
    const r = Hv / Hk;
    const order: GgufHeadOrder | undefined =
      Hk === Hv
        ? undefined
        : {
            rows: (dim) =>
              [...Array(Hv).keys()].flatMap((n) => {
                const head = (n % Hk) * r + Math.floor(n / Hk); // GGUF head n = HF head g·r + j, n = j·Hk + g
                return [...Array(dim).keys()].map((e) => head * dim + e);
              }),
          };
    const rows = (dim: number, base = 0) =>
      order && { rows: [...Array(base).keys(), ...order.rows(dim).map((i) => base + i)] };
    const h = this.hidden;
    return [
      {
        name: `${blk}.attn_qkv.weight`,
        from: `${p}.in_proj_qkv.weight`,
        kind: 'weight',
        shape: [2 * Hk * dk + Hv * dv, h],
        transform: rows(dv, 2 * Hk * dk),
      },
      {
        name: `${blk}.attn_gate.weight`,
        from: `${p}.in_proj_z.weight`,
        kind: 'weight',
        shape: [Hv * dv, h],
        transform: rows(dv),
      },
      ...this.deltaNetTensors(l, blk, s, order),
      {
        name: `${blk}.ssm_beta.weight`,
        from: `${p}.in_proj_b.weight`,
        kind: 'weight',
        shape: [Hv, h],
        transform: rows(1),
      },
      {
        name: `${blk}.ssm_alpha.weight`,
        from: `${p}.in_proj_a.weight`,
        kind: 'weight',
        shape: [Hv, h],
        transform: rows(1),
      },
    ];
  }
}

/** The config of a qwen35moe GGUF file: Qwen3.5-MoE's text model (qwen3next's keys, mrope from the sections). */
function qwen35FromGguf(h: GgufHparams, c: Config, experts: number): void {
  qwenHybridFromGguf(h, c, experts);
  const sections = h.array('rope.dimension_sections')?.map(Number) ?? [];
  while (sections.length > 3 && sections[sections.length - 1] === 0) sections.pop();
  Object.assign(c.rope_parameters as Config, { mrope_section: sections, mrope_interleaved: true });
  for (const k of ['intermediate_size', 'decoder_sparse_step', 'mlp_only_layers', 'norm_topk_prob']) delete c[k];
  Object.assign(c, { model_type: 'qwen3_5_moe_text', architectures: ['Qwen3_5MoeForCausalLM'] });
}

export const qwen3_5MoeText: ArchitectureFamily = {
  modelType: 'qwen3_5_moe_text',
  create: (c, d) => new Qwen3_5MoeText(c, d),
  ggufPreTokenizer: 'qwen35',
  ggufReader: { arch: 'qwen35moe', normTopKDefault: true, complete: qwen35FromGguf },
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
