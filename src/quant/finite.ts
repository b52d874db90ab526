/** The check every quantizer (packed and GGUF) runs on a weight before computing a grid over it. */
import { CheckpointError } from '../errors';

/** NaN or Inf weights are refused: a grid over them is meaningless, and they mean the model is broken. */
export function requireFinite(w: Float32Array, name: string, dir: string, offset = 0): void {
  for (let i = 0; i < w.length; i++) {
    // v − v is 0 for every finite v and NaN for NaN and ±Inf. No global lookup per element (Number.isFinite is one,
    // slow inside vm contexts such as jest's: 7 s of a 7.5 s GPTQ LP run there).
    const v = w[i];
    if (v - v !== 0) {
      const what = Number.isNaN(w[i]) ? 'a NaN' : 'an infinite';
      throw new CheckpointError(
        `tensor ${name} holds ${what} value (at index ${offset + i}); moe does not quantize non-finite weights`,
        { file: dir, hint: 'moe verify MODEL --nan lists every such tensor' },
      );
    }
  }
}
