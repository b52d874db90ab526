/**
 * Perplexity by the project's rule (README, "Data for eval and calibrate"), and the comparison against a baseline
 * model: windows run on their own, in
 * batches of equal length; each batch goes through every layer, then the lm_head in vocabulary blocks.
 * NLL is averaged over every predicted position in float64.
 */
import type { ForwardObserver, ForwardPass, LogitBlock } from '../model/forward/model';
import type { Routing } from '../model/forward/moe';
import type { Progress } from '../ui/progress';
import { KlAccumulator, RowStats } from './metrics';

export interface EvalTotals {
  nllSum: number;
  positions: number;
  windows: number;
  tokens: number;
  /** With a baseline: */
  baseNllSum?: number;
  klSum?: number;
  top1Agree?: number;
  /**
   * Per MoE layer: summed overlap of selected experts and token count; a token's overlap is |A∩B| / min(|A|, |B|),
   * its sets the experts each model routes it to with a nonzero weight (k of them without dynamic routing).
   */
  routing?: Map<number, { overlap: number; tokens: number }>;
}

export interface EvalOptions {
  /** Most tokens run through the layers at once (windows are never split). */
  batchTokens: number;
  baseline?: ForwardPass;
  /** Maps a model's expert id to the baseline's, per layer (after pruning or merging); identity when absent. */
  expertMap?: (layer: number, expert: number) => number;
  /** Receives every position's full logits (for --dump-logits): [rows, vocab] per batch. */
  onLogits?: (logits: Float32Array, rows: number, vocab: number) => void;
  progress?: Progress;
}

/** Groups windows into batches of equal length holding at most batchTokens tokens (at least one window). */
export function batches(windows: Int32Array[], batchTokens: number): Int32Array[][] {
  const byLength = new Map<number, Int32Array[]>();
  for (const w of windows) {
    if (!byLength.has(w.length)) byLength.set(w.length, []);
    byLength.get(w.length)!.push(w);
  }
  const out: Int32Array[][] = [];
  for (const [T, list] of byLength) {
    const per = Math.max(1, Math.floor(batchTokens / T));
    for (let i = 0; i < list.length; i += per) out.push(list.slice(i, i + per));
  }
  return out;
}

/** Windows laid end to end: the ids of one batch. */
export function concat(ws: Int32Array[]): Int32Array {
  const out = new Int32Array(ws.reduce((s, w) => s + w.length, 0));
  let at = 0;
  for (const w of ws) {
    out.set(w, at);
    at += w.length;
  }
  return out;
}

function targetsOf(ids: Int32Array, windows: number, T: number): Int32Array {
  const t = new Int32Array(windows * T).fill(-1);
  for (let w = 0; w < windows; w++) for (let i = 0; i < T - 1; i++) t[w * T + i] = ids[w * T + i + 1];
  return t;
}

/**
 * Records each layer's selected experts; a slot dynamic routing dropped (`moe eval --top-p` / `--skip-ratio`: weight
 * exactly 0) is recorded as −1, since that expert does not take part in the token's output.
 */
function routingRecorder(store: Map<number, Int32Array>): ForwardObserver {
  return {
    router: (layer: number, r: Routing) =>
      store.set(
        layer,
        r.experts.map((e, i) => (r.weights[i] === 0 ? -1 : e)),
      ),
  };
}

/** The observer with a tick after every layer (progress moves layer by layer, not only batch by batch). */
function ticking(observer: ForwardObserver | undefined, tick: () => void): ForwardObserver {
  return { ...observer, layer: () => tick() };
}

export async function evaluate(model: ForwardPass, windows: Int32Array[], opts: EvalOptions): Promise<EvalTotals> {
  const totals: EvalTotals = { nllSum: 0, positions: 0, windows: 0, tokens: 0 };
  const base = opts.baseline;
  if (base) Object.assign(totals, { baseNllSum: 0, klSum: 0, top1Agree: 0, routing: new Map() });
  const vocab = model.arch.vocab;
  for (const batch of batches(windows, opts.batchTokens)) {
    const T = batch[0].length;
    const W = batch.length;
    const N = W * T;
    const ids = concat(batch);
    const targets = targetsOf(ids, W, T);
    const selModel = new Map<number, Int32Array>();
    // Progress in tokens, spread over every layer and the head of each model run.
    const steps = model.arch.numLayers + 1 + (base ? base.arch.numLayers + 1 : 0);
    const step = () => opts.progress?.tick(N / steps);
    const hidden = model.embed(ids);
    await model.layers(hidden, W, T, ticking(base ? routingRecorder(selModel) : undefined, step));
    const stats = new RowStats(N, targets);
    const full = opts.onLogits ? new Float32Array(N * vocab) : undefined;
    const keep = (b: LogitBlock) => {
      if (full)
        for (let r = 0; r < N; r++) full.set(b.logits.subarray(r * b.count, (r + 1) * b.count), r * vocab + b.start);
    };
    if (!base && !full) {
      await model.headStats(hidden, N, targets, stats);
    } else if (!base) {
      for await (const b of model.headBlocks(hidden, N)) {
        stats.update(b.logits, b.start, b.count);
        keep(b);
      }
    } else {
      const selBase = new Map<number, Int32Array>();
      const baseHidden = base.embed(ids);
      await base.layers(baseHidden, W, T, ticking(routingRecorder(selBase), step));
      const baseStats = new RowStats(N, targets);
      const kl = new KlAccumulator(baseStats, stats);
      const mine = model.headBlocks(hidden, N);
      for await (const a of base.headBlocks(baseHidden, N)) {
        const b = (await mine.next()).value as LogitBlock;
        kl.update(a.logits, b.logits, a.count);
        baseStats.update(a.logits, a.start, a.count);
        stats.update(b.logits, b.start, b.count);
        keep(b);
      }
      for (let r = 0; r < N; r++) {
        if (targets[r] < 0) continue;
        totals.baseNllSum! += baseStats.nll(r);
        totals.klSum! += kl.kl(r);
        if (baseStats.argmax[r] === stats.argmax[r]) totals.top1Agree!++;
      }
      compareRouting(totals.routing!, selBase, selModel, base.arch.topK, model.arch.topK, N, opts.expertMap);
    }
    for (let r = 0; r < N; r++) if (targets[r] >= 0) totals.nllSum += stats.nll(r);
    if (full) opts.onLogits!(full, N, vocab);
    totals.positions += W * (T - 1);
    totals.windows += W;
    totals.tokens += N;
    step();
    if (base) step();
  }
  return totals;
}

/** Adds each layer's routing overlap of `model` against `base` (see EvalTotals.routing) into `into`. */
export function compareRouting(
  into: Map<number, { overlap: number; tokens: number }>,
  base: Map<number, Int32Array>,
  model: Map<number, Int32Array>,
  kBase: number,
  kModel: number,
  N: number,
  map?: (layer: number, expert: number) => number,
): void {
  for (const [layer, a] of base) {
    const b = model.get(layer);
    if (!b) continue;
    const acc = into.get(layer) ?? { overlap: 0, tokens: 0 };
    for (let n = 0; n < N; n++) {
      const set = new Set<number>();
      for (let j = 0; j < kBase; j++) if (a[n * kBase + j] >= 0) set.add(a[n * kBase + j]);
      let hit = 0;
      let kept = 0;
      for (let j = 0; j < kModel; j++) {
        const e = b[n * kModel + j];
        if (e < 0) continue; // dropped by dynamic routing
        kept++;
        if (set.has(map ? map(layer, e) : e)) hit++;
      }
      acc.overlap += hit / Math.min(set.size, kept);
    }
    acc.tokens += N;
    into.set(layer, acc);
  }
}
