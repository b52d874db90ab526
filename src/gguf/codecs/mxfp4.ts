/**
 * MXFP4 (GGML_TYPE_MXFP4 = 39): blocks of 32, [u8 e (E8M0)][16 B: element j in the low nibble of byte j, element
 * j+16 in its high nibble] (block_mxfp4 in ggml-common.h; Q4_0's nibble order), w = kvalues[q] · 2^(e − 128) with
 * kvalues the E2M1 values doubled {0, 1, 2, 3, 4, 6, 8, 12, 0, −1, …, −12} (kvalues_mxfp4) and 2^(e − 128) =
 * ggml_e8m0_to_fp32_half(e) (ggml-impl.h): the same value as gpt-oss's E2M1[q] · 2^(e − 127).
 * The encoder is quantize_row_mxfp4_ref (ggml-quants.c): e = floor(log2f(amax)) − 2 + 127 (0 for an all-zero block;
 * clamped at 0 below 2^−125, where the C cast is undefined), each value the first code of least |kvalues·d − x|
 * in float32 (a tie goes to the lower code, toward zero; src/io/mxfp4.ts rounds ties to even, as the OCP rule).
 * gpt-oss's MXFP4 experts go into GGUF as they are (repackMxfp4): the same E8M0 byte and codes, nibbles reordered, as
 * llama.cpp's convert_hf_to_gguf.py does (GptOssModel.transform_nibble_layout, repack_mxfp4).
 */
import type { BlockCodec } from './codec';
import { f32, math } from './common';

const KVALUES = Int8Array.of(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
const BLOCK_BYTES = 17;
/** Bytes of codes of one block in Hugging Face's layout (two per byte, element 2j in byte j's low nibble). */
const HF_BLOCK_BYTES = 16;

/** ggml_e8m0_to_fp32_half: 2^(e − 128), exact for every e (2^−128 and 2^−127 are float32 subnormals). */
const half = (e: number) => 2 ** (e - 128);

function bestIndex(x: number, d: number): number {
  let best = 0;
  let err = math.abs(f32(KVALUES[0] * d - x));
  for (let i = 1; i < 16; i++) {
    const e = math.abs(f32(KVALUES[i] * d - x));
    if (e < err) {
      best = i;
      err = e;
    }
  }
  return best;
}

export const MXFP4: BlockCodec = {
  kind: 'block',
  type: 'MXFP4',
  id: 39,
  fileType: 38, // LLAMA_FTYPE_MOSTLY_MXFP4_MOE
  blockSize: 32,
  typeSize: BLOCK_BYTES,
  storedOnly: true,
  encode(row, xo, out, at) {
    let amax = 0; // a NaN is skipped, as in C
    for (let i = 0; i < 32; i++) if (amax < math.abs(row[xo + i])) amax = math.abs(row[xo + i]);
    const e = amax > 0 ? math.max(0, math.floor(f32(math.log2(amax))) - 2 + 127) : 0;
    const d = half(e);
    out[at] = e;
    for (let j = 0; j < 16; j++) out[at + 1 + j] = bestIndex(row[xo + j], d) | (bestIndex(row[xo + 16 + j], d) << 4);
  },
  decode(bytes, at, out, y) {
    const d = half(bytes[at]);
    for (let j = 0; j < 16; j++) {
      out[y + j] = KVALUES[bytes[at + 1 + j] & 15] * d;
      out[y + j + 16] = KVALUES[bytes[at + 1 + j] >> 4] * d;
    }
  },
};

/**
 * gpt-oss's MXFP4 (blocks [rows, groups, 16], scales [rows, groups]: src/io/mxfp4.ts) as ggml MXFP4 rows
 * [rows, groups × 17], bit-exact: no value is re-quantized. Output row r is source row `pick(r)` (default r): llama.cpp
 * splits gate_up_proj's interleaved rows into ffn_gate_exps (even rows) and ffn_up_exps (odd rows) this way.
 */
export function repackMxfp4(
  blocks: Uint8Array,
  scales: Uint8Array,
  rows: number,
  groups: number,
  pick: (row: number) => number = (r) => r,
): Uint8Array {
  const out = new Uint8Array(rows * groups * BLOCK_BYTES);
  const code = (src: number, k: number) => (blocks[src + (k >> 1)] >> ((k & 1) << 2)) & 15;
  for (let r = 0; r < rows; r++) {
    const s = pick(r);
    for (let g = 0; g < groups; g++) {
      const src = (s * groups + g) * HF_BLOCK_BYTES;
      const at = (r * groups + g) * BLOCK_BYTES;
      out[at] = scales[s * groups + g];
      for (let j = 0; j < 16; j++) out[at + 1 + j] = code(src, j) | (code(src, j + 16) << 4);
    }
  }
  return out;
}
