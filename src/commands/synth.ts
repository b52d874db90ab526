/** `moe synth --arch T -o OUT`: a random checkpoint with the exact Hugging Face layout of a model type. */
import { UsageError } from '../errors';
import { CAST_CHOICES, CAST_TARGETS } from '../io/dtype';
import { synthesize, SynthReport } from '../synth/generate';
import { PRESETS } from '../synth/presets';
import { CommandSpec, dryRun, FORCE, JSON_OUTPUT, MAX_SHARD_SIZE, output } from './spec';

/** "a, b or c". */
const orList = (xs: string[]): string =>
  xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} or ${xs[xs.length - 1]}`;

/** --set key=value items as config keys (JSON values, else the text). */
export function parseSets(items: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq < 1) throw new UsageError(`--set ${JSON.stringify(item)} is not key=value`);
    const value = item.slice(eq + 1);
    try {
      out[item.slice(0, eq)] = JSON.parse(value);
    } catch {
      out[item.slice(0, eq)] = value;
    }
  }
  return out;
}

function summary(r: SynthReport): string {
  return `${r.model_type}, ${r.layers} layers, ${r.experts} experts, hidden ${r.hidden_size}, ${r.dtype}: ${r.tensors} tensors in ${r.shards} shard(s), ${(r.bytes / 1e6).toFixed(2)} MB`;
}

export const synthSpec: CommandSpec<SynthReport> = {
  name: 'synth',
  summary: 'write a random checkpoint with the exact Hugging Face layout of a model type (for tests and benchmarks)',
  args: [],
  options: [
    {
      flag: '--arch <model_type>',
      type: { choices: () => Object.keys(PRESETS), shown: false },
      required: true,
      description: () => orList(Object.keys(PRESETS)),
    },
    output('destination folder'),
    {
      flag: '--set <key=value...>',
      type: 'list',
      description: 'override config keys (JSON values), e.g. --set hidden_size=1024 num_hidden_layers=6',
    },
    { flag: '--dtype <dtype>', type: { choices: () => CAST_CHOICES }, default: 'f32', description: 'weight dtype' },
    { flag: '--seed <n>', type: 'int', default: '0', description: 'random seed' },
    MAX_SHARD_SIZE,
    FORCE,
    dryRun('print the config summary, tensors and bytes it would write, and write nothing'),
    JSON_OUTPUT,
  ],
  examples: [
    'moe synth --arch qwen3_moe -o /tmp/tiny',
    'moe synth --arch mixtral --set hidden_size=4096 intermediate_size=14336 num_hidden_layers=2 --dtype bf16 -o /tmp/big',
  ],
  run: (_args, o, ctx) => {
    const config = { ...PRESETS[o.arch as string], ...parseSets((o.set as string[] | undefined) ?? []) };
    const {
      output: out,
      seed,
      maxShardBytes,
      force,
      dryRun: dry,
    } = o as { output: string; seed: number; maxShardBytes: number; force: boolean; dryRun: boolean };
    return synthesize(
      { config, output: out, dtype: CAST_TARGETS[o.dtype as string], seed, maxShardBytes, force, dryRun: dry },
      ctx,
    );
  },
  format: (r) =>
    r.dry_run
      ? `dry run: would write ${r.output}: ${summary(r)} (nothing written)`
      : `wrote ${r.output}: ${r.model_type}, ${r.tensors} tensors in ${r.shards} shard(s)`,
};
