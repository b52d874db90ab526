/** The check every quantizer makes before it rounds a weight (moe quantize, GGUF export). */
import { CheckpointError } from '../errors';

/** NaN or Inf weights are refused: a grid over them is meaningless, and they mean the model is broken. */
export function requireFinite(w: Float32Array, name: string, dir: string, offset = 0): void {
  for (let i = 0; i < w.length; i++) {
    if (!Number.isFinite(w[i])) {
      throw new CheckpointError(`tensor ${name} holds ${Number.isNaN(w[i]) ? 'a NaN' : 'an infinite'} value (at index ${offset + i}); moe does not quantize non-finite weights`, { file: dir, hint: 'moe verify MODEL --nan lists every such tensor' });
    }
  }
}
