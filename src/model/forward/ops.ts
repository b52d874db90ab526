/** Small element-wise kernels of the forward pass (the matmuls live in the backend). Row-major float32. */

/** RMSNorm over rows of `dim` (in place when out = x): x · rsqrt(mean(x²) + eps) · weight. */
export function rmsNorm(
  x: Float32Array,
  weight: Float32Array,
  dim: number,
  eps: number,
  out: Float32Array = new Float32Array(x.length),
): Float32Array {
  const rows = x.length / dim;
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    const inv = 1 / math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = math.fround(x[o + i] * inv) * weight[i];
  }
  return out;
}

/**
 * RMSNorm of a column block inside wider rows: rows of `stride`, normalising `dim` values from `offset`
 * (per-head q/k norms, MLA's latent norm). In place.
 */

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;
/**
 * nn.LayerNorm of each row of x [rows, dim] (biased variance, float64 sums, the result rounded to float32):
 * (x − mean) / √(var + eps) · weight + bias (PhiMoE's norms); with `keepMean`, RMSNorm plus the bias
 * (x / √(mean(x²) + eps) · weight + bias: llama.cpp's phimoe).
 */
export function layerNorm(
  x: Float32Array,
  weight: Float32Array,
  bias: Float32Array,
  dim: number,
  eps: number,
  out: Float32Array = new Float32Array(x.length),
  keepMean = false,
): Float32Array {
  const rows = x.length / dim;
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let mean = 0;
    if (!keepMean) for (let i = 0; i < dim; i++) mean += x[o + i];
    mean /= dim;
    let v = 0;
    for (let i = 0; i < dim; i++) v += (x[o + i] - mean) ** 2;
    const inv = 1 / math.sqrt(v / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = math.fround((x[o + i] - mean) * inv) * weight[i] + bias[i];
  }
  return out;
}

export function rmsNormStrided(
  x: Float32Array,
  rows: number,
  stride: number,
  offset: number,
  dim: number,
  weight: Float32Array | undefined,
  eps: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * stride + offset;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    const inv = 1 / math.sqrt(ss / dim + eps);
    // without a weight: Llama 4's weightless L2 norm of q and k
    if (!weight) for (let i = 0; i < dim; i++) x[o + i] = x[o + i] * inv;
    else for (let i = 0; i < dim; i++) x[o + i] = math.fround(x[o + i] * inv) * weight[i];
  }
}

export function silu(x: number): number {
  return x / (1 + math.exp(-x));
}

export function sigmoid(x: number): number {
  return 1 / (1 + math.exp(-x));
}

/**
 * SwiGLU on a fused [rows, 2·width] gate|up product: out[r, i] = silu(gate[r, i]) · up[r, i] → [rows, width].
 */
export function swiglu(gateUp: Float32Array, rows: number, width: number): Float32Array {
  const out = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    const g = r * 2 * width;
    const o = r * width;
    for (let i = 0; i < width; i++) out[o + i] = silu(gateUp[g + i]) * gateUp[g + width + i];
  }
  return out;
}

/** a += b, element-wise; with a scale, a += float32(b · scale) (GraniteMoE's residual_multiplier). */
export function addInPlace(a: Float32Array, b: Float32Array, scale = 1): void {
  if (scale === 1) for (let i = 0; i < a.length; i++) a[i] += b[i];
  else for (let i = 0; i < a.length; i++) a[i] += math.fround(b[i] * scale);
}

/** x × s in place (float32), unless s is 1. */
export function scaleInPlace(x: Float32Array, s: number): Float32Array {
  if (s !== 1) for (let i = 0; i < x.length; i++) x[i] *= s;
  return x;
}

/** Concatenates [rowsA, cols] and [rowsB, cols] row blocks: the fused gate|up weight. */
export function concatRows(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
