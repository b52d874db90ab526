/**
 * Pairwise similarity [E, E] of one MoE layer's routed experts, the input of the grouping step:
 *  - router-logits: cosine of the experts' router-logit columns over the calibration tokens (M-SMoE's default);
 *  - expert-output: cosine of the experts' outputs on the same calibration tokens (every expert run on the
 *    calibrated MoE-block input sample, as HC-SMoE compares experts by their outputs on common inputs);
 *  - weights: cosine of the flattened weights.
 */
import { UsageError } from '../errors';
import type { Proj } from '../model/arch';
import { expertOutputs } from '../model/experts';
import { cosineMatrix } from './grouping';
import type { LayerInput, Similarity } from './method';

export async function expertSimilarity(kind: Similarity, input: LayerInput): Promise<Float64Array> {
  const { layer, stats, reader, arch, be } = input;
  const E = arch.numExperts;
  if (kind === 'router-logits') return stats.f64(`layers.${layer}.moe.router_cos`);
  if (kind === 'expert-output') {
    const x = stats.f32(`layers.${layer}.moe.naee_in`);
    const n = x.length / arch.hidden;
    if (n === 0) {
      const hint = 're-run moe calibrate with --naee-tokens > 0';
      const what = '--similarity expert-output needs calibrated MoE-block samples, and these stats have none';
      throw new UsageError(what, { file: stats.dir, hint });
    }
    const outputs = new Float32Array(E * n * arch.hidden);
    (await expertOutputs(be, reader, arch, layer, x, n)).forEach((y, e) => outputs.set(y, e * n * arch.hidden));
    return cosineMatrix(outputs, E, n * arch.hidden);
  }
  // weights: cosine of the flattened [gate; up; down] of each pair, accumulated projection by projection.
  const gram = new Float64Array(E * E);
  for (const p of ['gate', 'up', 'down'] as Proj[]) {
    const ws = [...Array(E).keys()].map((e) => reader.f32(arch.expertKey(layer, e, p)));
    for (let a = 0; a < E; a++) {
      for (let b = a; b < E; b++) {
        let s = 0;
        for (let i = 0; i < ws[a].length; i++) s += ws[a][i] * ws[b][i];
        gram[a * E + b] += s;
        if (a !== b) gram[b * E + a] += s;
      }
    }
  }
  const cos = new Float64Array(E * E);
  for (let a = 0; a < E; a++) {
    for (let b = 0; b < E; b++) cos[a * E + b] = gram[a * E + b] / Math.sqrt(gram[a * E + a] * gram[b * E + b] || 1);
  }
  return cos;
}
