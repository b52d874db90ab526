#!/usr/bin/env node
/**
 * GFLOP/s of the matmul backends on forward-pass shapes, and the per-call overhead that sets the onnx
 * backend's small-product threshold. Prints the figures DESIGN.md and the README quote.
 *   npm run build && node bench/matmul.js [--skip-ref] [--seconds S]
 * Each cell is the median over repeated calls for about S seconds (default 1.5) after one warm-up call; the ref
 * backend, at ~1 GFLOP/s, gets one call per shape. Machines with other work running give noisy figures: run twice.
 */
'use strict';
const path = require('node:path');
const lib = require('./lib');
const { machineLine, median, randomFloats: random, run, table } = lib;

const DIST = path.join(lib.DIST, 'backend');
const { OnnxBackend, TINY_PRODUCT_MACS } = require(path.join(DIST, 'onnx.js'));
const { TfjsBackend } = require(path.join(DIST, 'tfjs.js'));
const { RefBackend, linearRef } = require(path.join(DIST, 'ref.js'));
const { linearModel } = require(path.join(DIST, 'onnx-graph.js'));

const args = process.argv.slice(2);
const SKIP_REF = args.includes('--skip-ref');
const SECONDS = args.includes('--seconds') ? Number(args[args.indexOf('--seconds') + 1]) : 1.5;
const MIN_REPS = 3;

const SHAPES = [
  { label: 'linear x[2048,1024]·w[1024,1024]ᵀ', kind: 'linear', dims: [2048, 1024, 1024] },
  { label: 'linear x[512,1024]·w[2816,1024]ᵀ', kind: 'linear', dims: [512, 1024, 2816] },
  { label: 'bmm q[16,2048,64]·k[16,2048,64]ᵀ', kind: 'bmm', dims: [16, 2048, 64, 2048], transB: true },
  { label: 'bmm p[16,2048,2048]·v[16,2048,64]', kind: 'bmm', dims: [16, 2048, 2048, 64], transB: false },
];

function prepare(shape) {
  if (shape.kind === 'linear') {
    const [t, i, o] = shape.dims;
    const x = random(t * i, 1);
    const w = random(o * i, 2);
    return { flops: 2 * t * i * o, call: (b) => b.linear(x, w, t, i, o) };
  }
  const [batch, m, k, n] = shape.dims;
  const a = random(batch * m * k, 3);
  const b = random(batch * k * n, 4);
  return { flops: 2 * batch * m * k * n, call: (be) => be.bmm(a, b, batch, m, k, n, shape.transB) };
}

/** Median seconds per call. */
const timeCalls = (fn, { seconds = SECONDS, warmup = 1, minReps = MIN_REPS } = {}) =>
  lib.timeCalls(fn, { seconds, warmup, minReps });

/** Median µs per call for a fast call, timed in batches so the timer's resolution does not matter. */
async function microseconds(fn, batch = 200, batches = 15) {
  for (let i = 0; i < batch; i++) await fn();
  const per = [];
  for (let j = 0; j < batches; j++) {
    const t0 = performance.now();
    for (let i = 0; i < batch; i++) await fn();
    per.push(((performance.now() - t0) * 1000) / batch);
  }
  return median(per);
}

async function throughput() {
  const backends = [
    ['onnx 1 thread', await OnnxBackend.create({ threads: 1 })],
    ['onnx 2 threads', await OnnxBackend.create({ threads: 2 })],
  ];
  try {
    const tfjs = await TfjsBackend.create();
    backends.push([`tfjs-${tfjs.tf.getBackend()}`, tfjs]);
  } catch (e) {
    console.error(`(tfjs skipped: ${e.message})`);
  }
  if (!SKIP_REF) backends.push(['ref', new RefBackend()]);

  const rows = [];
  for (const shape of SHAPES) {
    const { flops, call } = prepare(shape);
    const row = [shape.label];
    for (const [name, b] of backends) {
      const opts = name === 'ref' ? { warmup: 0, minReps: 1, seconds: 0 } : {};
      const s = await timeCalls(() => call(b), opts);
      row.push((flops / s / 1e9).toFixed(1));
      console.error(`  ${shape.label} ${name}: ${(s * 1000).toFixed(1)} ms/call`);
    }
    rows.push(row);
  }
  for (const [, b] of backends) await b.dispose();
  console.log('\nGFLOP/s (median per call; higher is better)');
  table(['shape', ...backends.map(([n]) => n)], rows);
}

/** One raw onnxruntime run vs the TS loop, on the tiny products where the threshold sits. */
async function overhead() {
  const ort = require('onnxruntime-node');
  const options = (threads) => ({
    intraOpNumThreads: threads,
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  });
  const sessions = [
    ['ort 1 thr µs', await ort.InferenceSession.create(linearModel(false), options(1))],
    ['ort 2 thr µs', await ort.InferenceSession.create(linearModel(false), options(2))],
  ];
  const backend = await OnnxBackend.create();
  const rows = [];
  for (const [t, i, o] of [
    [1, 8, 8],
    [1, 32, 64],
    [1, 64, 64],
    [2, 64, 64],
    [4, 64, 64],
    [16, 64, 64],
    [1, 256, 256],
    [64, 64, 64],
  ]) {
    const x = random(t * i, 5);
    const w = random(o * i, 6);
    const row = [`${t}×${i}×${o}`, String(t * i * o)];
    for (const [, s] of sessions) {
      row.push(
        (
          await microseconds(() =>
            s.run({ X: new ort.Tensor('float32', x, [t, i]), W: new ort.Tensor('float32', w, [o, i]) }),
          )
        ).toFixed(1),
      );
    }
    row.push((await microseconds(async () => linearRef(x, w, t, i, o))).toFixed(1));
    row.push((await microseconds(() => backend.linear(x, w, t, i, o))).toFixed(1));
    rows.push(row);
  }
  for (const [, s] of sessions) await s.release();
  await backend.dispose();
  console.log(
    `\nPer-call time of y = x·wᵀ, tokens×in×out (µs, median); the onnx backend uses TS below ${TINY_PRODUCT_MACS} multiply-adds`,
  );
  table(['shape', 'MACs', ...sessions.map(([n]) => n), 'TS loop µs', 'onnx backend µs'], rows);
}

async function main() {
  console.log(machineLine());
  await throughput();
  await overhead();
}

run(main);
