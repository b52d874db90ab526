/** What the forward pass needs to know of each architecture beyond its tensor names (its attention from the family). */
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
}

export function forwardSpec(arch: Architecture): ForwardSpec {
  const c = arch.cfg;
  const eps = c.num('rms_norm_eps', 1e-6);
  const rope = ropeParameters(c);
  const maxPositions = c.int('max_position_embeddings', 4096);
  const attention = arch.attentionSpec(rope, eps);
  // MLA rotates its own rope part of each head; GQA the first partial_rotary_factor of it.
  const ropeDim =
    attention.kind === 'mla'
      ? attention.ropeDim
      : (attention.ropeDim ?? Math.floor(attention.headDim * c.num('partial_rotary_factor', 1)));
  return { attention, ropeDim, rope, maxPositions, eps, shared: arch.sharedMode };
}
