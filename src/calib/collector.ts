/**
 * The observers of one layer during calibration: per routed expert (counts, soft frequency, routing weight,
 * REAP saliency, mean output, output and activation magnitudes), router-logit similarity, co-activation, the
 * NAEE subsample, and per linear weight the input statistics (rows, Σx² per column, optionally XᵀX).
 * REAP (Lasby et al., 2025): S_j = mean over tokens routed to j of g_j(x)·‖f_j(x)‖₂.
 */
import type { Backend } from '../backend/backend';
import type { PlannedTensor } from '../io/writer';
import { fromFloat32 } from '../io/dtype';
import type { Architecture } from '../model/arch';
import type { ExpertRows, ForwardObserver } from '../model/forward/model';
import type { Routing } from '../model/forward/moe';
import { HessianWeighting, scaleRowsBySqrt } from './affinity';
import { addGram, addSumSquares } from './gram';
import { observedLinears } from './stats';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

export interface LinearAcc {
  rows: number;
  sumsq: Float64Array;
  xtx?: Float64Array;
  inDim: number;
}

/**
 * A layer's statistics as sums over tokens (and maxima), before any mean is taken: what calibrate accumulates, a data
 * shard stores (src/calib/shards.ts) and --combine adds up. `statsTensors` turns them into the stats file's tensors.
 */
export interface LayerSums {
  tokens: number;
  count: Float64Array;
  /** Σ router probabilities. */
  softFreq: Float64Array;
  weightSum: Float64Array;
  reapSum: Float64Array;
  /** [E, hidden] Σ expert outputs. */
  outSum: Float64Array;
  outAbsSum: Float64Array;
  outAbsMax: Float64Array;
  actAbsMax: Float64Array;
  /** [E, E] Σ router-logit products. */
  gram: Float64Array;
  coact: Float64Array;
  naeeIn: Float32Array;
  naeeOut: Float32Array;
  /** Hessians may be left out (xtx undefined): --combine streams them one at a time. */
  linears: Map<string, LinearAcc>;
}

const f64Bytes = (a: Float64Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * The stats file's tensors of one layer (stats.layerPlan's names) from its sums: means per routed token (reap,
 * out_abs_mean, out_mean), per token (soft_freq), router-logit cosines from the Gram matrix.
 */
export function statsTensors(layer: number, s: LayerSums): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const p = `layers.${layer}.moe`;
  const E = s.count.length;
  const h = E ? s.outSum.length / E : 0;
  const perRouted = (sum: Float64Array) => sum.map((v, e) => (s.count[e] > 0 ? v / s.count[e] : 0));
  if (E > 0) {
    out.set(`${p}.count`, f64Bytes(s.count));
    out.set(`${p}.soft_freq`, f64Bytes(s.softFreq.map((v) => v / s.tokens)));
    out.set(`${p}.weight_sum`, f64Bytes(s.weightSum));
    out.set(`${p}.reap`, f64Bytes(perRouted(s.reapSum)));
    out.set(`${p}.out_abs_mean`, f64Bytes(perRouted(s.outAbsSum)));
    out.set(`${p}.out_abs_max`, f64Bytes(s.outAbsMax));
    out.set(`${p}.act_abs_max`, f64Bytes(s.actAbsMax));
    const mean = new Float32Array(E * h);
    for (let e = 0; e < E; e++)
      for (let j = 0; j < h; j++) mean[e * h + j] = s.count[e] > 0 ? s.outSum[e * h + j] / s.count[e] : 0;
    out.set(`${p}.out_mean`, fromFloat32(mean, 'F32'));
    const cos = new Float64Array(E * E);
    for (let a = 0; a < E; a++) {
      for (let b = 0; b < E; b++) {
        const d = math.sqrt(s.gram[a * E + a] * s.gram[b * E + b]);
        cos[a * E + b] = d > 0 ? s.gram[a * E + b] / d : 0;
      }
    }
    out.set(`${p}.router_cos`, f64Bytes(cos));
    out.set(`${p}.coact`, f64Bytes(s.coact));
    out.set(`${p}.naee_in`, fromFloat32(s.naeeIn, 'F32'));
    out.set(`${p}.naee_out`, fromFloat32(s.naeeOut, 'F32'));
  }
  for (const [w, acc] of s.linears) {
    out.set(`rows/${w}`, f64Bytes(Float64Array.of(acc.rows)));
    out.set(`imatrix/${w}`, f64Bytes(acc.sumsq));
    if (acc.xtx) out.set(`hessian/${w}`, hessianBytes(acc.xtx));
  }
  return out;
}

/** A Hessian as the stats file stores it: the float64 sum rounded to F32. */
export const hessianBytes = (xtx: Float64Array): Uint8Array => fromFloat32(Float32Array.from(xtx), 'F32');

export class LayerCollector {
  private readonly E: number;
  private readonly h: number;
  readonly count: Float64Array;
  readonly softFreq: Float64Array;
  readonly weightSum: Float64Array;
  readonly reapSum: Float64Array;
  readonly outSum: Float64Array;
  readonly outAbsSum: Float64Array;
  readonly outAbsMax: Float64Array;
  readonly actAbsMax: Float64Array;
  readonly gram: Float64Array;
  readonly coact: Float64Array;
  readonly naeeIn: Float32Array;
  readonly naeeOut: Float32Array;
  readonly linears = new Map<string, LinearAcc>();
  private routing?: Routing;
  private pending: Promise<void>[] = [];
  tokens = 0;
  /** Index of the first token of the batch being observed, in the whole calibration set. */
  batchStart = 0;

  constructor(
    readonly arch: Architecture,
    readonly layer: number,
    private readonly be: Backend,
    private readonly hessians: boolean,
    /** Global token index → row of the NAEE sample (absent: not sampled). */
    private readonly naeeRows: Map<number, number>,
    inDims: Map<string, number>,
    /** calibrate --all-experts: every expert also sees the tokens not routed to it (linear inputs only). */
    private readonly allExperts = false,
    /** calibrate --hessian-weighting (src/calib/affinity.ts). */
    private readonly weighting: HessianWeighting = 'none',
  ) {
    this.E = arch.numExperts;
    this.h = arch.hidden;
    const E = this.E;
    const moe = arch.isMoeLayer(layer);
    const n = moe ? E : 0;
    this.count = new Float64Array(n);
    this.softFreq = new Float64Array(n);
    this.weightSum = new Float64Array(n);
    this.reapSum = new Float64Array(n);
    this.outSum = new Float64Array(n * this.h);
    this.outAbsSum = new Float64Array(n);
    this.outAbsMax = new Float64Array(n);
    this.actAbsMax = new Float64Array(n);
    this.gram = new Float64Array(n * n);
    this.coact = new Float64Array(n * n);
    this.naeeIn = new Float32Array(moe ? naeeRows.size * this.h : 0);
    this.naeeOut = new Float32Array(moe ? naeeRows.size * this.h : 0);
    for (const w of observedLinears(arch, layer)) {
      const d = inDims.get(w)!;
      this.linears.set(w, {
        rows: 0,
        inDim: d,
        sumsq: new Float64Array(d),
        xtx: hessians ? new Float64Array(d * d) : undefined,
      });
    }
  }

  observer(): ForwardObserver {
    return {
      linear: (w, x, rows, inDim, expertRows) => this.onLinear(w, x, rows, inDim, expertRows),
      allExperts: this.allExperts,
      router: (_l, r, _x, tokens) => this.onRouter(r, tokens),
      expert: (_l, e, y, tokens, slots) => this.onExpert(e, y, tokens, slots),
      moe: (_l, input, output, tokens) => this.onMoe(input, output, tokens),
      layer: (_l, _h, tokens) => {
        this.tokens += tokens;
      },
    };
  }

  /** Waits for the Gram products started by the observers of the last batch. */
  async settle(): Promise<void> {
    await Promise.all(this.pending);
    this.pending = [];
  }

  private onLinear(w: string, x: Float32Array, rows: number, inDim: number, expertRows?: ExpertRows): void {
    const acc = this.linears.get(w);
    if (!acc) return;
    acc.rows += rows;
    addSumSquares(acc.sumsq, x, rows, inDim);
    if (acc.xtx) {
      const copy = x.slice(0, rows * inDim);
      if (this.weighting === 'gate' && expertRows) scaleRowsBySqrt(copy, rows, inDim, expertRows.weights);
      this.pending.push(addGram(this.be, acc.xtx, copy, rows, inDim));
    }
    // down_proj's input is the expert's activation: its largest magnitude (on routed tokens) marks super experts.
    const role = this.arch.classify(w);
    if (role?.kind === 'expert' && role.proj === 'down' && expertRows?.routed !== false) {
      let m = this.actAbsMax[role.expert];
      for (let i = 0; i < rows * inDim; i++) m = math.max(m, math.abs(x[i]));
      this.actAbsMax[role.expert] = m;
    }
  }

  private onRouter(r: Routing, tokens: number): void {
    this.routing = r;
    const E = this.E;
    const k = r.experts.length / tokens;
    for (let n = 0; n < tokens; n++) {
      for (let e = 0; e < E; e++) this.softFreq[e] += r.probs[n * E + e];
      for (let a = 0; a < k; a++) {
        const ea = r.experts[n * k + a];
        this.count[ea]++;
        this.weightSum[ea] += r.weights[n * k + a];
        for (let b = 0; b < k; b++) this.coact[ea * E + r.experts[n * k + b]]++;
      }
    }
    this.pending.push(addGram(this.be, this.gram, r.logits.slice(0, tokens * E), tokens, E));
  }

  private onExpert(e: number, y: Float32Array, tokens: Int32Array, slots: Int32Array): void {
    const r = this.routing!;
    const h = this.h;
    const k = r.experts.length / (r.logits.length / this.E);
    let absMax = this.outAbsMax[e];
    // REAP: the routing weight times the output norm; an input-scaled expert's output already carries its weight
    const scaled = !!this.arch.routing.inputScaled;
    for (let i = 0; i < tokens.length; i++) {
      const g = scaled ? 1 : r.weights[tokens[i] * k + slots[i]];
      let sq = 0;
      let abs = 0;
      for (let j = 0; j < h; j++) {
        const v = y[i * h + j];
        sq += v * v;
        abs += math.abs(v);
        if (math.abs(v) > absMax) absMax = math.abs(v);
        this.outSum[e * h + j] += v;
      }
      this.reapSum[e] += g * math.sqrt(sq);
      this.outAbsSum[e] += abs / h;
    }
    this.outAbsMax[e] = absMax;
  }

  private onMoe(input: Float32Array, output: Float32Array, tokens: number): void {
    const h = this.h;
    for (let n = 0; n < tokens; n++) {
      const row = this.naeeRows.get(this.batchStart + n);
      if (row === undefined) continue;
      this.naeeIn.set(input.subarray(n * h, (n + 1) * h), row * h);
      this.naeeOut.set(output.subarray(n * h, (n + 1) * h), row * h);
    }
  }

  /** The layer's sums (the collector's own arrays, not copies). */
  sums(): LayerSums {
    return {
      tokens: this.tokens,
      count: this.count,
      softFreq: this.softFreq,
      weightSum: this.weightSum,
      reapSum: this.reapSum,
      outSum: this.outSum,
      outAbsSum: this.outAbsSum,
      outAbsMax: this.outAbsMax,
      actAbsMax: this.actAbsMax,
      gram: this.gram,
      coact: this.coact,
      naeeIn: this.naeeIn,
      naeeOut: this.naeeOut,
      linears: this.linears,
    };
  }

  /** The layer's tensors, in the order of stats.layerPlan. */
  tensors(plan: PlannedTensor[]): Map<string, Uint8Array> {
    const out = statsTensors(this.layer, this.sums());
    for (const t of plan) if (!out.has(t.name)) throw new Error(`stats tensor ${t.name} was not collected`);
    return out;
  }
}
