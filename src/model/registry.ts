/**
 * The supported architectures, by config.json model_type: an explicit registry. A family file (./mixtral.ts...)
 * exports one ArchitectureFamily; adding an architecture is that file and one line in BUILT_IN.
 */
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import type { Checkpoint, Config } from '../io/checkpoint';
import type { Architecture, ArchitectureFamily } from './arch';
import { deepseekV2, deepseekV3 } from './deepseek';
import { deepseekV32 } from './deepseek-v32';
import { dots1 } from './dots1';
import { ernie4_5Moe } from './ernie4-5-moe';
import { applyFusedViews } from './fused';
import { glm4Moe } from './glm4-moe';
import type { GgufReader } from './gguf-map';
import { gptOss } from './gpt-oss';
import { granitemoe } from './granitemoe';
import { hunyuanV1Moe } from './hunyuan-v1-moe';
import { llama4Text } from './llama4';
import { minimaxM2 } from './minimax-m2';
import { mixtral } from './mixtral';
import { olmoe } from './olmoe';
import { phimoe } from './phimoe';
import { qwen2Moe } from './qwen2-moe';
import { qwen3Moe } from './qwen3-moe';
import { qwen3_5MoeText } from './qwen3-5-moe';
import { qwen3Next } from './qwen3-next';
import { Registry } from '../util/registry';

/** The families built in, in the order they are listed to users. */
const BUILT_IN: readonly ArchitectureFamily[] = [
  mixtral,
  qwen2Moe,
  qwen3Moe,
  olmoe,
  deepseekV2,
  deepseekV3,
  deepseekV32,
  gptOss,
  qwen3Next,
  qwen3_5MoeText,
  minimaxM2,
  glm4Moe,
  llama4Text,
  dots1,
  ernie4_5Moe,
  hunyuanV1Moe,
  granitemoe,
  phimoe,
];

export class ArchitectureRegistry {
  private readonly byType = new Registry<ArchitectureFamily>('architecture', (f) => f.modelType);

  /** Adds a family; a model_type registered twice is a bug. */
  register(family: ArchitectureFamily): this {
    this.byType.register(family);
    return this;
  }

  get(modelType: string): ArchitectureFamily | undefined {
    return this.byType.get(modelType);
  }

  /** Every family, in registration order. */
  families(): ArchitectureFamily[] {
    return this.byType.values();
  }

  modelTypes(): string[] {
    return this.byType.keys();
  }

  /** The reader of a llama.cpp architecture name (the first family registered with one). */
  ggufReader(ggufArch: string): GgufReader | undefined {
    return this.families().find((f) => f.ggufReader?.arch === ggufArch)?.ggufReader;
  }

  /** The llama.cpp architectures read back from GGUF, each once. */
  ggufArches(): string[] {
    return [...new Set(this.families().flatMap((f) => (f.ggufReader ? [f.ggufReader.arch] : [])))];
  }
}

export const architectures = new ArchitectureRegistry();
for (const f of BUILT_IN) architectures.register(f);

/** Adds an architecture family (tests and extensions; the built-in ones are registered above). */
export function registerArchitecture(family: ArchitectureFamily): void {
  architectures.register(family);
}

/** The registered model_types (for `synth --arch` choices and help text). */
export function modelTypes(): string[] {
  return architectures.modelTypes();
}

/** Mixture-of-Experts families that moe knows of but does not handle yet. */
const MOE_NOT_YET = [
  'phimoe',
  'dbrx',
  'jamba',
  'granitemoe',
  'granitemoeshared',
  'llama4',
  'jetmoe',
  'minimax',
  'ernie4_5_moe',
  'hunyuan_v1_moe',
  'qwen3_vl_moe',
  'switch_transformers',
  'nllb_moe',
];

/** Dense families people commonly point moe at by mistake. */
const DENSE = [
  'llama',
  'mistral',
  'qwen2',
  'qwen3',
  'gemma',
  'gemma2',
  'gemma3',
  'gemma3_text',
  'phi',
  'phi3',
  'gpt2',
  'gpt_neox',
  'olmo',
  'olmo2',
  'falcon',
  'starcoder2',
  'smollm3',
  'granite',
];

export function architectureFor(config: Config, dir: string): Architecture {
  const file = path.join(dir, 'config.json');
  const type = config.model_type;
  if (typeof type !== 'string')
    throw new CheckpointError('config.json has no model_type', {
      file,
      hint: 'this does not look like a Hugging Face transformers config',
    });
  const family = architectures.get(type);
  if (family) return family.create(config, dir);
  const supported = modelTypes().join(', ');
  if (DENSE.includes(type))
    throw new CheckpointError(`model_type "${type}" is a dense model with no experts`, {
      file,
      hint: `moe compresses Mixture-of-Experts models: ${supported}`,
    });
  if (MOE_NOT_YET.includes(type))
    throw new CheckpointError(`model_type "${type}" is not supported yet`, { file, hint: `supported: ${supported}` });
  throw new CheckpointError(`unknown model_type "${type}"`, { file, hint: `supported: ${supported}` });
}

/** The architecture of an opened checkpoint, with every tensor the config implies checked against the headers. */
export function loadArchitecture(ckpt: Checkpoint): Architecture {
  const arch = architectureFor(ckpt.config, ckpt.dir);
  applyFusedViews(ckpt, arch);
  arch.validate(ckpt);
  return arch;
}
