#!/usr/bin/env node
/**
 * Speed of the bit allocator (src/quant/allocate.ts) on synthetic problems at DeepSeek-V3 scale:
 *  - per layer: 768 groups × 4 choices (256 experts × 3 projections of 7168 × 2048), 10 seeded instances per budget;
 *  - global: 45,000 groups × 4 choices (58 MoE layers × 768 projections, plus attention-sized groups).
 * Costs follow MC-MoE's weighting: err ∝ 4^−b × a log-normal per-group scale × (1 ± 25% per bit choice), times
 * f^α·w^β with Zipf-like expert frequencies (α = 1, β = 1.5). Budgets of 3.0 and 2.5 average bits.
 *
 *   npm run build && node bench/lp.js [--json]
 *
 * Acceptance (issue): every per-layer problem proven optimal in ≤ 1 s; the global problem within a proven gap of
 * 0.1% in ≤ 10 s. The exit code is 1 when a target is missed.
 */
'use strict';
const path = require('node:path');
const { DIST, lcg, run } = require('./lib');
const { allocate } = require(path.join(DIST, 'quant', 'allocate.js'));

const CHOICES = [2, 3, 4, 8];

/** Uniform in [0, 1) from the Numerical Recipes LCG. */
function rng(seed) {
  const next = lcg(seed);
  return () => next() / 4294967296;
}

function gaussian(r) {
  return Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
}

/** One MoE layer's groups: 256 experts × 3 projections, expert frequencies Zipf-like in a random order. */
function layerGroups(r, extra = []) {
  const E = 256;
  const order = [...Array(E).keys()].sort(() => r() - 0.5);
  const groups = [];
  for (let e = 0; e < E; e++) {
    const f = 1 / Math.pow(1 + order[e], 0.8);
    const w = f * (0.3 + 0.4 * r());
    const weight = f * Math.pow(w, 1.5);
    for (let p = 0; p < 3; p++) {
      const scale = Math.exp(0.8 * gaussian(r)) * (p === 2 ? 1.5 : 1);
      groups.push({
        params: 7168 * 2048,
        cost: CHOICES.map((b) => weight * scale * Math.pow(4, -b) * (1 + 0.25 * (r() - 0.5))),
      });
    }
  }
  return groups.concat(extra);
}

async function main() {
  const json = process.argv.includes('--json');
  const out = { per_layer: [], global: [] };
  let ok = true;
  for (const budget of [3, 2.5]) {
    const times = [];
    let allOptimal = true;
    for (let seed = 1; seed <= 10; seed++) {
      const groups = layerGroups(rng(seed * 7919 + budget * 10));
      const total = groups.reduce((s, g) => s + g.params, 0);
      const res = await allocate({ choices: CHOICES, groups, budgetBits: budget * total });
      times.push(res.seconds);
      if (res.status !== 'optimal') allOptimal = false;
    }
    const row = {
      groups: 768,
      budget,
      instances: times.length,
      max_seconds: Math.max(...times),
      mean_seconds: times.reduce((a, b) => a + b, 0) / times.length,
      all_proven_optimal: allOptimal,
    };
    out.per_layer.push(row);
    if (!allOptimal || row.max_seconds > 1) ok = false;
  }
  for (const budget of [3, 2.5]) {
    const r = rng(99 + budget * 10);
    let groups = [];
    for (let l = 0; l < 59; l++) {
      // Per layer also attention-sized groups (MLA projections), always-active: frequency 1.
      const attn = [1536 * 7168, 24576 * 1536, 576 * 7168, 32768 * 512, 7168 * 16384].map((params) => ({
        params,
        cost: CHOICES.map((b) => Math.exp(0.5 * gaussian(r)) * 4 * Math.pow(4, -b)),
      }));
      groups = groups.concat(layerGroups(r, attn));
    }
    groups = groups.slice(0, 45000);
    const total = groups.reduce((s, g) => s + g.params, 0);
    const res = await allocate({ choices: CHOICES, groups, budgetBits: budget * total });
    const row = {
      groups: groups.length,
      budget,
      seconds: res.seconds,
      status: res.status,
      method: res.method,
      gap: res.gap,
      lp_gap: (res.objective - res.lp_bound) / res.objective,
      average_bits: res.bits / total,
    };
    out.global.push(row);
    if (row.gap > 1e-3 || row.seconds > 10) ok = false;
  }
  if (json) console.log(JSON.stringify(out));
  else {
    for (const r of out.per_layer)
      console.log(
        `per layer, ${r.groups} groups × 4, budget ${r.budget} bits: ${r.instances} instances, max ${(1000 * r.max_seconds).toFixed(0)} ms, mean ${(1000 * r.mean_seconds).toFixed(0)} ms, all proven optimal: ${r.all_proven_optimal}`,
      );
    for (const r of out.global)
      console.log(
        `global, ${r.groups} groups × 4, budget ${r.budget} bits: ${r.seconds.toFixed(2)} s, ${r.status} (${r.method}), proven gap ${(100 * r.gap).toFixed(5)}%, average ${r.average_bits.toFixed(4)} bits`,
      );
    console.log(
      ok
        ? 'all targets met'
        : 'FAILED: a target was missed (per layer: proven optimal ≤ 1 s; global: gap ≤ 0.1% in ≤ 10 s)',
    );
  }
  if (!ok) process.exitCode = 1;
}

run(main);
