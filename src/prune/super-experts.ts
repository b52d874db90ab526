/**
 * Super experts (Su et al., 2025, "Unveiling Super Experts in Mixture-of-Experts Large Language Models"): a
 * few experts whose down_proj outputs carry rare, extreme activations the model depends on. Detected from the
 * calibration stats: an expert whose largest |down_proj output| exceeds `factor` × the layer's median.
 */
import type { CalibrationStats } from '../calib/stats';

/** Default outlier factor: real super experts sit one to two orders of magnitude above their layer's median. */
export const SUPER_EXPERT_FACTOR = 5;

export function median(v: ArrayLike<number>): number {
  const s = Array.from(v).sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function superExperts(stats: CalibrationStats, layer: number, factor = SUPER_EXPERT_FACTOR): number[] {
  const peak = stats.vector(layer, 'out_abs_max');
  const m = median(peak);
  return [...peak.keys()].filter((e) => m > 0 && peak[e] > factor * m);
}
