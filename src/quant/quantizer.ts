/**
 * One weight at given bits: GPTQ from its calibrated Hessian, or round-to-nearest (asked for, or as GPTQ's
 * fallback when no calibrated rows reached the weight or its Hessian would not factor), and the weighted output
 * error f^α·w^β·‖(W−Q)X‖² per calibration row that the allocation minimises.
 */
import type { Backend } from '../backend/backend';
import { requireFinite } from './finite';
import { gptq } from './gptq';
import type { Target } from './plan';
import { dequantize, outputError, QuantizedMatrix, quantizeRtn } from './rtn';
import type { Inputs, Weighting } from './weighting';

export interface QuantizerOptions {
  method: 'rtn' | 'gptq';
  groupSize: number;
  actOrder: boolean;
  damp: number;
  /** Symmetric grids (zero point 2^(bits−1)): compressed-tensors output. */
  symmetric?: boolean;
  /** The model's folder, named by errors. */
  dir: string;
}

export class Quantizer {
  /** Weights quantized by RTN although GPTQ was asked. */
  readonly fallbacks = new Set<string>();

  constructor(
    readonly o: QuantizerOptions,
    readonly weighting: Weighting,
    private readonly be: Backend,
  ) {}

  async quantize(w: Float32Array, t: Target, bits: number, inputs: Inputs | undefined): Promise<QuantizedMatrix> {
    requireFinite(w, t.name, this.o.dir);
    const spec = { bits, groupSize: this.o.groupSize, symmetric: this.o.symmetric };
    if (this.o.method === 'gptq') {
      if (inputs?.full && inputs.rows > 0) {
        const q = await gptq(
          w,
          t.rows,
          t.cols,
          inputs.full,
          spec,
          { actOrder: this.o.actOrder, damp: this.o.damp },
          this.be,
        );
        if (q.fallback) this.fallbacks.add(t.name);
        return q;
      }
      this.fallbacks.add(t.name);
    }
    return quantizeRtn(w, t.rows, t.cols, spec);
  }

  /** f^α·w^β·‖(W−Q)X‖² per calibration row; 0 without calibrated inputs. */
  async weightedError(w: Float32Array, q: QuantizedMatrix, t: Target, inputs: Inputs | undefined): Promise<number> {
    if (!inputs || inputs.rows === 0) return 0;
    const h = inputs.full ? { full: inputs.full } : { diag: inputs.diag! };
    const err = await outputError(w, dequantize(q), t.rows, t.cols, h, this.be);
    return (this.weighting.factor(t.layer, t.cls === 'expert' ? t.expert : undefined) * err) / inputs.rows;
  }
}
