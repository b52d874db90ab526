/**
 * The float32 values of one part of a GGUF tensor (one HF tensor; a stacked expert tensor has one per expert), in
 * llama.cpp's layout: rows permuted from HF's rotate-half RoPE order, DeepSeek's kv_b_proj split per head, rows,
 * columns and values as an architecture's GgufTransform says (./transform.ts).
 * Non-finite weights are refused (src/quant/finite.ts).
 */
import type { Checkpoint, TensorReader } from '../io/checkpoint';
import { requireFinite } from '../quant/finite';
import { GgufSource, permuteRows } from './arch';
import { toGguf } from './transform';

export function loadPart(ckpt: Checkpoint, reader: TensorReader, t: GgufSource, i: number): Float32Array {
  if (t.values) return t.values;
  const w = reader.f32(t.from[i]);
  requireFinite(w, t.from[i], ckpt.dir);
  if (t.splitKvB) {
    // kv_b_proj [heads·(nope + v), kv_lora] → k_b [heads, kv_lora, nope] (transposed per head)
    // or v_b [heads, v, kv_lora].
    const { part, heads, nope, v } = t.splitKvB;
    const kvl = ckpt.tensors.get(t.from[i])!.shape[1];
    const out = new Float32Array(heads * (part === 'k' ? kvl * nope : v * kvl));
    for (let h = 0; h < heads; h++) {
      const base = h * (nope + v);
      if (part === 'k')
        for (let c = 0; c < kvl; c++)
          for (let n = 0; n < nope; n++) out[(h * kvl + c) * nope + n] = w[(base + n) * kvl + c];
      else out.set(w.subarray((base + nope) * kvl, (base + nope + v) * kvl), h * v * kvl);
    }
    return out;
  }
  const shape = ckpt.tensors.get(t.from[i])!.shape;
  if (t.transform) return toGguf(w, shape, t.transform);
  if (!t.permuteHeads) return w;
  return permuteRows(w, shape[0], shape[1], t.permuteHeads);
}
