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

interface LinearAcc {
  rows: number;
  sumsq: Float64Array;
  xtx?: Float64Array;
  inDim: number;
}

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

  /** The layer's tensors, in the order of stats.layerPlan. */
  tensors(plan: PlannedTensor[]): Map<string, Uint8Array> {
    const out = new Map<string, Uint8Array>();
    const f64 = (a: Float64Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const p = `layers.${this.layer}.moe`;
    const E = this.E;
    const perRouted = (sum: Float64Array) => sum.map((s, e) => (this.count[e] > 0 ? s / this.count[e] : 0));
    if (this.arch.isMoeLayer(this.layer)) {
      out.set(`${p}.count`, f64(this.count));
      out.set(`${p}.soft_freq`, f64(this.softFreq.map((s) => s / this.tokens)));
      out.set(`${p}.weight_sum`, f64(this.weightSum));
      out.set(`${p}.reap`, f64(perRouted(this.reapSum)));
      out.set(`${p}.out_abs_mean`, f64(perRouted(this.outAbsSum)));
      out.set(`${p}.out_abs_max`, f64(this.outAbsMax));
      out.set(`${p}.act_abs_max`, f64(this.actAbsMax));
      const mean = new Float32Array(E * this.h);
      for (let e = 0; e < E; e++)
        for (let j = 0; j < this.h; j++)
          mean[e * this.h + j] = this.count[e] > 0 ? this.outSum[e * this.h + j] / this.count[e] : 0;
      out.set(`${p}.out_mean`, fromFloat32(mean, 'F32'));
      const cos = new Float64Array(E * E);
      for (let a = 0; a < E; a++) {
        for (let b = 0; b < E; b++) {
          const d = math.sqrt(this.gram[a * E + a] * this.gram[b * E + b]);
          cos[a * E + b] = d > 0 ? this.gram[a * E + b] / d : 0;
        }
      }
      out.set(`${p}.router_cos`, f64(cos));
      out.set(`${p}.coact`, f64(this.coact));
      out.set(`${p}.naee_in`, fromFloat32(this.naeeIn, 'F32'));
      out.set(`${p}.naee_out`, fromFloat32(this.naeeOut, 'F32'));
    }
    for (const [w, acc] of this.linears) {
      out.set(`rows/${w}`, f64(Float64Array.of(acc.rows)));
      out.set(`imatrix/${w}`, f64(acc.sumsq));
      if (acc.xtx) out.set(`hessian/${w}`, fromFloat32(Float32Array.from(acc.xtx), 'F32'));
    }
    for (const t of plan) if (!out.has(t.name)) throw new Error(`stats tensor ${t.name} was not collected`);
    return out;
  }
}
