/**
 * Fused expert storage (src/model/fused.ts): per-expert views of stored [E, ...] tensors read exactly the values
 * transformers' layout puts there, and writing per-expert tensors back fused reproduces the stored bytes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openCheckpoint, TensorReader } from '../../src/io/checkpoint';
import { fromFloat32 } from '../../src/io/dtype';
import { FusedExpertLayout, Proj } from '../../src/model/arch';
import { applyFusedViews, FusedOut, fuseOutput, FusingWriter, LogicalOut } from '../../src/model/fused';
import { ToyMoe } from '../fixtures-arch/toy-moe';
import { tmpDir } from './../helpers';
import { ShardedWriter } from '../../src/io/writer';

const E = 3;
const H = 4;
const I = 2;

function layoutOf(interleaved: boolean): FusedExpertLayout {
  const p = (l: number) => `model.layers.${l}.moe.experts`;
  return {
    gateUp: (l) => `${p(l)}.gate_up_proj`,
    gateUpBias: (l) => `${p(l)}.gate_up_proj_bias`,
    down: (l) => `${p(l)}.down_proj`,
    downBias: (l) => `${p(l)}.down_proj_bias`,
    interleaved,
  };
}

class FusedToy extends ToyMoe {
  constructor(
    config: Record<string, unknown>,
    dir: string,
    override readonly fusedExperts: FusedExpertLayout,
  ) {
    super(config, dir);
  }

  override expertBiasKey(layer: number, expert: number, p: Proj): string {
    return `${this.moePrefix(layer)}.experts.${expert}.w_${p}.bias`;
  }
}

const config = {
  model_type: 'toy_moe',
  num_hidden_layers: 1,
  hidden_size: H,
  intermediate_size: I,
  vocab_size: 8,
  num_attention_heads: 2,
  num_local_experts: E,
  num_experts_per_tok: 2,
};

/** Distinct values: element j of tensor t is t * 1000 + j. */
function values(t: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, j) => t * 1000 + j);
}

const stored: [string, number[]][] = [
  ['model.layers.0.moe.experts.gate_up_proj', [E, H, 2 * I]],
  ['model.layers.0.moe.experts.gate_up_proj_bias', [E, 2 * I]],
  ['model.layers.0.moe.experts.down_proj', [E, I, H]],
  ['model.layers.0.moe.experts.down_proj_bias', [E, H]],
];

function writeStored(dir: string, dtype: 'F32' | 'BF16'): void {
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const plan = stored.map(([name, shape]) => ({ name, dtype, shape }));
  const w = new ShardedWriter(dir, plan, { maxShardBytes: 1e9, singleFileName: 'model.safetensors' });
  stored.forEach(([name, shape], t) =>
    w.write(
      name,
      fromFloat32(
        values(
          t,
          shape.reduce((a, b) => a * b),
        ),
        dtype,
      ),
    ),
  );
  w.finish();
}

async function collect(it: LogicalOut | FusedOut): Promise<Uint8Array> {
  if ('bytes' in it) return it.bytes();
  const parts: Uint8Array[] = [];
  for await (const p of it.pieces()) parts.push(p);
  return Buffer.concat(parts);
}

describe.each([true, false])('fused experts (interleaved %s)', (interleaved) => {
  const dir = tmpDir('moe-fused-');
  writeStored(dir, 'F32');
  const ckpt = openCheckpoint(dir);
  const arch = new FusedToy(ckpt.config, ckpt.dir, layoutOf(interleaved));
  applyFusedViews(ckpt, arch);
  const reader = new TensorReader(ckpt);
  afterAll(() => reader.close());

  test('views read transformers layout: gate/up columns transposed, down transposed, biases sliced', () => {
    const gu = values(0, E * H * 2 * I);
    const gub = values(1, E * 2 * I);
    const dn = values(2, E * I * H);
    const col = (k: number, i: number) => (interleaved ? 2 * i + k : k * I + i);
    for (let e = 0; e < E; e++) {
      (['gate', 'up'] as Proj[]).forEach((p, k) => {
        const w = reader.f32(arch.expertKey(0, e, p));
        const want = new Float32Array(I * H);
        for (let i = 0; i < I; i++)
          for (let h = 0; h < H; h++) want[i * H + h] = gu[e * H * 2 * I + h * 2 * I + col(k, i)];
        expect(Array.from(w)).toEqual(Array.from(want));
        const b = reader.f32(arch.expertBiasKey(0, e, p));
        expect(Array.from(b)).toEqual(Array.from({ length: I }, (_, i) => gub[e * 2 * I + col(k, i)]));
      });
      const d = reader.f32(arch.expertKey(0, e, 'down'));
      const want = new Float32Array(H * I);
      for (let h = 0; h < H; h++) for (let i = 0; i < I; i++) want[h * I + i] = dn[e * I * H + i * H + h];
      expect(Array.from(d)).toEqual(Array.from(want));
      expect(Array.from(reader.rowsF32(arch.expertKey(0, e, 'down'), 1, 2))).toEqual(Array.from(want.slice(I, 3 * I)));
      expect(ckpt.tensors.get(arch.expertKey(0, e, 'gate'))!.shape).toEqual([I, H]);
    }
    expect(ckpt.tensors.has(stored[0][0])).toBe(false);
    expect([...ckpt.stored!.keys()]).toEqual(stored.map(([n]) => n));
  });

  test('writing per-expert tensors back fused reproduces the stored slices, in the new expert order', async () => {
    const copyOf = [2, 0];
    const items: LogicalOut[] = [];
    for (const t of ckpt.tensors.values()) {
      const m = /experts\.(\d+)\.w_(\w+)\.(weight|bias)$/.exec(t.name)!;
      const e = Number(m[1]);
      if (e >= copyOf.length) continue;
      const proj = m[2] as Proj;
      const src = m[3] === 'weight' ? arch.expertKey(0, copyOf[e], proj) : arch.expertBiasKey(0, copyOf[e], proj);
      items.push({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: () => reader.bytes(src) });
    }
    const out = fuseOutput(arch, items, copyOf.length);
    expect(out.map((o) => o.name)).toEqual(stored.map(([n]) => n));
    for (const [t, [name, shape]] of stored.entries()) {
      const o = out.find((x) => x.name === name)!;
      expect(o.shape).toEqual([copyOf.length, ...shape.slice(1)]);
      const src = ckpt.stored!.get(name)!;
      const want = Buffer.concat(copyOf.map((e) => reader.rawSlice(src, e)));
      expect(Buffer.from(await collect(o)).equals(want)).toBe(true);
      expect(t).toBeGreaterThanOrEqual(0);
    }
  });
});

test('FusingWriter: per-expert tensors written in checkpoint order come out fused, byte for byte', () => {
  const src = tmpDir('moe-fused-src-');
  writeStored(src, 'BF16');
  const ckpt = openCheckpoint(src);
  const arch = new FusedToy(ckpt.config, ckpt.dir, layoutOf(true));
  applyFusedViews(ckpt, arch);
  const reader = new TensorReader(ckpt);
  const dest = tmpDir('moe-fused-out-');
  const plan = [...ckpt.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
  const w = new FusingWriter(dest, arch, plan, { maxShardBytes: 1e9 });
  for (const t of plan) w.write(t.name, reader.bytes(t.name));
  w.finish();
  expect(fs.readdirSync(dest)).toEqual(['model.safetensors']);
  fs.writeFileSync(path.join(dest, 'config.json'), JSON.stringify(config));
  const again = openCheckpoint(dest);
  const r2 = new TensorReader(again);
  for (const [name] of stored) {
    const a = ckpt.stored!.get(name)!;
    expect(again.tensors.get(name)!.shape).toEqual(a.shape);
    expect(Buffer.from(r2.bytes(name)).equals(Buffer.concat([0, 1, 2].map((e) => reader.rawSlice(a, e))))).toBe(true);
  }
  r2.close();
  reader.close();
});

test('a stored fused tensor of the wrong shape is refused with its name', () => {
  const dir = tmpDir('moe-fused-bad-');
  writeStored(dir, 'BF16');
  const ckpt = openCheckpoint(dir);
  const arch = new FusedToy({ ...ckpt.config, intermediate_size: 3 }, ckpt.dir, layoutOf(true));
  expect(() => applyFusedViews(ckpt, arch)).toThrow(
    'tensor "model.layers.0.moe.experts.gate_up_proj" has shape [3,4,4], config.json implies [3,4,6]',
  );
});
