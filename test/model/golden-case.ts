/**
 * One golden checkpoint of fixtures/golden (scripts/make_golden.py) read and run the way the per-family tests
 * compare with transformers: the token ids, transformers' logits and router top-k, golden.json, and moe's forward
 * pass on them (optionally with the config or the architecture changed, for the rule tests).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend } from '../../src/backend/backend';
import { RefBackend } from '../../src/backend/ref';
import { OnnxBackend } from '../../src/backend/onnx';
import { openCheckpoint, openTensorFile, TensorReader } from '../../src/io/checkpoint';
import type { Architecture } from '../../src/model/arch';
import { ForwardPass, fullLogits } from '../../src/model/forward/model';
import { loadArchitecture } from '../../src/model/registry';
import { lossOf, maxDiff } from '../golden-math';

export interface Golden {
  ids: Int32Array;
  /** transformers' logits [B, T, V]. */
  logits: Float32Array;
  B: number;
  T: number;
  V: number;
  /** router_topk [L, N, k]: the experts each MoE layer's router selected, per token. */
  L: number;
  N: number;
  k: number;
  topk: Int32Array;
  loss: number;
  info: { checks: Record<string, number>; params_total: number } & Record<string, unknown>;
}

export function readGolden(dir: string): Golden {
  const r = new TensorReader(openTensorFile(path.join(dir, 'golden.safetensors')));
  const ids = Int32Array.from(new BigInt64Array(r.bytes('input_ids').slice().buffer), Number);
  const [B, T, V] = r.ref('logits').shape;
  const [L, N, k] = r.ref('router_topk').shape;
  const topk = Int32Array.from(new BigInt64Array(r.bytes('router_topk').slice().buffer), Number);
  const logits = r.f32('logits');
  r.close();
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));
  return { ids, logits, B, T, V, L, N, k, topk, loss: info.loss as number, info };
}

/** The golden's token ids as B windows of T (a --data file's rows). */
export function goldenWindows({ ids, B, T }: Pick<Golden, 'ids' | 'B' | 'T'>): number[][] {
  return [...Array(B).keys()].map((b) => Array.from(ids.subarray(b * T, (b + 1) * T)));
}

/**
 * moe's forward pass over the golden's ids: the logits and every MoE layer's selected experts. `config` replaces
 * config.json, `patch` changes the architecture before the run.
 */
export async function runGolden(
  dir: string,
  be: Backend,
  change: { patch?: (a: Architecture) => void; config?: Record<string, unknown> } = {},
): Promise<{ logits: Float32Array; experts: Map<number, Int32Array>; g: Golden }> {
  const g = readGolden(dir);
  const ckpt = openCheckpoint(dir);
  if (change.config) ckpt.config = change.config;
  const arch = loadArchitecture(ckpt);
  change.patch?.(arch);
  const reader = new TensorReader(ckpt);
  const { sink, logits } = fullLogits(g.B * g.T, g.V);
  const experts = new Map<number, Int32Array>();
  await new ForwardPass(reader, arch, be).run(g.ids, g.B, g.T, sink, {
    router: (l, r) => experts.set(l, r.experts.slice()),
  });
  reader.close();
  return { logits, experts, g };
}

/** fn with an onnx backend of 2 threads, disposed after. */
export async function withOnnx<T>(fn: (be: Backend) => Promise<T>): Promise<T> {
  const onnx = await OnnxBackend.create({ threads: 2 });
  try {
    return await fn(onnx);
  } finally {
    await onnx.dispose();
  }
}

/** moe's logits within 1e-3 of transformers' and its loss within 2e-4 of the golden's. */
export function expectLogitsMatch({ logits, g }: { logits: Float32Array; g: Golden }): void {
  expect(maxDiff(logits, g.logits)).toBeLessThanOrEqual(1e-3);
  expect(Math.abs(lossOf(logits, g.ids, g.B, g.T, g.V) - g.loss)).toBeLessThanOrEqual(2e-4);
}

/** The MoE layers moe routed are `layers`, each selecting transformers' router_topk on every token, in order. */
export function expectRouterMatch(
  { experts, g }: { experts: Map<number, Int32Array>; g: Golden },
  layers: number[],
): void {
  expect([...experts.keys()]).toEqual(layers);
  const n = g.N * g.k;
  layers.forEach((l, i) =>
    expect(Array.from(experts.get(l)!)).toEqual(Array.from(g.topk.subarray(i * n, (i + 1) * n))),
  );
}

/**
 * The two tests every family's golden passes: on the reference backend, the golden's shape [L, N, k], the MoE
 * layers `layers` routed to transformers' experts on every token, logits within 1e-3 and loss within 2e-4
 * (`routerTitle` names what the router picks); on onnx, the same logits and loss.
 */
export function goldenMatchTests(dir: string, shape: [number, number, number], layers: number[], routerTitle: string) {
  test(`${routerTitle}; logits within 1e-3, loss within 2e-4`, async () => {
    const r = await runGolden(dir, new RefBackend());
    expect([r.g.L, r.g.N, r.g.k]).toEqual(shape);
    expectRouterMatch(r, layers);
    expectLogitsMatch(r);
  });

  test('onnx backend: logits within 1e-3, loss within 2e-4', async () => {
    await withOnnx(async (onnx) => expectLogitsMatch(await runGolden(dir, onnx)));
  });
}
