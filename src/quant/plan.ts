/**
 * What `moe quantize` quantizes and how its bits are chosen: the quantized tensors of a model (targets), the
 * allocation groups they form at a granularity, and each group's cost at each bit-width (MC-MoE, Huang et al.
 * 2024: cost[g,b] = Σ over the group's tensors of f^α · w^β · err_t(b), with err_t(b) the output error
 * ‖(W − Q_b(W))X‖² per calibration row, measured from the Hessian XᵀX when calibrated, else its diagonal, the
 * imatrix; f the expert's activation frequency and w its mean routing weight per token; f = w = 1 for weights
 * every token passes through).
 */
import type { Architecture, Proj } from '../model/arch';
import type { TensorRef } from '../io/safetensors';

/** Why a weight is quantized the way it is. */
export type TargetClass = 'expert' | 'attn' | 'shared' | 'dense' | 'router';

export interface Target {
  name: string;
  rows: number;
  cols: number;
  cls: TargetClass;
  layer: number;
  expert?: number;
  /** Allocation group key. */
  group: string;
}

/**
 * How routed experts form allocation groups: each expert (its projections together), each weight, all experts of a
 * layer, or all experts of a layer per projection (one scheme per fused-MoE kernel call: vLLM, SGLang, llama.cpp's
 * ffn_*_exps). Attention, shared experts and dense MLPs are one group per layer except at `projection`.
 */
export type Granularity = 'expert' | 'projection' | 'layer' | 'layer-projection';
export const GRANULARITIES: readonly Granularity[] = ['expert', 'projection', 'layer', 'layer-projection'];

/**
 * Every 2-D weight moe quantizes, in checkpoint order: attention, router, routed and shared experts, dense MLPs.
 * Embeddings, lm_head, norms, biases and the shared-expert gate stay as they are.
 */
export function quantTargets(
  arch: Architecture,
  tensors: Map<string, TensorRef>,
  granularity: Granularity,
  keepRouterFp: boolean,
): Target[] {
  const out: Target[] = [];
  for (const t of tensors.values()) {
    const role = arch.classify(t.name);
    if (!role || t.shape.length !== 2 || !('layer' in role)) continue;
    const L = role.layer;
    let cls: TargetClass;
    let unit: string;
    let expert: number | undefined;
    switch (role.kind) {
      case 'attn':
        if (role.bias) continue;
        cls = 'attn';
        unit = `layers.${L}.attn`;
        break;
      case 'router':
        if (keepRouterFp) continue;
        cls = 'router';
        unit = `layers.${L}.router`;
        break;
      case 'expert':
        cls = 'expert';
        expert = role.expert;
        unit = expertUnit(arch, L, role.expert, role.proj, granularity);
        break;
      case 'shared':
        cls = 'shared';
        unit = `layers.${L}.shared`;
        break;
      case 'dense_mlp':
        if (role.bias) continue;
        cls = 'dense';
        unit = `layers.${L}.mlp`;
        break;
      default:
        continue;
    }
    out.push({
      name: t.name,
      rows: t.shape[0],
      cols: t.shape[1],
      cls,
      layer: L,
      expert,
      group: granularity === 'projection' || cls === 'router' ? t.name : unit,
    });
  }
  return out;
}

/** The allocation group of a routed expert's weight (`projection` aside: every weight is its own group). */
function expertUnit(arch: Architecture, layer: number, expert: number, proj: Proj, g: Granularity): string {
  if (g === 'layer') return `layers.${layer}.experts`;
  // A fused layout stores gate and up of every expert in one tensor (gate_up_proj, w13): one group.
  if (g === 'layer-projection')
    return `layers.${layer}.experts.${arch.fusedExperts && proj !== 'down' ? 'gate_up' : proj}`;
  return `layers.${layer}.experts.${expert}`;
}

export interface Group {
  key: string;
  targets: Target[];
  params: number;
  cls: TargetClass;
  layer: number;
}

export function groupTargets(targets: Target[]): Group[] {
  const byKey = new Map<string, Group>();
  for (const t of targets) {
    let g = byKey.get(t.group);
    if (!g) {
      g = { key: t.group, targets: [], params: 0, cls: t.cls, layer: t.layer };
      byKey.set(t.group, g);
    }
    g.targets.push(t);
    g.params += t.rows * t.cols;
  }
  return [...byKey.values()];
}

/** Parses "2,3,4,8" into sorted distinct bit-widths in 1..8. */
export function parseBitChoices(s: string): number[] | undefined {
  const bits = s.split(',').map((x) => Number(x.trim()));
  if (bits.length === 0 || bits.some((b) => !Number.isInteger(b) || b < 1 || b > 8)) return undefined;
  return [...new Set(bits)].sort((a, b) => a - b);
}
