/**
 * A toy architecture defined outside src/, in this one file: Mixtral's mathematics (GQA attention, softmax top-k
 * routing renormalised, SwiGLU experts) under a made-up model_type "toy_moe" with its own MoE tensor names
 * (`model.layers.L.moe.router.weight`, `model.layers.L.moe.experts.E.{w_gate,w_up,w_down}.weight`), its own
 * forward spec, synth preset, and GGUF mapping (llama.cpp architecture "toymoe", read back by moe). The test
 * (test/model/one-file-arch.test.ts) registers it with one call and runs it through the CLI.
 */
import type { Config } from '../../src/io/checkpoint';
import {
  Architecture,
  ArchitectureFamily,
  gqaAttention,
  gqaGgufTensors,
  linear,
  Proj,
  RoutingRule,
  softmaxTopK,
  SYNTH_COMMON,
  TensorSpec,
} from '../../src/model/arch';
import type { AttentionSpec, GqaSpec } from '../../src/model/forward/attention';
import { GgufMapping, GgufScalar, u32 } from '../../src/model/gguf-map';

export class ToyMoe extends Architecture {
  readonly modelType = 'toy_moe';
  protected readonly expertCountKey = 'num_local_experts';

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
    return softmaxTopK(this.topK, true);
  }

  override moePrefix(layer: number): string {
    return `model.layers.${layer}.moe`;
  }

  override projName(p: Proj): string {
    return `w_${p}`;
  }

  override routerKey(layer: number): string {
    return `${this.moePrefix(layer)}.router.weight`;
  }

  private get headDim(): number {
    return Math.floor(this.hidden / this.cfg.int('num_attention_heads'));
  }

  protected attentionSpecs(layer: number): TensorSpec[] {
    const heads = this.cfg.int('num_attention_heads');
    const kvHeads = this.cfg.int('num_key_value_heads', heads);
    return gqaAttention(layer, this.hidden, heads, kvHeads, this.headDim, { qkv: false, o: false });
  }

  protected mlpSpecs(layer: number): TensorSpec[] {
    return [linear(this.routerKey(layer), this.numExperts, this.hidden, { kind: 'router', layer })];
  }

  attentionSpec(_rope: Record<string, unknown>, eps: number): AttentionSpec {
    return this.gqaSpec(this.headDim, 'none', eps);
  }

  override ggufMapping(spec: AttentionSpec): GgufMapping {
    const att = spec as GqaSpec;
    const keys: [string, GgufScalar][] = [
      ['attention.head_count_kv', u32(att.kvHeads)],
      ['rope.dimension_count', u32(att.headDim)],
    ];
    return {
      arch: 'toymoe',
      feedForwardLength: this.expertWidth,
      keys,
      warnings: [],
      attentionTensors: (l, blk) => gqaGgufTensors(l, blk, { q: att.heads, k: att.kvHeads }),
    };
  }
}

export const toyMoe: ArchitectureFamily = {
  modelType: 'toy_moe',
  create: (c, d) => new ToyMoe(c, d),
  preset: {
    ...SYNTH_COMMON,
    model_type: 'toy_moe',
    architectures: ['ToyMoeForCausalLM'],
    intermediate_size: 32,
    num_local_experts: 4,
    rope_theta: 1e6,
  },
  ggufReader: {
    arch: 'toymoe',
    normTopKDefault: true,
    complete(h, c: Config, experts) {
      const intermediate = h.num('feed_forward_length');
      Object.assign(c, { model_type: 'toy_moe', num_local_experts: experts, intermediate_size: intermediate });
    },
  },
};
