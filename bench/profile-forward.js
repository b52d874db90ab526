#!/usr/bin/env node
/**
 * Where a `moe eval` pass spends its time, in one process: the backend's products (each operation of the Backend
 * interface, timed by name), the weight reads (TensorReader's f32/f32Into/rowsF32/rowsF32Into, decoding included), and the
 * rest (JavaScript between them), for a cold pass (the process's first: first-touch memory, onnxruntime's first
 * session, V8 compiling the hot loops) and warm passes after it; also each layer's time in the cold and the last pass.
 *
 *   npm run build && node bench/profile-forward.js [MODEL] [--data ids.json] [--threads 2] [--passes 3]
 *
 * MODEL defaults to the bench model of bench/llama-prefill.mjs (.cache/prefill-bench/model) and --data to its
 * 4 × 256 ids.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib');

const { DIST, ROOT, option, table } = lib;
const positional = process.argv.slice(2).filter((a, i, all) => !a.startsWith('--') && !all[i - 1]?.startsWith('--'));
const MODEL = positional[0] ?? path.join(ROOT, '.cache', 'prefill-bench', 'model');
const DATA = option('--data', path.join(ROOT, '.cache', 'prefill-bench', 'ids-4x256.json'));
const THREADS = Number(option('--threads', '2'));
const PASSES = Number(option('--passes', '3'));

async function main() {
  const { createBackend } = require(path.join(DIST, 'backend', 'index.js'));
  const { openModel } = require(path.join(DIST, 'commands', 'open-model.js'));
  const { ForwardPass } = require(path.join(DIST, 'model', 'forward', 'model.js'));
  const { evaluate } = require(path.join(DIST, 'eval', 'perplexity.js'));
  const be = await createBackend('onnx', { threads: THREADS });
  const m = openModel(MODEL);
  let spent = {};
  const wrap = (obj, name, key) => {
    const f = obj[name]?.bind(obj);
    if (!f) return;
    obj[name] = (...args) => {
      const t0 = performance.now();
      const out = f(...args);
      const done = () => (spent[key] = (spent[key] ?? 0) + performance.now() - t0);
      if (out instanceof Promise) return out.finally(done);
      done();
      return out;
    };
  };
  // the Backend interface's operations (src/backend/backend.ts); those a backend lacks are skipped
  for (const name of ['linear', 'bmm', 'attention', 'attentionTokens', 'swiglu', 'logitStats']) wrap(be, name, name);
  for (const name of ['f32', 'f32Into', 'rowsF32', 'rowsF32Into']) wrap(m.reader, name, 'weight reads');
  const windows = JSON.parse(fs.readFileSync(DATA, 'utf8')).map((w) => Int32Array.from(w));
  const tokens = windows.reduce((s, w) => s + w.length, 0);
  const fp = new ForwardPass(m.reader, m.arch, be);
  const rows = [];
  const layers = [];
  for (let p = 0; p < PASSES; p++) {
    spent = {};
    const steps = [];
    let last = performance.now();
    const t0 = last;
    await evaluate(fp, windows, {
      batchTokens: 4096,
      progress: {
        tick() {
          const t = performance.now();
          steps.push(t - last);
          last = t;
        },
        done() {},
      },
    });
    const total = performance.now() - t0;
    const counted = Object.values(spent).reduce((a, b) => a + b, 0);
    rows.push({ pass: p === 0 ? 'cold' : `warm ${p}`, total, ...spent, rest: total - counted });
    layers.push(steps);
  }
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => !['pass', 'total', 'rest'].includes(k));
  console.log(`${MODEL}: ${tokens} tokens, ${THREADS} thread(s); milliseconds\n`);
  table(
    ['pass', 'total', 'tokens/s', ...keys, 'rest (JS)'],
    rows.map((r) => [
      r.pass,
      r.total.toFixed(0),
      ((1000 * tokens) / r.total).toFixed(0),
      ...keys.map((k) => (r[k] ?? 0).toFixed(0)),
      r.rest.toFixed(0),
    ]),
  );
  console.log('\nper layer (the last step: final norm and lm_head):');
  console.log(`  cold: ${layers[0].map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`  last: ${layers[layers.length - 1].map((x) => x.toFixed(0)).join(' ')}`);
  await be.dispose();
}

lib.run(main);
