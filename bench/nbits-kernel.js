#!/usr/bin/env node
/**
 * 4-bit weights on the CPU: onnxruntime's MatMulNBits (com.microsoft, the int4 kernel the issue names; accuracy
 * levels 0 and 1 compute in float32, 4 with int8 activations) against what `moe eval` does with a packed 4-bit
 * weight: decode it to float32 with the WebAssembly SIMD loop (src/io/wasm-arena.ts groups) and run onnxruntime's
 * float32 product (MLAS sgemm). Shapes of the bench model (bench/lib.js QWEN3_BENCH): an expert's gate (or up) and
 * down projections for the ~128 tokens a layer routes to it, and q_proj over a 1,024-token batch; groups of 128.
 *
 *   npm run build && node bench/nbits-kernel.js [--threads 2]
 *
 * Prints milliseconds per product (median of ~1 s of calls) and the relative error of each kernel against the
 * float32 product of the dequantized weight.
 */
'use strict';
const path = require('node:path');
const lib = require('./lib');

const { DIST, option, table, timeCalls } = lib;
const THREADS = Number(option('--threads', '2'));
const GROUP = 128;
const SHAPES = [
  ['expert gate/up', 128, 1024, 384],
  ['expert down', 128, 384, 1024],
  ['q_proj, 1024 tokens', 1024, 1024, 1024],
];

async function main() {
  const ort = require(require.resolve('onnxruntime-node', { paths: [path.join(DIST, '..')] }));
  const { encodeModel } = require(path.join(DIST, 'backend', 'onnx-graph.js'));
  const { createBackend } = require(path.join(DIST, 'backend', 'index.js'));
  const { WasmArena } = require(path.join(DIST, 'io', 'wasm-arena.js'));
  const be = await createBackend('onnx', { threads: THREADS });
  const arena = WasmArena.create(256 << 20);
  const next = lib.lcg(4);
  const options = {
    intraOpNumThreads: THREADS,
    interOpNumThreads: 1,
    enableCpuMemArena: true,
    logSeverityLevel: 3,
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  };
  const rows = [];
  for (const [label, M, K, N] of SHAPES) {
    const blocks = K / GROUP;
    const zpBytes = Math.ceil(blocks / 2);
    const codes = arena.scratch(N * (K / 2));
    for (let i = 0; i < codes.length; i++) codes[i] = next() & 255;
    const scales = arena.alloc(N * blocks);
    const zeros = arena.alloc(N * blocks);
    const zpPacked = new Uint8Array(N * zpBytes);
    for (let n = 0; n < N; n++)
      for (let b = 0; b < blocks; b++) {
        scales[n * blocks + b] = 0.001 + (next() % 1000) / 1e5;
        const z = next() & 15;
        zeros[n * blocks + b] = z;
        zpPacked[n * zpBytes + (b >> 1)] |= z << ((b & 1) * 4);
      }
    const w = arena.alloc(N * K);
    const x = Float32Array.from({ length: M * K }, () => (next() % 2001) / 1000 - 1);
    arena.groups(4, codes, scales, zeros, w, GROUP);
    const want = await be.linear(x, w, M, K, N);
    const relError = (y) => {
      let e = 0;
      let s = 0;
      for (let i = 0; i < y.length; i++) [e, s] = [e + (y[i] - want[i]) ** 2, s + want[i] ** 2];
      return Math.sqrt(e / s);
    };
    const y = new Float32Array(M * N);
    const moeMs = 1000 * (await timeCalls(async () => {
      arena.groups(4, codes, scales, zeros, w, GROUP);
      await be.linear(x, w, M, K, N, undefined, y);
    }, { seconds: 1 })); // prettier-ignore
    const sgemmMs = 1000 * (await timeCalls(() => be.linear(x, w, M, K, N, undefined, y), { seconds: 1 }));
    const row = [label, `${M}×${K}×${N}`, moeMs.toFixed(2), sgemmMs.toFixed(2)];
    for (const level of [0, 1, 4]) {
      const model = encodeModel({
        name: 'matmul_nbits',
        inputs: [
          { name: 'A', dims: ['M', K] },
          { name: 'B', dims: [N, blocks, GROUP / 2], type: 'uint8' },
          { name: 'S', dims: [N * blocks] },
          { name: 'Z', dims: [N * zpBytes], type: 'uint8' },
        ],
        outputs: [{ name: 'Y', dims: ['M', N] }],
        nodes: [
          {
            op: 'MatMulNBits',
            domain: 'com.microsoft',
            inputs: ['A', 'B', 'S', 'Z'],
            outputs: ['Y'],
            attrs: [
              { name: 'K', int: K },
              { name: 'N', int: N },
              { name: 'bits', int: 4 },
              { name: 'block_size', int: GROUP },
              { name: 'accuracy_level', int: level },
            ],
          },
        ],
      });
      const session = await ort.InferenceSession.create(model, options);
      const feeds = {
        A: new ort.Tensor('float32', x, [M, K]),
        B: new ort.Tensor('uint8', Uint8Array.from(codes), [N, blocks, GROUP / 2]),
        S: new ort.Tensor('float32', Float32Array.from(scales), [N * blocks]),
        Z: new ort.Tensor('uint8', zpPacked, [N * zpBytes]),
      };
      const out = (await session.run(feeds)).Y.data;
      const ms = 1000 * (await timeCalls(() => session.run(feeds), { seconds: 1 }));
      row.push(`${ms.toFixed(2)} (${relError(out).toExponential(1)})`);
      await session.release();
    }
    rows.push(row);
  }
  console.log(`${THREADS} thread(s), 4-bit weights in groups of ${GROUP}; ms per product (relative error)\n`);
  table(['product', 'M×K×N', 'moe: SIMD decode + sgemm', 'sgemm alone', 'MatMulNBits acc 0', 'acc 1', 'acc 4'], rows);
  await be.dispose();
}

lib.run(main);
