/**
 * Sequential, layer-by-layer calibration: every window is embedded, then each layer's weights are read once
 * (up to the layer cache) while all batches pass through it with the observers attached; the layer's statistics
 * go to the stats file before the next layer starts.
 */
import type { Backend } from '../backend/backend';
import { ForwardPass } from '../model/forward/model';
import { batches, concat } from '../eval/perplexity';
import { Context, layerLabel } from '../ui/progress';
import type { HessianWeighting } from './affinity';
import { LayerCollector } from './collector';
import { HiddenStore } from './hidden-store';

export interface PipelineOptions {
  batchTokens: number;
  activationBudgetBytes: number;
  hessians: boolean;
  /** --all-experts: every routed expert also sees the tokens not routed to it (linear inputs only). */
  allExperts?: boolean;
  /** --hessian-weighting (src/calib/affinity.ts). */
  weighting?: HessianWeighting;
  /** Global token indices sampled for NAEE (sorted). */
  naeeTokens: number[];
  spillDir?: string;
  /** --data-shard: only the batches [first, end) of the single run's batches (shards.ts). */
  batchRange?: [number, number];
}

export interface LayerDone {
  layer: number;
  collector: LayerCollector;
  seconds: number;
}

export async function calibrateLayers(
  fp: ForwardPass,
  be: Backend,
  windows: Int32Array[],
  inDims: Map<string, number>,
  opts: PipelineOptions,
  ctx: Context,
  onLayer: (done: LayerDone) => void | Promise<void>,
): Promise<{ spilled: boolean }> {
  const all = batches(windows, opts.batchTokens);
  const [first, end] = opts.batchRange ?? [0, all.length];
  const groups = all.slice(first, end);
  // the global index of the shard's first token: NAEE's sample is drawn over the whole run's tokens
  const offset = all.slice(0, first).reduce((s, g) => s + g.length * g[0].length, 0);
  const h = fp.arch.hidden;
  const store = new HiddenStore(
    groups.map((g) => g.reduce((s, w) => s + w.length, 0) * h),
    opts.activationBudgetBytes,
    opts.spillDir,
  );
  const naeeRows = new Map(opts.naeeTokens.map((t, i) => [t, i]));
  const tokens = groups.reduce((s, g) => s + g.length * g[0].length, 0);
  try {
    groups.forEach((g, b) => store.put(b, fp.embed(concat(g))));
    fp.streamWeights(groups.length === 1); // one batch: no weight is used twice
    for (let l = 0; l < fp.arch.numLayers; l++) {
      const t0 = Date.now();
      const collector = new LayerCollector(
        fp.arch,
        l,
        be,
        opts.hessians,
        naeeRows,
        inDims,
        opts.allExperts,
        opts.weighting,
      );
      const observer = collector.observer();
      const progress = ctx.progress(layerLabel(l, fp.arch.numLayers), tokens, 'tokens');
      let start = offset;
      for (let b = 0; b < groups.length; b++) {
        const T = groups[b][0].length;
        const hidden = store.get(b);
        collector.batchStart = start;
        await fp.layer(l, hidden, groups[b].length, T, observer);
        await collector.settle();
        store.put(b, hidden);
        start += groups[b].length * T;
        progress.tick(groups[b].length * T);
      }
      progress.done();
      fp.release();
      await onLayer({ layer: l, collector, seconds: (Date.now() - t0) / 1000 });
    }
    return { spilled: store.spilled };
  } finally {
    fp.streamWeights(false);
    store.close();
  }
}
