/**
 * What the calibration stats say about a weight, for every quantizer (moe quantize and its GGUF export): the
 * inputs it saw (the imatrix Σx² per column, or the Hessian XᵀX, and how many rows reached it) and, for a
 * routed expert, the MC-MoE weighting f^α·w^β (f its activation frequency, w its mean routing weight per token).
 */
import { CalibrationStats, inputStatsName } from '../calib/stats';

/** The calibrated inputs of a weight: rows that reached it, and the Hessian or (without one) its diagonal. */
export interface Inputs {
  rows: number;
  diag?: Float64Array;
  full?: Float32Array;
}

export class Weighting {
  private readonly byLayer = new Map<number, { f: Float64Array; w: Float64Array }>();

  constructor(
    readonly stats: CalibrationStats | undefined,
    readonly alpha: number,
    readonly beta: number,
  ) {}

  /** f^α·w^β of routed expert `expert` of `layer`; 1 without stats or for a weight every token passes through. */
  factor(layer: number | undefined, expert: number | undefined): number {
    const stats = this.stats;
    if (!stats || layer === undefined || expert === undefined) return 1;
    let v = this.byLayer.get(layer);
    if (!v) {
      const tokens = stats.json.data.tokens;
      v = { f: stats.frequency(layer), w: stats.vector(layer, 'weight_sum').map((x) => x / tokens) };
      this.byLayer.set(layer, v);
    }
    return Math.pow(v.f[expert], this.alpha) * Math.pow(v.w[expert], this.beta);
  }

  /** The stats name of the weight's input and the calibration rows that reached it; undefined when not recorded. */
  private lookup(weight: string): { src: string; rows: number } | undefined {
    if (!this.stats) return undefined;
    const src = inputStatsName(weight);
    if (!this.stats.has(`imatrix/${src}`)) return undefined;
    return { src, rows: this.stats.f64(`rows/${src}`)[0] };
  }

  /** The weight's calibrated inputs: the Hessian when recorded, else the imatrix. */
  inputs(weight: string): Inputs | undefined {
    const at = this.lookup(weight);
    if (!at) return undefined;
    const stats = this.stats!;
    const full = stats.has(`hessian/${at.src}`) ? stats.f32(`hessian/${at.src}`) : undefined;
    return { rows: at.rows, diag: full ? undefined : stats.f64(`imatrix/${at.src}`), full };
  }

  /** The imatrix of the weight's input as the mean of x² per column (per calibration row that reached it). */
  importance(weight: string): Float64Array | undefined {
    const at = this.lookup(weight);
    if (!at) return undefined;
    return this.stats!.f64(`imatrix/${at.src}`).map((v) => (at.rows > 0 ? v / at.rows : 0));
  }
}
