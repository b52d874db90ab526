/**
 * The matmul backend: the few dense products the forward pass spends its time in. Shapes are row-major
 * Float32Arrays; weights follow PyTorch's nn.Linear layout [out, in].
 * Implementations: onnxruntime-node (default), a plain TypeScript reference (tests), tfjs (opt-in).
 */

export interface Backend {
  readonly name: string;
  /**
   * y = x · wᵀ (+ bias): x [tokens, inDim], w [outDim, inDim], bias [outDim] → y [tokens, outDim].
   */
  linear(x: Float32Array, w: Float32Array, tokens: number, inDim: number, outDim: number, bias?: Float32Array): Promise<Float32Array>;
  /**
   * Batched product c[b] = a[b] · (transB ? b[b]ᵀ : b[b]):
   * a [batch, m, k]; b [batch, k, n] or, with transB, [batch, n, k] → c [batch, m, n].
   */
  bmm(a: Float32Array, b: Float32Array, batch: number, m: number, k: number, n: number, transB: boolean): Promise<Float32Array>;
  /** Frees native resources. */
  dispose(): Promise<void>;
}

export type BackendName = 'onnx' | 'ref' | 'tfjs';
