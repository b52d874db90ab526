/** What the forward pass needs to know of each architecture beyond its tensor names. */
import type { Architecture } from '../arch';
import type { AttentionSpec } from './attention';
import { ropeParameters } from './rope';

export interface ForwardSpec {
  attention: AttentionSpec;
  /** Rotary dimension and rope parameters. */
  ropeDim: number;
  rope: Record<string, unknown>;
  maxPositions: number;
  eps: number;
  /** How shared experts enter: Qwen2-MoE scales by sigmoid(shared_expert_gate·x); DeepSeek adds them. */
  shared: 'none' | 'gated' | 'plain';
  sharedPrefix: string;
}

function yarnMscale(scale: number, mscale: number): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

export function forwardSpec(arch: Architecture): ForwardSpec {
  const c = arch.cfg;
  const eps = c.num('rms_norm_eps', 1e-6);
  const rope = ropeParameters(c);
  const maxPositions = c.int('max_position_embeddings', 4096);
  const heads = c.int('num_attention_heads');
  switch (arch.modelType) {
    case 'deepseek_v2':
    case 'deepseek_v3': {
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
        attention: {
          kind: 'mla',
          heads,
          qLoraRank: c.optInt('q_lora_rank') || undefined,
          kvLoraRank: c.int('kv_lora_rank'),
          nopeDim: nope,
          ropeDim,
          vDim: c.int('v_head_dim'),
          interleaved: arch.modelType === 'deepseek_v2' || c.bool('rope_interleave', true),
          scale,
          eps: 1e-6, // q_a_layernorm and kv_a_layernorm are built with the default eps
        },
        ropeDim,
        rope,
        maxPositions,
        eps,
        shared: arch.sharedExperts > 0 ? 'plain' : 'none',
        sharedPrefix: 'shared_experts',
      };
    }
    default: {
      const headDim = arch.modelType === 'olmoe' ? Math.floor(arch.hidden / heads) : c.int('head_dim', Math.floor(arch.hidden / heads));
      const qkNorm = arch.modelType === 'qwen3_moe' ? 'head' : arch.modelType === 'olmoe' ? 'full' : 'none';
      const clip = arch.modelType === 'olmoe' && c.has('clip_qkv') ? c.num('clip_qkv') : undefined;
      const partial = c.num('partial_rotary_factor', 1);
      return {
        attention: { kind: 'gqa', heads, kvHeads: c.int('num_key_value_heads', heads), headDim, qkNorm, clipQkv: clip, scale: headDim ** -0.5, eps },
        ropeDim: Math.floor(headDim * partial),
        rope,
        maxPositions,
        eps,
        shared: arch.modelType === 'qwen2_moe' && arch.sharedExperts > 0 ? 'gated' : 'none',
        sharedPrefix: 'shared_expert',
      };
    }
  }
}
