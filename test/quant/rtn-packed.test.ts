/**
 * The fused RTN kernels (stored bytes → packed parts, src/quant/rtn-packed.ts: WebAssembly SIMD for BF16 rows of
 * whole groups, scalar TypeScript otherwise) against the two-step path they
 * replace for plain RTN (quantizeRtn, then packCodes and BF16 scales): identical bytes for every bit-width, group
 * sizes that do and do not divide the row, each floating dtype, unaligned sources and row ranges; and the index of
 * the first NaN or infinite weight.
 */
import { fromFloat32, toFloat32, DType } from '../../src/io/dtype';
import { packCodes } from '../../src/quant/pack';
import { quantizeRtn } from '../../src/quant/rtn';
import { allocatePacked, rtnPackRows } from '../../src/quant/rtn-packed';
import { RtnPool } from '../../src/quant/rtn-pool';

function weights(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
  // mostly small values, a few outliers, some all-positive and all-zero stretches
  return Float32Array.from({ length: n }, (_, i) =>
    i % 997 < 40 ? 0 : i % 613 < 30 ? next() * 0.05 : (next() - 0.5) * 0.1 * (next() < 0.02 ? 10 : 1),
  );
}

function twoStep(w: Float32Array, rows: number, cols: number, bits: number, groupSize: number) {
  const q = quantizeRtn(w, rows, cols, { bits, groupSize });
  return { qweight: packCodes(q.codes, rows, cols, bits), scales: fromFloat32(q.scales, 'BF16'), qzeros: q.zeros };
}

describe('fused RTN to packed bytes', () => {
  const shapes: [number, number][] = [
    [5, 256],
    [3, 200], // 128 + a short last group
    [4, 45], // a row shorter than the group; odd packed tails
  ];
  for (const dtype of ['BF16', 'F16', 'F32'] as DType[]) {
    for (const bits of [1, 2, 3, 4, 5, 6, 7, 8]) {
      for (const groupSize of [32, 128]) {
        test(`${dtype}, ${bits} bits, groups of ${groupSize}`, () => {
          for (const [rows, cols] of shapes) {
            const stored = fromFloat32(weights(rows * cols, rows * 31 + cols + bits), dtype);
            const w = toFloat32(stored, dtype); // the values the stored bytes hold
            const want = twoStep(w, rows, cols, bits, groupSize);
            const got = allocatePacked(rows, cols, { bits, groupSize });
            expect(rtnPackRows(stored, dtype, cols, 0, rows, { bits, groupSize }, got)).toBe(-1);
            expect(Buffer.from(got.qweight).equals(Buffer.from(want.qweight))).toBe(true);
            expect(Buffer.from(got.scales).equals(Buffer.from(want.scales))).toBe(true);
            expect(Buffer.from(got.qzeros).equals(Buffer.from(want.qzeros))).toBe(true);
          }
        });
      }
    }
  }

  test('an unaligned source and rows filled range by range give the same bytes', () => {
    const [rows, cols] = [6, 300];
    const stored = fromFloat32(weights(rows * cols, 7), 'BF16');
    const shifted = new Uint8Array(stored.length + 1).subarray(1);
    shifted.set(stored);
    const spec = { bits: 3, groupSize: 128 };
    const whole = allocatePacked(rows, cols, spec);
    rtnPackRows(stored, 'BF16', cols, 0, rows, spec, whole);
    const parts = allocatePacked(rows, cols, spec);
    for (const [a, b] of [
      [0, 1],
      [1, 4],
      [4, 6],
    ])
      rtnPackRows(shifted, 'BF16', cols, a, b, spec, parts);
    expect(Buffer.from(parts.qweight).equals(Buffer.from(whole.qweight))).toBe(true);
    expect(Buffer.from(parts.scales).equals(Buffer.from(whole.scales))).toBe(true);
  });

  test('reports the first NaN or infinite weight', () => {
    const [rows, cols] = [4, 256];
    for (const [at, value] of [
      [517, NaN],
      [3, Infinity],
      [1000, -Infinity],
    ] as [number, number][]) {
      const w = weights(rows * cols, 3);
      w[at] = value;
      w[at + 7] = NaN;
      for (const dtype of ['F32', 'BF16'] as DType[]) {
        // BF16 with whole groups takes the WebAssembly SIMD kernel, which hands a bad row to the scalar one
        const stored = fromFloat32(w, dtype);
        expect(
          rtnPackRows(
            stored,
            dtype,
            cols,
            0,
            rows,
            { bits: 4, groupSize: 128 },
            allocatePacked(rows, cols, { bits: 4, groupSize: 128 }),
          ),
        ).toBe(at);
      }
    }
  });

  test("the pool (in this thread under jest) returns the kernel's bytes", async () => {
    const [rows, cols] = [7, 256];
    const stored = fromFloat32(weights(rows * cols, 11), 'BF16');
    const pool = new RtnPool(2);
    try {
      const want = twoStep(toFloat32(stored, 'BF16'), rows, cols, 4, 128);
      // buffers larger than the weight, and dirty from a previous use: every byte of the views must be written
      const slot = pool.slot(stored.length + 64, {
        qweight: want.qweight.length + 9,
        scales: want.scales.length + 9,
        qzeros: want.qzeros.length + 9,
      });
      for (const part of [slot.src, slot.out.qweight, slot.out.scales, slot.out.qzeros]) part.fill(0xa5);
      const src = slot.src.subarray(0, stored.length);
      src.set(stored);
      const out = {
        qweight: slot.out.qweight.subarray(0, want.qweight.length),
        scales: slot.out.scales.subarray(0, want.scales.length),
        qzeros: slot.out.qzeros.subarray(0, want.qzeros.length),
      };
      const bad = await pool.quantize(src, 'BF16', rows, cols, { bits: 4, groupSize: 128 }, out);
      expect(bad).toBe(-1);
      expect(Buffer.from(out.qweight).equals(Buffer.from(want.qweight))).toBe(true);
      expect(Buffer.from(out.scales).equals(Buffer.from(want.scales))).toBe(true);
      expect(Buffer.from(out.qzeros).equals(Buffer.from(want.qzeros))).toBe(true);
    } finally {
      await pool.close();
    }
  });
});
