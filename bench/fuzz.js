#!/usr/bin/env node
/**
 * Fuzzes the checkpoint reader (issue 11): seeded random mutations of safetensors headers and index files
 * (bench/fuzz-lib.js) go through the built reader (dist/: openCheckpoint, TensorReader, loadArchitecture). Every
 * case must end in a CheckpointError naming the file, or in a success that reads what the file holds. Each case
 * runs in a worker with a time limit: a case over it is a hang, and the worker is replaced. The slowest cases (a
 * header nested a million deep) take about 1.5 s on a busy 2-core machine; the limit leaves room for that.
 *
 *   npm run build && node bench/fuzz.js [--cases 10000] [--seed 11] [--timeout-ms 15000] [--json]
 *
 * Prints the counts by outcome and by error message class (names and numbers taken out); exits 1 on any
 * exception other than a CheckpointError, or any hang. test/reliability/fuzz.test.ts runs 500 of the same cases.
 */
'use strict';
const path = require('node:path');
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
const lib = require('./fuzz-lib');

const { DIST, flag, option: opt, withWorkDir } = require('./lib');

function worker() {
  const { openCheckpoint, TensorReader } = require(path.join(DIST, 'io', 'checkpoint'));
  const { loadArchitecture } = require(path.join(DIST, 'model', 'registry'));
  const { CheckpointError } = require(path.join(DIST, 'errors'));
  const api = { openCheckpoint, TensorReader, loadArchitecture };
  const bases = workerData.bases.map((d) => lib.readModel(d));
  const dir = path.join(workerData.root, `work-${workerData.id}`, 'm');
  parentPort.on('message', (i) => {
    const c = lib.fuzzCase(bases, workerData.seed, i);
    lib.writeModel(dir, c.files);
    const result = { i, kind: c.kind, target: c.target };
    try {
      lib.readAll(dir, c.files, api);
      parentPort.postMessage({ ...result, outcome: 'ok' });
    } catch (e) {
      const clean = e instanceof CheckpointError && !!e.file;
      parentPort.postMessage({
        ...result,
        outcome: clean ? 'CheckpointError' : 'other',
        name: e?.name ?? typeof e,
        message: String(e?.message ?? e).slice(0, 300),
        noFile: e instanceof CheckpointError && !e.file,
      });
    }
  });
}

async function makeBases(root) {
  const { synthesize } = require(path.join(DIST, 'synth', 'generate'));
  const { PRESETS } = require(path.join(DIST, 'synth', 'presets'));
  const { quantize } = require(path.join(DIST, 'commands', 'quantize'));
  const { createContext } = require(path.join(DIST, 'ui', 'progress'));
  const quiet = createContext({ quiet: true });
  const single = path.join(root, 'single');
  const sharded = path.join(root, 'sharded');
  const packed = path.join(root, 'packed');
  await synthesize({ config: PRESETS.qwen3_moe, output: single, seed: 1 }, quiet);
  await synthesize({ config: PRESETS.mixtral, output: sharded, maxShardBytes: 200_000, seed: 1 }, quiet);
  await quantize({ model: single, output: packed, bits: 4, method: 'rtn', groupSize: 32 }, quiet);
  return [single, sharded, packed];
}

async function main() {
  const cases = Number(opt('--cases', '10000'));
  const seed = Number(opt('--seed', '11'));
  const timeoutMs = Number(opt('--timeout-ms', '15000'));
  const started = Date.now();
  await withWorkDir('moe-fuzz-', async (root) => {
    const bases = await makeBases(root);
    const counts = { ok: 0, CheckpointError: 0, other: 0, hang: 0 };
    const classes = new Map();
    const problems = [];
    let slowest = { ms: 0, i: -1 };
    let id = 0;
    let w;
    const spawn = () => (w = new Worker(__filename, { workerData: { bases, root, seed, id: id++ } }));
    spawn();
    for (let i = 0; i < cases; i++) {
      const t0 = Date.now();
      const r = await new Promise((resolve) => {
        const timer = setTimeout(() => resolve({ i, outcome: 'hang' }), timeoutMs);
        w.once('message', (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        w.postMessage(i);
      });
      const ms = Date.now() - t0;
      if (ms > slowest.ms) slowest = { ms, i };
      counts[r.outcome]++;
      if (r.outcome === 'CheckpointError') {
        const k = lib.messageClass(r.message);
        classes.set(k, (classes.get(k) ?? 0) + 1);
      } else if (r.outcome !== 'ok') {
        problems.push(r);
        if (r.outcome === 'hang') {
          await w.terminate();
          spawn();
        }
      }
    }
    await w.terminate();
    const byClass = [...classes].sort((a, b) => b[1] - a[1]);
    const summary = {
      cases,
      seed,
      timeout_ms: timeoutMs,
      seconds: (Date.now() - started) / 1000,
      slowest_case: slowest,
      counts,
      error_classes: byClass.length,
      problems,
    };
    if (flag('--json')) console.log(JSON.stringify({ ...summary, by_class: Object.fromEntries(byClass) }, null, 1));
    else {
      console.log(
        `${cases} cases (seed ${seed}, ${timeoutMs} ms limit each) in ${summary.seconds.toFixed(1)} s; slowest case ${slowest.i}: ${slowest.ms} ms`,
      );
      console.log(
        `  read fine ${counts.ok}, CheckpointError ${counts.CheckpointError}, other exception ${counts.other}, hang ${counts.hang}`,
      );
      console.log(`CheckpointError messages by class (${byClass.length} classes):`);
      for (const [k, n] of byClass) console.log(`${String(n).padStart(7)}  ${k}`);
      for (const p of problems.slice(0, 30))
        console.log(`PROBLEM case ${p.i} (${p.kind} in ${p.target}): ${p.outcome} ${p.name ?? ''}: ${p.message ?? ''}`);
    }
    process.exitCode = problems.length ? 1 : 0;
  });
}

if (isMainThread) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 2;
  });
} else worker();
