/**
 * The sparse MoE block: router scores, each model's top-k rule (transformers' router classes are the
 * reference), the routed experts run on the tokens that chose them, and shared experts.
 */
import type { RoutingRule } from '../arch';
import { sigmoid } from './ops';

/**
 * Math as a module constant: per-element code then never looks up a global (slow inside vm contexts such as jest's).
 */
const math = Math;

export interface Routing {
  /** Router logits [tokens, E]. */
  logits: Float32Array;
  /** Selected experts [tokens, k], in the order top-k returns them. */
  experts: Int32Array;
  /** Their weights as the model applies them [tokens, k]. */
  weights: Float32Array;
  /** Router probabilities (softmax or sigmoid of the logits) [tokens, E]. */
  probs: Float32Array;
}

/** Indices of the k largest values of v (ties: the lower index first, like torch.topk on CPU in practice). */
function topk(v: Float64Array | Float32Array, k: number, from = 0, len = v.length): number[] {
  const idx: number[] = [];
  for (let i = 0; i < len; i++) {
    const x = v[from + i];
    let j = idx.length;
    if (j === k && x <= v[from + idx[k - 1]]) continue;
    if (j === k) idx.pop();
    j = idx.length;
    while (j > 0 && v[from + idx[j - 1]] < x) j--;
    idx.splice(j, 0, i);
  }
  return idx;
}

/**
 * Applies the routing rule to router logits [tokens, E]. With `allowed`, the other experts are masked out as if
 * their logits were −∞ (NAEE's re-routing after dropping experts): they get probability 0 and are never selected.
 * With `rule.dynamic` (`moe eval --top-p` / `--skip-ratio`), some of each token's k slots then get weight 0 (dropSlots;
 * the slots stay in `experts`); without it the result is the model's own routing, bit for bit.
 */
export function route(
  logits: Float32Array,
  tokens: number,
  E: number,
  rule: RoutingRule,
  correctionBias?: Float32Array,
  allowed?: Uint8Array,
): Routing {
  const k = rule.topK;
  const experts = new Int32Array(tokens * k);
  const weights = new Float32Array(tokens * k);
  const probs = new Float32Array(tokens * E);
  const choice = new Float64Array(E);
  const perGroup = E / rule.nGroup;
  for (let n = 0; n < tokens; n++) {
    const row = n * E;
    if (rule.scoring === 'sparsemixer') {
      sparsemixer(logits, row, E, k, rule.jitterEps ?? 0, allowed, experts, weights, n * k);
      softmaxRow(logits, row, E, allowed, probs);
      if (rule.dynamic) dropSlots(rule.dynamic, experts, weights, probs, n, k, E);
      continue;
    }
    if (rule.scoring === 'softmax') softmaxRow(logits, row, E, allowed, probs);
    else for (let e = 0; e < E; e++) probs[row + e] = !allowed || allowed[e] ? sigmoid(logits[row + e]) : 0;
    for (let e = 0; e < E; e++)
      choice[e] =
        allowed && !allowed[e]
          ? -Infinity
          : rule.inputScaled
            ? logits[row + e] // Llama 4 selects on the logits (the same order, without sigmoid's float32 ties)
            : probs[row + e] + (rule.correctionBias && correctionBias ? correctionBias[e] : 0);
    if (rule.nGroup > 1) {
      // Keep the best topkGroup groups; the others' experts score 0 (V2) or −∞ (V3), as transformers masks them.
      const groupScores = new Float64Array(rule.nGroup);
      for (let g = 0; g < rule.nGroup; g++) {
        const best = topk(choice, rule.groupScore === 'top2sum' ? 2 : 1, g * perGroup, perGroup);
        groupScores[g] = best.reduce((s, i) => s + choice[g * perGroup + i], 0);
      }
      const keep = new Set(topk(groupScores, rule.topkGroup));
      const masked = rule.groupMask === 'zero' ? 0 : -Infinity;
      for (let e = 0; e < E; e++)
        if (!keep.has(math.floor(e / perGroup)) && (!allowed || allowed[e])) choice[e] = masked;
    }
    const sel = topk(choice, k);
    let sum = 0;
    for (let j = 0; j < k; j++) {
      experts[n * k + j] = sel[j];
      // Selection may use the biased scores; the weights are always the unbiased ones.
      weights[n * k + j] = rule.scoring === 'softmax' && rule.nGroup > 1 ? choice[sel[j]] : probs[row + sel[j]];
      sum += weights[n * k + j];
    }
    const norm = rule.normTopK ? 1 / (sum + (rule.scoring === 'sigmoid' ? 1e-20 : 0)) : 1;
    for (let j = 0; j < k; j++) weights[n * k + j] = weights[n * k + j] * norm * rule.scalingFactor;
    if (rule.dynamic) dropSlots(rule.dynamic, experts, weights, probs, n, k, E);
  }
  return { logits, experts, weights, probs };
}

/** probs[row..row+E) = softmax of the allowed logits of the row (0 for the others). */
function softmaxRow(
  logits: Float32Array,
  row: number,
  E: number,
  allowed: Uint8Array | undefined,
  probs: Float32Array,
) {
  let max = -Infinity;
  for (let e = 0; e < E; e++) if (!allowed || allowed[e]) max = math.max(max, logits[row + e]);
  let sum = 0;
  for (let e = 0; e < E; e++) if (!allowed || allowed[e]) sum += math.exp(logits[row + e] - max);
  for (let e = 0; e < E; e++) probs[row + e] = !allowed || allowed[e] ? math.exp(logits[row + e] - max) / sum : 0;
}

/**
 * PhiMoE's sparsemixer as transformers runs it in eval (modeling_phimoe.py sparsemixer, training false), for k ≤ 2:
 * slot 1 is the largest logit m; its weight is the softmax of m over the experts j with
 * (m − s_j) / max(|s_j|, m) ≤ 2·eps (the others masked); slot 2 is the largest logit without slot 1's expert, weighted
 * the same way around it (slot 1's expert excluded). Comparisons in float32, as torch does.
 */
function sparsemixer(
  s: Float32Array,
  row: number,
  E: number,
  k: number,
  eps: number,
  allowed: Uint8Array | undefined,
  experts: Int32Array,
  weights: Float32Array,
  at: number,
): void {
  const f = math.fround;
  const limit = f(2 * eps);
  let first = -1;
  for (let slot = 0; slot < k; slot++) {
    let best = -1;
    for (let e = 0; e < E; e++)
      if ((!allowed || allowed[e]) && e !== first && (best < 0 || s[row + e] > s[row + best])) best = e;
    const top = s[row + best];
    let sum = 0;
    for (let e = 0; e < E; e++) {
      if ((allowed && !allowed[e]) || e === first) continue;
      const factor = math.max(math.abs(s[row + e]), top);
      if (f(f(top - s[row + e]) / factor) > limit) continue;
      sum += math.exp(s[row + e] - top);
    }
    experts[at + slot] = best;
    weights[at + slot] = 1 / sum;
    first = best;
  }
}

/**
 * Token n's dynamic expert count (RoutingRule.dynamic): top-p keeps the fewest selected experts, most probable first,
 * whose share of the probability mass of all E experts (sigmoid scores normalised to sum 1) reaches P; skip-ratio
 * keeps the largest weight and drops each other below β × it. Dropped slots get weight 0; the rest are unchanged.
 */
function dropSlots(
  d: NonNullable<RoutingRule['dynamic']>,
  experts: Int32Array,
  weights: Float32Array,
  probs: Float32Array,
  n: number,
  k: number,
  E: number,
): void {
  const o = n * k;
  const order = [...Array(k).keys()].sort((a, b) => weights[o + b] - weights[o + a] || a - b);
  if (d.topP !== undefined) {
    let total = 0;
    for (let e = 0; e < E; e++) total += probs[n * E + e];
    const byProb = [...Array(k).keys()].sort(
      (a, b) => probs[n * E + experts[o + b]] - probs[n * E + experts[o + a]] || a - b,
    );
    let mass = 0;
    let reached = false;
    for (const j of byProb) {
      if (reached) weights[o + j] = 0;
      mass += probs[n * E + experts[o + j]] / total;
      if (mass >= d.topP) reached = true;
    }
  }
  if (d.skipRatio !== undefined) {
    const top = weights[o + order[0]];
    for (const j of order.slice(1)) if (weights[o + j] < d.skipRatio * top) weights[o + j] = 0;
  }
  if (d.count) {
    d.count.tokens++;
    for (let j = 0; j < k; j++) if (weights[o + j] !== 0) d.count.experts++;
  }
}

/** Token lists per expert from a routing: for expert e, the token indices and the slot (0..k-1) they chose it in. */
export function tokensPerExpert(
  r: Routing,
  tokens: number,
  k: number,
  E: number,
): { tokens: Int32Array; slots: Int32Array }[] {
  const counts = new Int32Array(E);
  for (let i = 0; i < tokens * k; i++) counts[r.experts[i]]++;
  const lists = [...counts].map((c) => ({ tokens: new Int32Array(c), slots: new Int32Array(c), fill: 0 }));
  for (let n = 0; n < tokens; n++) {
    for (let j = 0; j < k; j++) {
      const l = lists[r.experts[n * k + j]];
      l.tokens[l.fill] = n;
      l.slots[l.fill++] = j;
    }
  }
  return lists.map(({ tokens: t, slots }) => ({ tokens: t, slots }));
}

/**
 * The weight each slot's expert output is added with: the routing weight, or for experts that take it on their
 * input (RoutingRule.inputScaled, Llama 4) 1 — 0 for a slot dropped by dynamic routing either way.
 */
export function outputWeights(r: Routing, rule: RoutingRule): Float32Array {
  return rule.inputScaled ? r.weights.map((w) => (w === 0 ? 0 : 1)) : r.weights;
}

/** x [rows, cols] row i × g[i], in place (Llama 4's routing weight on the expert's input). */
export function scaleRows(x: Float32Array, cols: number, g: Float32Array): void {
  for (let i = 0; i < g.length; i++) for (let j = i * cols; j < (i + 1) * cols; j++) x[j] *= g[i];
}

/** Rows `rows` of x [?, cols], into `into` when given (rows.length × cols values). */
export function gatherRows(x: Float32Array, cols: number, rows: Int32Array, into?: Float32Array): Float32Array {
  const out = into ?? new Float32Array(rows.length * cols);
  for (let i = 0; i < rows.length; i++) out.set(x.subarray(rows[i] * cols, (rows[i] + 1) * cols), i * cols);
  return out;
}

/**
 * out[tokens[i]] += weights[tokens[i]·k + slots[i]] · ye[i] for each row i of ye [rows, cols]: an expert's output
 * added to its tokens with their routing weights. A function of its own, so that V8 optimises the loop on its own
 * (inside the forward's large async function it ran ~10× slower).
 */
export function scatterAdd(
  out: Float32Array,
  ye: Float32Array,
  cols: number,
  tokens: Int32Array,
  slots: Int32Array,
  weights: Float32Array,
  k: number,
): void {
  for (let i = 0; i < tokens.length; i++) {
    const g = weights[tokens[i] * k + slots[i]];
    const o = tokens[i] * cols;
    const from = i * cols;
    for (let j = 0; j < cols; j++) out[o + j] += g * ye[from + j];
  }
}
