/**
 * Per-position statistics accumulated over vocabulary blocks, so full logits never need to exist at once:
 * log-sum-exp, the target's logit, the argmax, and (against a baseline) KL(baseline‖model) by the online
 * identity KL = Σ_v p_v·(a_v − b_v) − lse(a) + lse(b), with p = softmax(a), a the baseline's logits.
 */
import type { LogitStats } from '../backend/backend';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

export class RowStats {
  readonly max: Float64Array;
  readonly sum: Float64Array;
  readonly target: Float64Array;
  readonly argmax: Int32Array;
  private readonly best: Float64Array;

  constructor(
    readonly rows: number,
    /** The id each row must predict, or -1 for rows that predict nothing (a window's last position). */
    readonly targets: Int32Array,
  ) {
    this.max = new Float64Array(rows).fill(-Infinity);
    this.sum = new Float64Array(rows);
    this.target = new Float64Array(rows).fill(NaN);
    this.argmax = new Int32Array(rows).fill(-1);
    this.best = new Float64Array(rows).fill(-Infinity);
  }

  update(logits: Float32Array, start: number, count: number): void {
    for (let r = 0; r < this.rows; r++) {
      const o = r * count;
      let m = this.max[r];
      let blockMax = -Infinity;
      let arg = -1;
      for (let i = 0; i < count; i++) {
        if (logits[o + i] > blockMax) {
          blockMax = logits[o + i];
          arg = i;
        }
      }
      if (blockMax > this.best[r]) {
        this.best[r] = blockMax;
        this.argmax[r] = start + arg;
      }
      if (blockMax > m) {
        this.sum[r] *= math.exp(m - blockMax);
        m = blockMax;
        this.max[r] = m;
      }
      let s = 0;
      for (let i = 0; i < count; i++) s += math.exp(logits[o + i] - m);
      this.sum[r] += s;
      const t = this.targets[r];
      if (t >= start && t < start + count) this.target[r] = logits[o + t - start];
    }
  }

  /** Folds in a backend's statistics of one block (Backend.logitStats), the same as update() on its logits. */
  merge(b: LogitStats, start: number): void {
    for (let r = 0; r < this.rows; r++) {
      const blockMax = b.max[r];
      if (blockMax > this.best[r]) {
        this.best[r] = blockMax;
        this.argmax[r] = start + b.argmax[r];
      }
      let m = this.max[r];
      if (blockMax > m) {
        this.sum[r] *= math.exp(m - blockMax);
        m = blockMax;
        this.max[r] = m;
      }
      this.sum[r] += b.sumExp[r] * math.exp(blockMax - m);
      if (!Number.isNaN(b.target[r])) this.target[r] = b.target[r];
    }
  }

  lse(r: number): number {
    return this.max[r] + math.log(this.sum[r]);
  }

  /** Negative log-likelihood of row r's target. */
  nll(r: number): number {
    return this.lse(r) - this.target[r];
  }
}

/** The KL cross term Σ exp(a − max_a)·(a − b), rescaled as the baseline's running max moves. */
export class KlAccumulator {
  private readonly cross: Float64Array;

  constructor(
    readonly base: RowStats,
    readonly model: RowStats,
  ) {
    this.cross = new Float64Array(base.rows);
  }

  /** Call with the same block of both models before RowStats.update of either. */
  update(a: Float32Array, b: Float32Array, count: number): void {
    for (let r = 0; r < this.base.rows; r++) {
      const o = r * count;
      let m = this.base.max[r];
      let blockMax = -Infinity;
      for (let i = 0; i < count; i++) if (a[o + i] > blockMax) blockMax = a[o + i];
      if (blockMax > m) {
        this.cross[r] *= math.exp(m - blockMax);
        m = blockMax;
      }
      let c = 0;
      for (let i = 0; i < count; i++) c += math.exp(a[o + i] - m) * (a[o + i] - b[o + i]);
      this.cross[r] += c;
    }
  }

  /** KL(base‖model) for row r, after every block has gone through both accumulators. */
  kl(r: number): number {
    // Σ p·(a − b) = cross / sum_a (both relative to the final max of a), then − lse(a) + lse(b).
    return this.cross[r] / this.base.sum[r] - this.base.lse(r) + this.model.lse(r);
  }
}
