/** model.safetensors.index.json: `{metadata: {total_size}, weight_map: {tensor: shard}}`. */
import * as fs from 'node:fs';
import { CheckpointError, shown } from '../errors';

export const INDEX_FILE = 'model.safetensors.index.json';

export interface ShardIndex {
  weightMap: Map<string, string>;
  /** Distinct shard names, in order of first appearance. */
  shards: string[];
  totalSize?: number;
}

export function readIndex(file: string): ShardIndex {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(`index is not valid JSON (${(e as Error).message})`, {
      file,
      hint: 'fix or re-save the checkpoint',
    });
  }
  const wm = (json as { weight_map?: unknown })?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) {
    throw new CheckpointError('index has no weight_map object', { file, hint: 'fix or re-save the checkpoint' });
  }
  const weightMap = new Map<string, string>();
  const shards: string[] = [];
  for (const [name, shard] of Object.entries(wm)) {
    if (typeof shard !== 'string')
      throw new CheckpointError(`index maps "${name}" to ${shown(shard)}, not a file name`, { file });
    weightMap.set(name, shard);
    if (!shards.includes(shard)) shards.push(shard);
  }
  if (shards.length === 0)
    throw new CheckpointError('index weight_map is empty', { file, hint: 'fix or re-save the checkpoint' });
  const total = (json as { metadata?: { total_size?: unknown } }).metadata?.total_size;
  return { weightMap, shards, totalSize: typeof total === 'number' ? total : undefined };
}

export function indexJson(weightMap: Iterable<[string, string]>, totalSize: number): string {
  const map: Record<string, string> = {};
  for (const [k, v] of [...weightMap].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) map[k] = v;
  return JSON.stringify({ metadata: { total_size: totalSize }, weight_map: map }, null, 2) + '\n';
}
