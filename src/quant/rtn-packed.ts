/**
 * Round-to-nearest from a weight's stored bytes straight to the packed layout (src/quant/format.ts), one row at a
 * time: decode the row to float32, find each group's range, round every weight and pack its code, with no
 * intermediate array of codes or of the whole tensor in float32. It is the same arithmetic as quantizeRtn
 * (src/quant/rtn.ts: groupParams, then code = clamp(rint(fround(w / scale)) + zero)) followed by packCodes and
 * BF16 scales, so its bytes are identical (test/quant/rtn-packed.test.ts); it only does the work in one pass.
 *
 * Rows [r0, r1) are written into buffers for the whole tensor, so that worker threads (src/quant/rtn-pool.ts) can
 * each fill a range of rows of the same shared buffers.
 */
import { DType, dtypeBytes, toFloat32 } from '../io/dtype';
import { packedRowBytes } from '../io/packed';
import { groupCount, groupParams, QuantSpec } from './rtn';
import { RTN_SIMD_WASM } from './rtn-simd-wasm';

/** The three stored parts of a packed weight: codes [rows, rowBytes], BF16 scales and U8 zeros [rows, ngroups]. */
export interface PackedBuffers {
  qweight: Uint8Array;
  scales: Uint8Array;
  qzeros: Uint8Array;
}

export function allocatePacked(rows: number, cols: number, spec: QuantSpec): PackedBuffers {
  const ng = groupCount(cols, spec.groupSize);
  return {
    qweight: new Uint8Array(rows * packedRowBytes(cols, spec.bits)),
    scales: new Uint8Array(rows * ng * 2),
    qzeros: new Uint8Array(rows * ng),
  };
}

/** 1.5·2⁵²: (x + M) − M rounds a double to an integer, half to even, for |x| < 2⁵¹ (the codes here are < 2⁹). */
const RINT_MAGIC = 6755399441055744;
const { fround } = Math;

/**
 * Quantizes rows [r0, r1) of a [rows, cols] weight held as `dtype` bytes in `src` into `out`.
 * Returns −1, or the flat index of the first NaN or infinite weight (nothing sensible can be written then).
 */
export function rtnPackRows(
  src: Uint8Array,
  dtype: DType,
  cols: number,
  r0: number,
  r1: number,
  spec: QuantSpec,
  out: PackedBuffers,
): number {
  if (dtype === 'BF16' && spec.groupSize % 8 === 0 && cols % spec.groupSize === 0) {
    const k = simdKernel();
    if (k) return simdRows(k, src, cols, r0, r1, spec, out);
  }
  return scalarRows(src, dtype, cols, r0, r1, spec, out);
}

/** The part of the WebAssembly global used here (the project's TypeScript libs do not declare it). */
declare const WebAssembly: {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
};

interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

interface SimdKernel {
  memory: WasmMemory;
  rtnRow: (src: number, cols: number, gs: number, maxq: number, codes: number, scales: number, zeros: number) => number;
}

let simd: SimdKernel | null | undefined;

/** The WebAssembly SIMD kernel (src/quant/rtn-simd.wat), or null where WebAssembly SIMD is missing. */
function simdKernel(): SimdKernel | null {
  if (simd === undefined) {
    try {
      const instance = new WebAssembly.Instance(new WebAssembly.Module(RTN_SIMD_WASM), {});
      simd = {
        memory: instance.exports.memory as WasmMemory,
        rtnRow: instance.exports.rtn_row as SimdKernel['rtnRow'],
      };
    } catch {
      simd = null;
    }
  }
  return simd;
}

/** BF16 rows whose groups are whole and a multiple of 8 wide, through the SIMD kernel: the same bytes as scalarRows. */
function simdRows(
  k: SimdKernel,
  src: Uint8Array,
  cols: number,
  r0: number,
  r1: number,
  spec: QuantSpec,
  out: PackedBuffers,
): number {
  const { bits, groupSize: gs } = spec;
  const ng = cols / gs;
  const rb = packedRowBytes(cols, bits);
  // wasm memory: the row's BF16 bytes, its codes, its scales, its zero points
  const codesAt = cols * 2;
  const scalesAt = codesAt + cols;
  const zerosAt = scalesAt + ng * 2;
  const need = zerosAt + ng;
  if (k.memory.buffer.byteLength < need) k.memory.grow(Math.ceil((need - k.memory.buffer.byteLength) / 65536));
  const mem = new Uint8Array(k.memory.buffer);
  const codes = mem.subarray(codesAt, codesAt + cols);
  const maxq = (1 << bits) - 1;
  for (let r = r0; r < r1; r++) {
    mem.set(src.subarray(r * cols * 2, (r + 1) * cols * 2), 0);
    if (k.rtnRow(0, cols, gs, maxq, codesAt, scalesAt, zerosAt) !== 0) {
      // a NaN or ±Inf in this row (the SIMD kernel stopped at its group): the scalar kernel names the first one
      const bad = scalarRows(src, 'BF16', cols, r, r + 1, spec, out);
      if (bad >= 0) return bad;
      continue; // not reached while both kernels agree on what is finite; if so, the scalar kernel wrote the row
    }
    packRow(codes, cols, bits, out.qweight, r * rb);
    out.scales.set(mem.subarray(scalesAt, scalesAt + ng * 2), r * ng * 2);
    out.qzeros.set(mem.subarray(zerosAt, zerosAt + ng), r * ng);
  }
  return -1;
}

function scalarRows(
  src: Uint8Array,
  dtype: DType,
  cols: number,
  r0: number,
  r1: number,
  spec: QuantSpec,
  out: PackedBuffers,
): number {
  const { bits, groupSize: gs } = spec;
  const maxq = (1 << bits) - 1;
  const ng = groupCount(cols, gs);
  const rb = packedRowBytes(cols, bits);
  const size = dtypeBytes(dtype);
  const row = new Float32Array(cols);
  const rowBits = new Uint32Array(row.buffer);
  const f = new Float32Array(1);
  const fBits = new Uint32Array(f.buffer);
  const u16 =
    dtype === 'BF16' && src.byteOffset % 2 === 0
      ? new Uint16Array(src.buffer, src.byteOffset, src.byteLength >>> 1)
      : null;
  const codes = new Int32Array(cols);
  const { qweight, scales, qzeros } = out;
  for (let r = r0; r < r1; r++) {
    // Decode the row (BF16: group by group, with the range below; other dtypes: whole).
    const base = r * cols;
    if (!u16) row.set(toFloat32(src.subarray(base * size, (base + cols) * size), dtype));
    for (let g = 0; g < ng; g++) {
      const a = g * gs;
      const b = a + gs < cols ? a + gs : cols;
      let lo = Infinity;
      let hi = -Infinity;
      let finite = 0; // stays 0 unless a value is NaN or ±Inf (then v·0 is NaN)
      if (u16) for (let c = a; c < b; c++) rowBits[c] = u16[base + c] << 16;
      for (let c = a; c < b; c++) {
        const v = row[c];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        finite += v * 0;
      }
      if (finite !== 0) {
        for (let c = a; c < b; c++) if (!Number.isFinite(row[c])) return r * cols + c;
      }
      const { scale, zero } = groupParams(lo, hi, maxq);
      const k = r * ng + g;
      f[0] = scale;
      const sb = fBits[0] >>> 16; // scale is a bf16 value: its top half is exact
      scales[2 * k] = sb & 0xff;
      scales[2 * k + 1] = sb >>> 8;
      qzeros[k] = zero;
      // code = clamp(rint(w / scale) + zero, 0, maxq). Rounding is monotonic in w, so when the group's extremes
      // land on the grid no weight needs the clamp (the usual case); otherwise it is branch-free on int32.
      const qlo = ((fround(lo / scale) + RINT_MAGIC - RINT_MAGIC) | 0) + zero;
      const qhi = ((fround(hi / scale) + RINT_MAGIC - RINT_MAGIC) | 0) + zero;
      if (qlo >= 0 && qhi <= maxq) {
        for (let c = a; c < b; c++) codes[c] = ((fround(row[c] / scale) + RINT_MAGIC - RINT_MAGIC) | 0) + zero;
      } else {
        for (let c = a; c < b; c++) {
          let q = ((fround(row[c] / scale) + RINT_MAGIC - RINT_MAGIC) | 0) + zero;
          q &= ~(q >> 31);
          const over = q - maxq;
          codes[c] = q - (over & ~(over >> 31));
        }
      }
    }
    packRow(codes, cols, bits, qweight, r * rb);
  }
  return -1;
}

/** One row of codes packed LSB-first from byte `p` on (the layout of src/quant/pack.ts). */
function packRow(codes: Int32Array | Uint8Array, cols: number, bits: number, dst: Uint8Array, p: number): void {
  let c = 0;
  if (bits === 8) {
    for (; c < cols; c++) dst[p + c] = codes[c];
    return;
  }
  if (bits === 4) {
    for (; c + 1 < cols; c += 2) dst[p++] = codes[c] | (codes[c + 1] << 4);
  } else if (bits === 2) {
    for (; c + 3 < cols; c += 4) dst[p++] = codes[c] | (codes[c + 1] << 2) | (codes[c + 2] << 4) | (codes[c + 3] << 6);
  }
  // Any width (and the tail of a row): a bit accumulator.
  let acc = 0;
  let nb = 0;
  for (; c < cols; c++) {
    acc |= codes[c] << nb;
    nb += bits;
    while (nb >= 8) {
      dst[p++] = acc & 0xff;
      acc >>>= 8;
      nb -= 8;
    }
  }
  if (nb > 0) dst[p] = acc & 0xff;
}
