/**
 * NAEE's reconstruction loss (Lu et al., 2024, "Not All Experts are Equal"): for a set of kept experts, the
 * squared error between the MoE layer's routed output with all experts and with the dropped experts' router
 * logits masked to −∞ (re-routed), on the calibrated MoE-block input samples. Shared experts cancel out.
 * Each expert's output on the samples is computed once; a candidate set then costs only the re-routing and
 * a k×k Gram per token: ‖Σ_i w_i y_i − z‖² = Σ_ij w_i w_j ⟨y_i, y_j⟩ − 2 Σ_i w_i ⟨y_i, z⟩ + ‖z‖².
 */
import type { Backend } from '../backend/backend';
import { TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import { outputWeights, route } from '../model/forward/moe';
import { expertOutputs } from '../model/experts';

export class ReconstructionProblem {
  private readonly logits: Float32Array;
  /** ⟨y_e(x_n), y_f(x_n)⟩ for every sample n: [n, E, E]. */
  private readonly gram: Float64Array;
  /** ⟨y_e(x_n), z_n⟩ with z the full routed output: [n, E]. */
  private readonly cross: Float64Array;
  private readonly zz: Float64Array;
  private readonly bias?: Float32Array;

  private constructor(
    readonly arch: Architecture,
    readonly n: number,
    logits: Float32Array,
    gram: Float32Array,
    bias?: Float32Array,
  ) {
    const E = arch.numExperts;
    this.logits = logits;
    this.bias = bias;
    this.gram = Float64Array.from(gram);
    // The reference output z: the routed output with every expert available.
    const full = route(logits, n, E, arch.routing, bias);
    const fullWeights = outputWeights(full, arch.routing);
    const k = arch.topK;
    this.cross = new Float64Array(n * E);
    this.zz = new Float64Array(n);
    for (let t = 0; t < n; t++) {
      for (let e = 0; e < E; e++) {
        let c = 0;
        for (let j = 0; j < k; j++) c += fullWeights[t * k + j] * this.gram[(t * E + e) * E + full.experts[t * k + j]];
        this.cross[t * E + e] = c;
      }
      let zz = 0;
      for (let j = 0; j < k; j++) zz += fullWeights[t * k + j] * this.cross[t * E + full.experts[t * k + j]];
      this.zz[t] = zz;
    }
  }

  /** Runs the router and every expert of `layer` on the samples x [n, hidden]. */
  static async build(
    be: Backend,
    reader: TensorReader,
    arch: Architecture,
    layer: number,
    x: Float32Array,
    n: number,
  ): Promise<ReconstructionProblem> {
    const h = arch.hidden;
    const biasKey = arch.correctionBiasKey(layer);
    const bias = biasKey ? reader.f32(biasKey) : undefined;
    // gpt-oss's router bias is part of its logits; DeepSeek-V3's is added to the scores by route().
    const logitBias = arch.routing.logitBias ? bias : undefined;
    const logits = await be.linear(x, reader.f32(arch.routerKey(layer)), n, h, arch.numExperts, logitBias);
    // Llama 4's experts take their routing weight on the input: expert e's output as it would enter z is E_e(σ_e · x),
    // σ_e = sigmoid(logit_e), the same whichever other experts are kept (no renormalisation), added with weight 1.
    const scales = arch.routing.inputScaled ? route(logits, n, arch.numExperts, arch.routing).probs : undefined;
    const outputs = await expertOutputs(be, reader, arch, layer, x, n, scales);
    // Stack the outputs per sample, [n, E, h], and take every sample's E×E Gram matrix in one batched product.
    const E = arch.numExperts;
    const stacked = new Float32Array(n * E * h);
    for (let t = 0; t < n; t++)
      for (let e = 0; e < E; e++) stacked.set(outputs[e].subarray(t * h, (t + 1) * h), (t * E + e) * h);
    const gram = await be.bmm(stacked, stacked, n, E, h, E, true);
    return new ReconstructionProblem(arch, n, logits, gram, bias);
  }

  /** Mean over samples of ‖z − z'‖² when only the experts in `keep` remain. */
  loss(keep: readonly number[]): number {
    const E = this.arch.numExperts;
    const k = this.arch.topK;
    const allowed = new Uint8Array(E);
    for (const e of keep) allowed[e] = 1;
    const r = route(this.logits, this.n, E, this.arch.routing, this.bias, allowed);
    const weights = outputWeights(r, this.arch.routing);
    let total = 0;
    for (let t = 0; t < this.n; t++) {
      let ww = 0;
      let wz = 0;
      for (let i = 0; i < k; i++) {
        const ei = r.experts[t * k + i];
        const wi = weights[t * k + i];
        wz += wi * this.cross[t * E + ei];
        for (let j = 0; j < k; j++) ww += wi * weights[t * k + j] * this.gram[(t * E + ei) * E + r.experts[t * k + j]];
      }
      total += Math.max(0, ww - 2 * wz + this.zz[t]);
    }
    return this.n > 0 ? total / this.n : 0;
  }
}
