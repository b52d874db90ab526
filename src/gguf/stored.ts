/**
 * Expert weights stored as MXFP4 (gpt-oss: src/io/mxfp4.ts folds `*_blocks` and `*_scales` into one logical tensor,
 * src/model/fused.ts views it per expert) go into GGUF as ggml's MXFP4 bit-exactly: each expert's stored blocks and
 * scales are read as they are and repacked (src/gguf/codecs/mxfp4.ts repackMxfp4: the same E8M0 byte and E2M1
 * codes, nibbles reordered), never decoded and re-quantized. A per-expert view selects rows of the stored blocks:
 * gate_up_proj's blocks are [E, 2I, H/32, 16] with gate and up alternating on the rows, so ffn_gate_exps takes the
 * even rows and ffn_up_exps the odd ones, as llama.cpp's convert_hf_to_gguf.py (GptOssModel.repack_mxfp4) does.
 */
import type { Checkpoint, TensorReader } from '../io/checkpoint';
import type { TensorRef } from '../io/safetensors';
import type { GgufSource } from './arch';
import { repackMxfp4 } from './codecs/mxfp4';

interface StoredPart {
  blocks: TensorRef;
  scales: TensorRef;
  /** The expert: the slice of blocks and scales along their first axis. */
  index: number;
  /** Rows of the GGUF part (the weight's out dimension) and the stored row each comes from. */
  rows: number;
  pick: (row: number) => number;
  /** Blocks of 32 per row (the weight's in dimension / 32). */
  groups: number;
}

/** How an HF weight [out, in] is stored as MXFP4 rows, if it is a transposed per-expert view of an MXFP4 tensor. */
function storedPart(ckpt: Checkpoint, name: string): StoredPart | undefined {
  const ref = ckpt.tensors.get(name);
  const view = ref?.view;
  const m = view?.source.mxfp4;
  if (!ref || !view || !m || !view.transpose || ref.shape.length !== 2) return undefined;
  const [, out, groups] = m.blocks.shape;
  const cols = view.cols ?? { start: 0, step: 1, count: out };
  if (ref.shape[0] !== cols.count || ref.shape[1] !== groups * 32) return undefined;
  return {
    blocks: m.blocks,
    scales: m.scales,
    index: view.index,
    rows: cols.count,
    pick: (r) => cols.start + r * cols.step,
    groups,
  };
}

/** Whether every part of a GGUF weight is stored as MXFP4 (it is then written as ggml MXFP4, repacked). */
export function isStoredMxfp4(ckpt: Checkpoint, t: GgufSource): boolean {
  return (
    t.kind === 'weight' && !t.permuteHeads && !t.splitKvB && !t.transform && t.from.every((f) => storedPart(ckpt, f))
  );
}

/** A stored-MXFP4 weight's bytes as ggml MXFP4 rows, expert after expert, from the stored bytes only. */
export function repackStoredMxfp4(ckpt: Checkpoint, reader: TensorReader, t: GgufSource): Uint8Array {
  const parts = t.from.map((f) => {
    const p = storedPart(ckpt, f);
    if (!p) throw new RangeError(`repackStoredMxfp4: ${f} is not stored as MXFP4`);
    const blocks = reader.rawSlice(p.blocks, p.index);
    return repackMxfp4(blocks, reader.rawSlice(p.scales, p.index), p.rows, p.groups, p.pick);
  });
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}
