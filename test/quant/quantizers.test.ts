/**
 * The quantization kernels: the packed layout round trip, RTN against an independently written per-element
 * reference, GPTQ's output error against RTN's, the output-error formula against an explicit ‖(W−Q)X‖², and the
 * Cholesky factorisation behind GPTQ.
 */
import { RefBackend } from '../../src/backend/ref';
import { createBackend } from '../../src/backend/index';
import type { Backend } from '../../src/backend/backend';
import { floatToBf16Bits, fromFloat32 } from '../../src/io/dtype';
import { gptq } from '../../src/quant/gptq';
import { choleskyWithInverse, upperCholeskyOfInverse } from '../../src/quant/linalg';
import { dequantizePacked, unpackCodes } from '../../src/io/packed';
import { packCodes } from '../../src/quant/pack';
import { dequantize, groupCount, outputError, quantizeRtn } from '../../src/quant/rtn';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

function matrix(rows: number, cols: number, seed: number, scale = 0.1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: rows * cols }, () => (r() - 0.5) * scale * (r() < 0.02 ? 8 : 1));
}

/** Calibration-like inputs with correlated columns and a few large ones, and their Gram matrix XᵀX. */
function inputs(n: number, cols: number, seed: number): { X: Float32Array; H: Float32Array } {
  const r = rng(seed);
  const X = new Float32Array(n * cols);
  for (let t = 0; t < n; t++) {
    for (let c = 0; c < cols; c++)
      X[t * cols + c] = (r() - 0.5) * (c % 17 === 0 ? 6 : 1) + (c > 0 ? 0.6 * X[t * cols + c - 1] : 0);
  }
  const H = new Float32Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let t = 0; t < n; t++) s += X[t * cols + i] * X[t * cols + j];
      H[i * cols + j] = s;
    }
  }
  return { X, H };
}

/** ‖(W − Q)Xᵀ‖² computed directly from the inputs. */
function explicitError(
  w: Float32Array,
  q: Float32Array,
  X: Float32Array,
  rows: number,
  cols: number,
  n: number,
): number {
  let s = 0;
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < n; t++) {
      let y = 0;
      for (let c = 0; c < cols; c++) y += (w[r * cols + c] - q[r * cols + c]) * X[t * cols + c];
      s += y * y;
    }
  }
  return s;
}

/** A deliberately plain RTN: per element, by the documented formulas, with numpy's round-half-to-even. */
function naiveRtn(w: Float32Array, rows: number, cols: number, bits: number, gs: number): Float32Array {
  const bf16 = (x: number) => new Float32Array(new Uint32Array([floatToBf16Bits(x) << 16]).buffer)[0];
  const roundEven = (x: number) => {
    const f = Math.floor(x);
    const d = x - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  };
  const maxq = 2 ** bits - 1;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g0 = Math.floor(c / gs) * gs;
      const vals = Array.from(w.subarray(r * cols + g0, r * cols + Math.min(cols, g0 + gs)));
      const lo = Math.min(0, ...vals);
      const hi = Math.max(0, ...vals);
      let scale = bf16(Math.fround((hi - lo) / maxq));
      if (scale === 0) scale = 1;
      const zero = Math.min(maxq, Math.max(0, roundEven(Math.fround(-lo / scale))));
      const q = Math.min(maxq, Math.max(0, roundEven(Math.fround(w[r * cols + c] / scale)) + zero));
      out[r * cols + c] = (q - zero) * scale;
    }
  }
  return out;
}

const SHAPES: [number, number, number][] = [
  [8, 256, 128],
  [5, 200, 128], // the last group of each row is shorter
  [7, 40, 128], // rows shorter than a group: one group per row
  [4, 96, 32],
];

describe('packed layout', () => {
  test.each([2, 3, 4, 5, 8])(
    '%i bits: unpack(pack(codes)) = codes and the packed decode equals dequantize bit for bit',
    (bits) => {
      for (const [rows, cols, gs] of SHAPES) {
        const q = quantizeRtn(matrix(rows, cols, bits * 31 + cols), rows, cols, { bits, groupSize: gs });
        const packed = packCodes(q.codes, rows, cols, bits);
        expect(packed.length).toBe(rows * Math.ceil((cols * bits) / 8));
        expect(Buffer.from(unpackCodes(packed, rows, cols, bits)).equals(Buffer.from(q.codes))).toBe(true);
        const fast = dequantizePacked(packed, fromFloat32(q.scales, 'BF16'), q.zeros, rows, cols, bits, gs);
        expect(Buffer.from(fast.buffer).equals(Buffer.from(dequantize(q).buffer))).toBe(true);
        // Scales survive the trip through BF16 exactly; zeros and codes lie on the grid.
        expect(Buffer.from(fromFloat32(q.scales, 'BF16')).length).toBe(2 * rows * groupCount(cols, gs));
        expect(Math.max(...q.codes)).toBeLessThanOrEqual(2 ** bits - 1);
      }
    },
  );
});

describe('RTN', () => {
  test.each([2, 3, 4, 8])('%i bits equals a plain per-element reference bit for bit', (bits) => {
    for (const [rows, cols, gs] of SHAPES) {
      const w = matrix(rows, cols, 7 * bits + rows);
      // Edge cases: an all-zero group, a constant group, an all-positive group, exact halfway values.
      w.fill(0, 0, Math.min(gs, cols));
      if (rows > 1) w.fill(0.03, cols, cols + Math.min(gs, cols));
      if (rows > 2) for (let c = 0; c < Math.min(gs, cols); c++) w[2 * cols + c] = 0.01 + c * 1e-4;
      if (rows > 3) for (let c = 0; c < Math.min(gs, cols); c++) w[3 * cols + c] = (c % 2 ? 0.5 : -0.5) * (c / 8);
      const mine = dequantize(quantizeRtn(w, rows, cols, { bits, groupSize: gs }));
      const ref = naiveRtn(w, rows, cols, bits, gs);
      expect(Buffer.from(mine.buffer).equals(Buffer.from(ref.buffer))).toBe(true);
    }
  });

  test('more bits, smaller error; an all-zero group decodes to zeros', () => {
    const w = matrix(16, 256, 3);
    w.fill(0, 0, 128);
    let last = Infinity;
    for (const bits of [2, 3, 4, 8]) {
      const d = dequantize(quantizeRtn(w, 16, 256, { bits, groupSize: 128 }));
      expect(d.subarray(0, 128).every((x) => x === 0)).toBe(true);
      const err = w.reduce((s, x, i) => s + (x - d[i]) ** 2, 0);
      expect(err).toBeLessThan(last);
      last = err;
    }
  });
});

describe('output error', () => {
  test('the Hessian form equals ‖(W−Q)X‖² computed from X, and the diagonal form equals Σ Δ²·Σx²', async () => {
    const rows = 6;
    const cols = 48;
    const n = 64;
    const { X, H } = inputs(n, cols, 5);
    const w = matrix(rows, cols, 9);
    const q = dequantize(quantizeRtn(w, rows, cols, { bits: 3, groupSize: 16 }));
    const direct = explicitError(w, q, X, rows, cols, n);
    expect(Math.abs((await outputError(w, q, rows, cols, { full: H })) / direct - 1)).toBeLessThan(1e-5);
    expect(Math.abs((await outputError(w, q, rows, cols, { full: H }, new RefBackend())) / direct - 1)).toBeLessThan(
      1e-5,
    );
    const diag = Float64Array.from({ length: cols }, (_, c) => H[c * cols + c]);
    let expected = 0;
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) expected += (w[r * cols + c] - q[r * cols + c]) ** 2 * diag[c];
    expect(Math.abs((await outputError(w, q, rows, cols, { diag })) / expected - 1)).toBeLessThan(1e-12);
  });
});

describe('Cholesky', () => {
  test('L·Lᵀ = A and L·L⁻¹ = I through the blocked recursion; U of the inverse satisfies Uᵀ·U·H = I', async () => {
    const n = 230; // several levels of recursion below and above the leaf size
    const { H } = inputs(400, n, 11);
    for (let i = 0; i < n; i++) H[i * n + i] += 1;
    const { L, Li } = await choleskyWithInverse(H, n);
    let worst = 0;
    let worstI = 0;
    const scale = Math.max(...Array.from({ length: n }, (_, i) => H[i * n + i]));
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let a = 0;
        let id = 0;
        for (let k = 0; k < n; k++) {
          a += L[i * n + k] * L[j * n + k];
          id += L[i * n + k] * Li[k * n + j];
        }
        if (j > i) expect(L[i * n + j]).toBe(0);
        worst = Math.max(worst, Math.abs(a - H[i * n + j]) / scale);
        worstI = Math.max(worstI, Math.abs(id - (i === j ? 1 : 0)));
      }
    }
    expect(worst).toBeLessThan(1e-5);
    expect(worstI).toBeLessThan(1e-3);
    const U = await upperCholeskyOfInverse(H, n);
    // (Uᵀ U) H = I, checked on a few columns.
    for (const col of [0, 57, n - 1]) {
      const hx = Array.from({ length: n }, (_, i) => H[i * n + col]);
      const u = Array.from({ length: n }, (_, i) => hx.reduce((s, v, k) => s + U[i * n + k] * v, 0));
      for (let i = 0; i < n; i++) {
        const v = u.reduce((s, x, k) => s + U[k * n + i] * x, 0);
        expect(Math.abs(v - (i === col ? 1 : 0))).toBeLessThan(2e-3);
      }
      for (let i = 1; i < n; i++) expect(U[i * n + i - 1]).toBe(0);
    }
  });
});

describe('GPTQ', () => {
  let be: Backend;
  beforeAll(async () => {
    be = await createBackend('onnx', { threads: 1 });
  });
  afterAll(() => be.dispose());

  const cases: [number, number, number, number][] = [
    [16, 256, 128, 2],
    [16, 256, 128, 3],
    [12, 200, 64, 4],
    [8, 300, 128, 8],
  ];
  test.each(cases)(
    '[%i, %i] groups of %i at %i bits: smaller ‖WX − QX‖ than RTN, with and without act-order, on the backend and in plain JS',
    async (rows, cols, gs, bits) => {
      const { X, H } = inputs(512, cols, rows + cols);
      const w = matrix(rows, cols, bits * 13);
      const rtn = await outputError(w, dequantize(quantizeRtn(w, rows, cols, { bits, groupSize: gs })), rows, cols, {
        full: H,
      });
      const js = await gptq(w, rows, cols, H, { bits, groupSize: gs });
      const onBackend = await gptq(w, rows, cols, H, { bits, groupSize: gs }, {}, be);
      const act = await gptq(w, rows, cols, H, { bits, groupSize: gs }, { actOrder: true }, be);
      const eJs = await outputError(w, dequantize(js), rows, cols, { full: H });
      const eBe = await outputError(w, dequantize(onBackend), rows, cols, { full: H });
      const eAct = await outputError(w, dequantize(act), rows, cols, { full: H });
      for (const e of [eJs, eBe, eAct]) expect(e).toBeLessThan(rtn);
      expect(Math.abs(eBe / eJs - 1)).toBeLessThan(0.02);
      expect(js.fallback).toBeUndefined();
      // The measured error is the real one.
      expect(Math.abs(eJs / explicitError(w, dequantize(js), X, rows, cols, 512) - 1)).toBeLessThan(1e-4);
    },
  );

  test('a column no input reached is zeroed and ignored; a zero Hessian falls back to RTN and says so', async () => {
    const rows = 8;
    const cols = 64;
    const { H } = inputs(256, cols, 2);
    for (let i = 0; i < cols; i++) {
      H[5 * cols + i] = 0;
      H[i * cols + 5] = 0;
    }
    const w = matrix(rows, cols, 4);
    const q = await gptq(w, rows, cols, H, { bits: 4, groupSize: 32 });
    const d = dequantize(q);
    for (let r = 0; r < rows; r++) expect(d[r * cols + 5]).toBe(0);
    expect(await outputError(w, d, rows, cols, { full: H })).toBeLessThan(
      await outputError(w, dequantize(quantizeRtn(w, rows, cols, { bits: 4, groupSize: 32 })), rows, cols, { full: H }),
    );
    const zero = await gptq(w, rows, cols, new Float32Array(cols * cols).fill(0), { bits: 4, groupSize: 32 });
    expect(zero.fallback).toBeUndefined(); // every column dead: H becomes I, plain rounding of zeroed weights
    const nan = new Float32Array(cols * cols).fill(NaN);
    const bad = await gptq(w, rows, cols, nan, { bits: 4, groupSize: 32 });
    expect(bad.fallback).toMatch(/not positive definite/);
    expect(
      Buffer.from(dequantize(bad).buffer).equals(
        Buffer.from(dequantize(quantizeRtn(w, rows, cols, { bits: 4, groupSize: 32 })).buffer),
      ),
    ).toBe(true);
  });
});
