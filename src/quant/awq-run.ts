/**
 * `moe quantize --awq`: the bits each weight's scale search rounds to, the search with its progress, the warnings
 * for scale groups not formed, and the report. The method is src/quant/awq.ts; its groups src/quant/awq-groups.ts.
 * Under --allocate lp a weight's bits are chosen after the fold, so the search rounds a weight whose bits the LP
 * chooses to its allowed bit-width nearest the --bits budget (ties: the lower); fixed bits (router, --attn-bits,
 * --shared-expert-bits) are used as they are.
 */
import type { Backend } from '../backend/backend';
import { CheckpointError } from '../errors';
import type { TensorReader } from '../io/checkpoint';
import type { Architecture } from '../model/arch';
import type { Context } from '../ui/progress';
import { scaleGroups } from './awq-groups';
import { AwqFold, AwqGroupResult, AwqWeighting, searchAwq } from './awq';
import type { Group, Target } from './plan';
import { allowedBits, BitRules, fixedBits } from './quant-plan';
import type { Weighting } from './weighting';

export interface AwqReport {
  /** Scale groups searched. */
  groups: number;
  mean_alpha: number;
  /** Σ over the groups of the searched output error at the chosen α, and at α = 0 (plain quantization). */
  loss: number;
  loss_alpha0: number;
  /** Groups not formed, by kind and reason, with their layers. */
  skipped: { kind: string; reason: string; layers: number[] }[];
  /** Every group's α and losses (--report FILE; --json leaves it out). */
  by_group?: AwqGroupResult[];
}

export interface AwqRun {
  arch: Architecture;
  reader: TensorReader;
  weighting: Weighting;
  targets: Target[];
  groups: Group[];
  rules: BitRules;
  allocate: 'uniform' | 'lp';
  groupSize: number;
  symmetric: boolean;
  owned: (name: string) => boolean;
  be: Backend;
  ctx: Context;
  /** The task's weight of the search (params searched). */
  weight: number;
}

/** The bits the search rounds weight `name` to (see the header); undefined for a weight left unquantized. */
export function searchBits(
  x: Pick<AwqRun, 'targets' | 'groups' | 'rules' | 'allocate'>,
): (name: string) => number | undefined {
  const targetOf = new Map(x.targets.map((t) => [t.name, t]));
  const groupOf = new Map(x.groups.map((g) => [g.key, g]));
  return (name) => {
    const t = targetOf.get(name);
    if (!t) return undefined;
    const g = groupOf.get(t.group)!;
    const allowed = x.allocate === 'lp' ? allowedBits(g, x.rules) : [fixedBits(g, x.rules) ?? x.rules.bits];
    return allowed.reduce((a, b) => (Math.abs(b - x.rules.bits) < Math.abs(a - x.rules.bits) ? b : a));
  };
}

/** Searches the scales; returns the fold and the weighting the quantizer reads through it. */
export async function runAwq(x: AwqRun): Promise<{ fold: AwqFold; weighting: AwqWeighting }> {
  const consumers = scaleGroups(x.arch)
    .groups.filter((g) => x.owned(g.producer.name))
    .reduce((n, g) => n + g.consumers.length, 0);
  const bar = x.ctx.progress('AWQ scale search', consumers, 'tensors', x.weight);
  const fold = await searchAwq(
    x.arch,
    x.reader,
    x.weighting,
    {
      groupSize: x.groupSize,
      symmetric: x.symmetric,
      bitsOf: searchBits(x),
      backend: x.be,
      tick: () => bar.tick(),
    },
    x.owned,
  );
  bar.done();
  if (fold.result.groups.length === 0 && fold.result.skipped.length > 0)
    throw new CheckpointError(`AWQ found no scale group it can fold in this model (${fold.result.skipped[0].reason})`, {
      file: x.arch.dir,
      hint: 'quantize without --awq',
    });
  for (const k of awqReport(fold).skipped)
    x.ctx.warn(`AWQ: no ${k.kind} scales in layer(s) ${layerRanges(k.layers)}: ${k.reason}`);
  return { fold, weighting: new AwqWeighting(x.weighting, fold) };
}

/** 0,1,2,5,7,8 → "0-2,5,7-8". */
export function layerRanges(layers: number[]): string {
  const out: string[] = [];
  const sorted = [...layers].sort((a, b) => a - b);
  for (let i = 0; i < sorted.length;) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    out.push(j > i ? `${sorted[i]}-${sorted[j]}` : `${sorted[i]}`);
    i = j + 1;
  }
  return out.join(',');
}

export function awqReport(fold: AwqFold): AwqReport {
  const g = fold.result.groups;
  const skipped = new Map<string, { kind: string; reason: string; layers: number[] }>();
  for (const s of fold.result.skipped) {
    // "no calibrated inputs (key)": one entry per kind, the keys folded into the layer list
    const reason = s.reason.replace(/ \(layers\.[^)]*\)$/, '');
    const key = `${s.kind}\u0000${reason}`;
    const e = skipped.get(key) ?? skipped.set(key, { kind: s.kind, reason, layers: [] }).get(key)!;
    if (!e.layers.includes(s.layer)) e.layers.push(s.layer);
  }
  return {
    groups: g.length,
    mean_alpha: g.length ? g.reduce((a, r) => a + r.alpha, 0) / g.length : 0,
    loss: g.reduce((a, r) => a + r.loss, 0),
    loss_alpha0: g.reduce((a, r) => a + r.loss_alpha0, 0),
    skipped: [...skipped.values()],
    by_group: g,
  };
}
