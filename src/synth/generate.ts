/**
 * Random checkpoints with the exact Hugging Face layout of a model_type, written tensor by tensor through the
 * sharded writer (so a multi-GB checkpoint needs only one tensor in memory). For tests and benchmarks.
 */
import { DType, fromFloat32, isFloatDType } from '../io/dtype';
import type { Config } from '../io/checkpoint';
import { withOutput } from '../io/output';
import { DEFAULT_MAX_SHARD_BYTES, PlannedTensor, planShards, ShardedWriter } from '../io/writer';
import type { Architecture, TensorRole } from '../model/arch';
import { architectureFor } from '../model/registry';
import { verifyWritten } from '../model/verify';
import { mulberry32 } from '../util/random';
import type { Context } from '../ui/progress';
import { numel, tensorBytes } from '../io/safetensors';
import { writeConfig } from '../io/config-text';

export interface SynthOptions {
  config: Config;
  output: string;
  seed?: number;
  dtype?: DType;
  maxShardBytes?: number;
  /** Spread of the weights (uniform with this standard deviation); norms are 1 ± this. */
  std?: number;
  force?: boolean;
  /** Plan only: the report of what would be written, and nothing on disk. */
  dryRun?: boolean;
}

export interface SynthReport {
  output: string;
  model_type: string;
  layers: number;
  experts: number;
  hidden_size: number;
  dtype: DType;
  tensors: number;
  shards: number;
  bytes: number;
  dry_run: boolean;
}

function fill(n: number, rand: () => number, center: number, std: number): Float32Array {
  const out = new Float32Array(n);
  const half = std * Math.sqrt(3); // uniform[-a, a] has standard deviation a/√3
  for (let i = 0; i < n; i++) out[i] = center + (2 * rand() - 1) * half;
  return out;
}

/** Float bytes of `dtype` with fast truncation for BF16 (random data needs no rounding). */
function encode(values: Float32Array, dtype: DType): Uint8Array {
  if (dtype !== 'BF16') return fromFloat32(values, dtype);
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = u32[i] >>> 16;
  return new Uint8Array(out.buffer);
}

/**
 * The tensors as a checkpoint stores them: the schema, with the per-expert tensors of each MoE layer replaced by
 * the fused 3-D tensors of Architecture.fusedExperts (gpt-oss) where the layer's first expert tensor stood. Random
 * values need no fusing: the stored tensors are filled directly.
 */
function storedSpecs(arch: Architecture): { name: string; shape: number[]; role?: TensorRole }[] {
  const layout = arch.fusedExperts;
  if (!layout) return arch.schema();
  const [E, H, I] = [arch.numExperts, arch.hidden, arch.expertWidth];
  const out: { name: string; shape: number[]; role?: TensorRole }[] = [];
  for (const s of arch.schema()) {
    const r = s.role;
    if (r.kind !== 'expert' && r.kind !== 'expert_bias') out.push(s);
    else if (r.kind === 'expert' && r.expert === 0 && r.proj === 'gate') {
      const l = r.layer;
      // transposed [in, out] slices (gpt-oss, Llama 4), or nn.Linear's [out, in] (GraniteMoE)
      out.push({ name: layout.gateUp(l), shape: layout.outIn ? [E, 2 * I, H] : [E, H, 2 * I] });
      if (layout.gateUpBias) out.push({ name: layout.gateUpBias(l), shape: [E, 2 * I] });
      out.push({ name: layout.down(l), shape: layout.outIn ? [E, H, I] : [E, I, H] });
      if (layout.downBias) out.push({ name: layout.downBias(l), shape: [E, H] });
    }
  }
  return out;
}

export async function synthesize(opts: SynthOptions, ctx: Context): Promise<SynthReport> {
  const dtype = opts.dtype ?? 'F32';
  if (!isFloatDType(dtype)) throw new TypeError(`synthesize: ${dtype} is not a floating dtype`);
  const arch = architectureFor(opts.config, opts.output);
  const specs = storedSpecs(arch);
  const plan: PlannedTensor[] = specs.map((s) => ({ name: s.name, shape: s.shape, dtype }));
  const std = opts.std ?? 0.05;
  const rand = mulberry32(opts.seed ?? 0);
  const total = plan.reduce((s, t) => s + tensorBytes(t), 0);
  const summary = {
    output: opts.output,
    model_type: arch.modelType,
    layers: arch.numLayers,
    experts: arch.numExperts,
    hidden_size: arch.hidden,
    dtype,
  };
  if (opts.dryRun)
    return {
      ...summary,
      tensors: plan.length,
      shards: planShards(plan, opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES).length,
      bytes: total,
      dry_run: true,
    };
  let shards = 0;
  await withOutput(opts.output, { force: opts.force, command: 'synth', verify: verifyWritten }, (out) => {
    const writer = new ShardedWriter(out.tmp, plan, {
      maxShardBytes: opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES,
      metadata: { format: 'pt' },
    });
    shards = writer.shardCount;
    const progress = ctx.progress('synth', total, 'bytes');
    for (const s of specs) {
      const isNorm = s.role?.kind === 'norm' || s.role?.kind === 'final_norm';
      // zero-centred norms (Qwen3-Next's 1 + weight) are 0 ± 0.1; its linear attention's gated norm 1 ± 0.1
      const gated = s.role?.kind === 'attn' && s.role.name === 'norm';
      const centre = gated ? 1 : isNorm ? 1 - arch.normOffset : 0;
      const values = fill(numel(s.shape), rand, centre, isNorm || gated ? 0.1 : std);
      const bytes = encode(values, dtype);
      writer.write(s.name, bytes);
      progress.tick(bytes.byteLength);
    }
    progress.done();
    writer.finish();
    writeConfig(out, {
      ...opts.config,
      torch_dtype: dtype === 'BF16' ? 'bfloat16' : dtype === 'F16' ? 'float16' : 'float32',
    });
  });
  return { ...summary, tensors: plan.length, shards, bytes: total, dry_run: false };
}
