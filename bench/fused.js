#!/usr/bin/env node
/**
 * The fused operations (Backend's FusedOps) against the path the forward pass took before them: the backend's
 * products with JavaScript loops in between (softmax of the scores, silu·up, the per-row logit statistics),
 * on forward-pass shapes. Prints ms per call and the speed-up; also how many bytes each path hands to JavaScript.
 *   npm run build && node bench/fused.js [--seconds S] [--threads N] [--no-tfjs]
 * Each cell is the median over repeated calls for about S seconds (default 3) after one warm-up call.
 * Machines with other work running give noisy figures: run twice.
 */
'use strict';
const os = require('node:os');
const path = require('node:path');
const lib = require('./lib');
const { machineLine, randomFloats: random, run, table } = lib;

const DIST = path.join(lib.DIST, 'backend');
const { OnnxBackend } = require(path.join(DIST, 'onnx.js'));
const { TfjsBackend } = require(path.join(DIST, 'tfjs.js'));

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const SECONDS = opt('--seconds', 3);
const THREADS = opt('--threads', os.availableParallelism());
const NO_TFJS = args.includes('--no-tfjs');
const MIN_REPS = 3;

/** Median ms per call. */
const timeCalls = async (fn) => 1000 * (await lib.timeCalls(fn, { seconds: SECONDS, minReps: MIN_REPS }));

function maxRelDiff(a, b) {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return m === 0 ? d : d / m;
}

// The unfused paths: the same loops src/model/forward (attention.ts, ops.ts) and src/eval/metrics.ts run.

async function attentionUnfused(be, q, k, v, H, T, dk, dv, scale) {
  const scores = await be.bmm(q, k, H, T, dk, T, true); // [H, T, T]
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < T; t++) {
      const o = (h * T + t) * T;
      let max = -Infinity;
      for (let s = 0; s <= t; s++) {
        const x = scores[o + s] * scale;
        scores[o + s] = x;
        if (x > max) max = x;
      }
      let sum = 0;
      for (let s = 0; s <= t; s++) {
        const e = Math.exp(scores[o + s] - max);
        scores[o + s] = e;
        sum += e;
      }
      for (let s = 0; s <= t; s++) scores[o + s] /= sum;
      scores.fill(0, o + t + 1, o + T);
    }
  }
  return be.bmm(scores, v, H, T, T, dv, false); // [H, T, dv]
}

async function swigluUnfused(be, x, gateUp, down, rows, hidden, width) {
  const gu = await be.linear(x, gateUp, rows, hidden, 2 * width); // [rows, 2·width]
  const act = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    const g = r * 2 * width;
    for (let i = 0; i < width; i++) act[r * width + i] = (gu[g + i] / (1 + Math.exp(-gu[g + i]))) * gu[g + width + i];
  }
  return { out: await be.linear(act, down, rows, width, hidden), act };
}

async function logitStatsUnfused(be, x, w, rows, hidden, count, targets, start) {
  const logits = await be.linear(x, w, rows, hidden, count); // [rows, count]
  const stats = {
    max: new Float32Array(rows),
    sumExp: new Float32Array(rows),
    argmax: new Int32Array(rows),
    target: new Float32Array(rows),
  };
  for (let r = 0; r < rows; r++) {
    const o = r * count;
    let max = -Infinity;
    let arg = -1;
    for (let i = 0; i < count; i++) {
      if (logits[o + i] > max) {
        max = logits[o + i];
        arg = i;
      }
    }
    let s = 0;
    for (let i = 0; i < count; i++) s += Math.exp(logits[o + i] - max);
    const t = targets[r] - start;
    stats.max[r] = max;
    stats.sumExp[r] = s;
    stats.argmax[r] = arg;
    stats.target[r] = t >= 0 && t < count ? logits[o + t] : NaN;
  }
  return { stats, bytes: logits.byteLength };
}

const CASES = [
  {
    label: 'attention H=16 T=512 dk=dv=64',
    prepare() {
      const [H, T, d] = [16, 512, 64];
      const q = random(H * T * d, 1);
      const k = random(H * T * d, 2);
      const v = random(H * T * d, 3);
      const scale = 1 / Math.sqrt(d);
      return {
        fused: (be) => be.attention(q, k, v, H, T, d, d, scale),
        unfused: (be) => attentionUnfused(be, q, k, v, H, T, d, d, scale),
        diff: (a, b) => maxRelDiff(a, b),
        bytes: { fused: H * T * d * 4, unfused: H * T * T * 4 + H * T * d * 4 },
      };
    },
  },
  {
    label: 'swiglu rows=512 hidden=1024 width=384',
    prepare() {
      const [rows, hidden, width] = [512, 1024, 384];
      const x = random(rows * hidden, 4);
      const gateUp = random(2 * width * hidden, 5, 0.05);
      const down = random(hidden * width, 6, 0.05);
      return {
        fused: (be) => be.swiglu(x, gateUp, down, rows, hidden, width, false),
        unfused: (be) => swigluUnfused(be, x, gateUp, down, rows, hidden, width),
        diff: (a, b) => maxRelDiff(a.out, b.out),
        bytes: { fused: rows * hidden * 4, unfused: rows * 2 * width * 4 + rows * hidden * 4 },
      };
    },
  },
  {
    label: 'logitStats rows=4096 hidden=1024 count=8192',
    prepare() {
      const [rows, hidden, count, start] = [4096, 1024, 8192, 8192];
      const x = random(rows * hidden, 7);
      const w = random(count * hidden, 8, 0.1);
      const targets = Int32Array.from({ length: rows }, (_, r) => (r * 7919) % (3 * count)); // a third in this block
      return {
        fused: (be) => be.logitStats(x, w, rows, hidden, count, targets, start),
        unfused: async (be) => (await logitStatsUnfused(be, x, w, rows, hidden, count, targets, start)).stats,
        diff: (a, b) => maxRelDiff(a.sumExp, b.sumExp),
        bytes: { fused: rows * 16, unfused: rows * count * 4 },
      };
    },
  },
];

const mb = (bytes) =>
  bytes / 2 ** 20 < 1 ? `${(bytes / 1024).toFixed(0)} KiB` : `${(bytes / 2 ** 20).toFixed(0)} MiB`;

async function main() {
  console.log(machineLine());
  const backends = [[`onnx ${THREADS} thr`, await OnnxBackend.create({ threads: THREADS })]];
  if (!NO_TFJS) {
    try {
      const tfjs = await TfjsBackend.create();
      backends.push([`tfjs-${tfjs.tf.getBackend()}`, tfjs]);
    } catch (e) {
      console.error(`(tfjs skipped: ${e.message})`);
    }
  }
  const rows = [];
  const traffic = [];
  for (const c of CASES) {
    const p = c.prepare();
    traffic.push(`  ${c.label}: ${mb(p.bytes.unfused)} → ${mb(p.bytes.fused)}`);
    for (const [name, be] of backends) {
      const unfused = await timeCalls(() => p.unfused(be));
      const fused = await timeCalls(() => p.fused(be));
      const diff = p.diff(await p.fused(be), await p.unfused(be));
      rows.push([
        c.label,
        name,
        unfused.toFixed(1),
        fused.toFixed(1),
        `${(unfused / fused).toFixed(2)}×`,
        diff.toExponential(1),
      ]);
      console.error(`  ${c.label} ${name}: unfused ${unfused.toFixed(1)} ms, fused ${fused.toFixed(1)} ms`);
    }
  }
  for (const [, be] of backends) await be.dispose();
  console.log('\nms per call (median; lower is better); rel diff = max |fused − unfused| / max |unfused|');
  table(['operation', 'backend', 'unfused ms', 'fused ms', 'speed-up', 'rel diff'], rows);
  console.log('\nbytes handed to JavaScript per call (unfused → fused):');
  for (const line of traffic) console.log(line);
}

run(main);
