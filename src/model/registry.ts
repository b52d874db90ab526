/** The supported architectures, by config.json model_type: an explicit list. */
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import type { Checkpoint, Config } from '../io/checkpoint';
import type { Architecture } from './arch';
import { DeepseekV2, DeepseekV3 } from './deepseek';
import { Mixtral } from './mixtral';
import { Olmoe } from './olmoe';
import { Qwen2Moe } from './qwen2-moe';
import { Qwen3Moe } from './qwen3-moe';

type Factory = (config: Config, dir: string) => Architecture;

export const ARCHITECTURES: Record<string, Factory> = {
  mixtral: (c, d) => new Mixtral(c, d),
  qwen2_moe: (c, d) => new Qwen2Moe(c, d),
  qwen3_moe: (c, d) => new Qwen3Moe(c, d),
  olmoe: (c, d) => new Olmoe(c, d),
  deepseek_v2: (c, d) => new DeepseekV2(c, d),
  deepseek_v3: (c, d) => new DeepseekV3(c, d),
};

/** Mixture-of-Experts families that moe knows of but does not handle yet. */
const MOE_NOT_YET = ['phimoe', 'gpt_oss', 'dbrx', 'jamba', 'granitemoe', 'granitemoeshared', 'qwen3_next', 'llama4', 'jetmoe', 'minimax', 'glm4_moe', 'ernie4_5_moe', 'hunyuan_v1_moe', 'deepseek_v32', 'qwen3_vl_moe', 'switch_transformers', 'nllb_moe'];

/** Dense families people commonly point moe at by mistake. */
const DENSE = ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2', 'gemma3', 'gemma3_text', 'phi', 'phi3', 'gpt2', 'gpt_neox', 'olmo', 'olmo2', 'falcon', 'starcoder2', 'smollm3', 'granite'];

export function architectureFor(config: Config, dir: string): Architecture {
  const file = path.join(dir, 'config.json');
  const type = config.model_type;
  if (typeof type !== 'string') throw new CheckpointError('config.json has no model_type', { file, hint: 'this does not look like a Hugging Face transformers config' });
  const make = ARCHITECTURES[type];
  if (make) return make(config, dir);
  const supported = Object.keys(ARCHITECTURES).join(', ');
  if (DENSE.includes(type)) throw new CheckpointError(`model_type "${type}" is a dense model with no experts`, { file, hint: `moe compresses Mixture-of-Experts models: ${supported}` });
  if (MOE_NOT_YET.includes(type)) throw new CheckpointError(`model_type "${type}" is not supported yet`, { file, hint: `supported: ${supported}` });
  throw new CheckpointError(`unknown model_type "${type}"`, { file, hint: `supported: ${supported}` });
}

/** The architecture of an opened checkpoint, with every tensor the config implies checked against the headers. */
export function loadArchitecture(ckpt: Checkpoint): Architecture {
  const arch = architectureFor(ckpt.config, ckpt.dir);
  arch.validate(ckpt);
  return arch;
}
