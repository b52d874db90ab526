/**
 * `moe demo` (what `npm start` runs): the main job on the bundled trained fixture. For now it runs what exists:
 * inspect, then a streamed re-shard and cast round trip that is re-opened and checked bit for bit.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InternalError } from '../errors';
import { openCheckpoint, TensorReader } from '../io/checkpoint';
import type { Context } from '../ui/progress';
import { formatBytes } from '../ui/progress';
import { convert, ConvertReport } from './convert';
import { formatInspect, inspect, InspectReport } from './inspect';

export const FIXTURE_MODEL = path.join(__dirname, '..', '..', 'fixtures', 'tiny-moe');

export interface DemoReport {
  model: string;
  inspect: InspectReport;
  steps: { name: string; seconds: number; detail: string }[];
  round_trip_identical: boolean;
}

export async function demo(ctx: Context, model = FIXTURE_MODEL): Promise<DemoReport> {
  const steps: DemoReport['steps'] = [];
  const timed = async <T>(name: string, f: () => Promise<T> | T, detail: (r: T) => string): Promise<T> => {
    const t0 = Date.now();
    const r = await f();
    steps.push({ name, seconds: (Date.now() - t0) / 1000, detail: detail(r) });
    return r;
  };
  const info = await timed('inspect', () => inspect({ model }), (r) => `${r.params_total} params, ${r.moe_layers.length} MoE layers × ${r.experts_per_layer[0]} experts`);
  ctx.log(formatInspect(info));
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-demo-'));
  try {
    const f32 = path.join(work, 'f32-sharded');
    const back = path.join(work, 'bf16');
    const maxShard = Math.ceil(info.bytes / 2); // cast to f32 doubles the size: expect about 4 shards
    await timed('convert → f32, sharded', () => convert({ model, output: f32, dtype: 'f32', maxShardBytes: maxShard }, ctx), (r: ConvertReport) => `${r.shards} shards, ${formatBytes(r.bytes_out)}`);
    await timed('convert → bf16, one file', () => convert({ model: f32, output: back, dtype: 'bf16', maxShardBytes: 5e9 }, ctx), (r: ConvertReport) => `${r.shards} shard, ${formatBytes(r.bytes_out)}`);
    const identical = await timed('verify round trip', () => sameTensors(model, back), (same) => (same ? 'every tensor bit-identical' : 'MISMATCH'));
    if (!identical) throw new InternalError('demo: the bf16 → f32 → bf16 round trip changed a tensor');
    return { model, inspect: info, steps, round_trip_identical: identical };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** True when both checkpoints hold the same tensor names with byte-identical data. */
export function sameTensors(a: string, b: string): boolean {
  const ca = openCheckpoint(a);
  const cb = openCheckpoint(b);
  if (ca.tensors.size !== cb.tensors.size) return false;
  const ra = new TensorReader(ca);
  const rb = new TensorReader(cb);
  try {
    for (const [name, t] of ca.tensors) {
      const u = cb.tensors.get(name);
      if (!u || u.dtype !== t.dtype || u.shape.join() !== t.shape.join()) return false;
      if (!Buffer.from(ra.bytes(name)).equals(Buffer.from(rb.bytes(name)))) return false;
    }
    return true;
  } finally {
    ra.close();
    rb.close();
  }
}

export function formatDemo(r: DemoReport): string {
  const lines = ['', 'step                         seconds  result'];
  for (const s of r.steps) lines.push(`${s.name.padEnd(28)} ${s.seconds.toFixed(2).padStart(7)}  ${s.detail}`);
  return lines.join('\n');
}
