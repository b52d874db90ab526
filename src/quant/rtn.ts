/**
 * Round-to-nearest quantization, asymmetric, per group along the input dimension.
 *
 * Convention (shared by GPTQ and the packed layout, src/quant/format.ts): W is row-major [rows = out, cols = in].
 * Group g of row r covers columns [g·gs, min((g+1)·gs, cols)): ngroups = ceil(cols / gs), so a row shorter than
 * the group is one group and the last group of a row may be shorter. maxq = 2^bits − 1. Per group:
 *   xmin = min(0, min w), xmax = max(0, max w)          (zero is always on the grid, as in GPTQ)
 *   scale = bf16(round-to-nearest-even of (xmax − xmin) / maxq), or 1 when that is 0 (an all-zero group)
 *   zero = clamp(rint(−xmin / scale), 0, maxq)
 *   code = clamp(rint(w / scale) + zero, 0, maxq)       rint: round half to even, as torch.round
 *   w' = (code − zero) · scale, in float32
 * Scales are stored as BF16 (the range of float32; its 8-bit mantissa only moves the grid, never the decode) and
 * zero points as U8, so the dequantized values are exactly what the file decodes to.
 */
import type { Backend } from '../backend/backend';
import { floatToBf16Bits } from '../io/dtype';
import { groupCount } from '../io/packed';

export interface QuantSpec {
  bits: number;
  groupSize: number;
  /** zero = 2^(bits−1) and scale = bf16(2·max|w| / maxq) (compressed-tensors and GPTQ `sym`); else the header's. */
  symmetric?: boolean;
}

export interface QuantizedMatrix {
  rows: number;
  cols: number;
  bits: number;
  groupSize: number;
  /** [rows·cols], one code per weight, original column order. */
  codes: Uint8Array;
  /** [rows·ngroups], every value exactly representable in bf16. */
  scales: Float32Array;
  /** [rows·ngroups] */
  zeros: Uint8Array;
  /** Set when GPTQ fell back to round-to-nearest, with the reason. */
  fallback?: string;
}

// Math's functions as module constants: per-element code must not look up globals (slow in vm contexts, e.g. jest).
const { round, fround, min, max } = Math;
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x rounded to bfloat16 (nearest even), as a float32 value. */
export function bf16Round(x: number): number {
  u32[0] = floatToBf16Bits(x) << 16;
  return f32[0];
}

/** Round half to even. */
export function rint(x: number): number {
  const r = round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export { groupCount }; // defined with the packed layout it sizes (src/io/packed.ts)

/** A group's scale and zero point from its range (see the header). */
export function groupParams(
  xmin: number,
  xmax: number,
  maxq: number,
  symmetric = false,
): { scale: number; zero: number } {
  if (symmetric) {
    let scale = bf16Round(fround((2 * max(-xmin, xmax, 0)) / maxq));
    if (scale === 0) scale = 1;
    return { scale, zero: (maxq + 1) / 2 };
  }
  const lo = min(0, xmin);
  const hi = max(0, xmax);
  let scale = bf16Round(fround((hi - lo) / maxq));
  if (scale === 0) scale = 1;
  const zero = min(maxq, max(0, rint(fround(-lo / scale))));
  return { scale, zero };
}

/** The code of one weight on a group's grid. */
export function quantizeValue(w: number, scale: number, zero: number, maxq: number): number {
  const q = rint(fround(w / scale)) + zero;
  return q < 0 ? 0 : q > maxq ? maxq : q;
}

function checkSpec(spec: QuantSpec): void {
  if (!Number.isInteger(spec.bits) || spec.bits < 1 || spec.bits > 8)
    throw new RangeError(`bits ${spec.bits}: 1 to 8 supported`);
  if (!Number.isInteger(spec.groupSize) || spec.groupSize < 1) throw new RangeError(`group size ${spec.groupSize}`);
}

export function emptyQuantized(rows: number, cols: number, spec: QuantSpec): QuantizedMatrix {
  checkSpec(spec);
  const ng = groupCount(cols, spec.groupSize);
  return {
    rows,
    cols,
    bits: spec.bits,
    groupSize: spec.groupSize,
    codes: new Uint8Array(rows * cols),
    scales: new Float32Array(rows * ng),
    zeros: new Uint8Array(rows * ng),
  };
}

export function quantizeRtn(w: Float32Array, rows: number, cols: number, spec: QuantSpec): QuantizedMatrix {
  if (w.length !== rows * cols) throw new RangeError(`quantizeRtn: ${w.length} values for [${rows}, ${cols}]`);
  const q = emptyQuantized(rows, cols, spec);
  const maxq = (1 << spec.bits) - 1;
  const gs = spec.groupSize;
  const ng = groupCount(cols, gs);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let g = 0; g < ng; g++) {
      const a = g * gs;
      const b = Math.min(cols, a + gs);
      let lo = Infinity;
      let hi = -Infinity;
      for (let c = a; c < b; c++) {
        const v = w[row + c];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const { scale, zero } = groupParams(lo, hi, maxq, spec.symmetric);
      q.scales[r * ng + g] = scale;
      q.zeros[r * ng + g] = zero;
      for (let c = a; c < b; c++) q.codes[row + c] = quantizeValue(w[row + c], scale, zero, maxq);
    }
  }
  return q;
}

export function dequantize(q: QuantizedMatrix): Float32Array {
  const { rows, cols, groupSize: gs } = q;
  const ng = groupCount(cols, gs);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < ng; g++) {
      const s = q.scales[r * ng + g];
      const z = q.zeros[r * ng + g];
      const end = Math.min(cols, (g + 1) * gs);
      for (let c = g * gs; c < end; c++) out[r * cols + c] = (q.codes[r * cols + c] - z) * s;
    }
  }
  return out;
}

/**
 * Σ over rows of Δ_r·H·Δ_rᵀ with Δ = w − wq: the output error ‖(W − Q)X‖² when h = XᵀX. With only the diagonal
 * (the imatrix, Σx² per input column) it is Σ Δ²·diag, the error when inputs are uncorrelated.
 */
export async function outputError(
  w: Float32Array,
  wq: Float32Array,
  rows: number,
  cols: number,
  h: { diag: Float64Array } | { full: Float32Array | Float64Array },
  backend?: Backend,
): Promise<number> {
  const delta = new Float32Array(rows * cols);
  for (let i = 0; i < delta.length; i++) delta[i] = w[i] - wq[i];
  if ('diag' in h) {
    let s = 0;
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) s += delta[r * cols + c] * delta[r * cols + c] * h.diag[c];
    return s;
  }
  // ΔH: [rows, cols] (H is symmetric, so Δ·Hᵀ = Δ·H), then the row-wise dot with Δ.
  let dh: Float32Array | Float64Array;
  if (backend) {
    dh = await backend.linear(
      delta,
      h.full instanceof Float32Array ? h.full : Float32Array.from(h.full),
      rows,
      cols,
      cols,
    );
  } else {
    dh = new Float64Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < cols; k++) {
        const d = delta[r * cols + k];
        if (d === 0) continue;
        const hk = k * cols;
        for (let c = 0; c < cols; c++) dh[r * cols + c] += d * h.full[hk + c];
      }
    }
  }
  let s = 0;
  for (let i = 0; i < delta.length; i++) s += delta[i] * dh[i];
  return s;
}
