/**
 * A Hugging Face config.json rebuilt from a GGUF file's `<arch>.*` metadata, for the architectures moe writes
 * (src/gguf/arch.ts): the common keys here, each family's own in its GgufReader (src/model/*.ts: qwen3moe,
 * qwen2moe, olmoe, llama with experts for Mixtral, deepseek2 for DeepSeek-V2 and -V3). Where a key is
 * absent, llama.cpp's own default for that architecture applies (e.g. whether the top-k weights are
 * renormalised), since llama.cpp defines what the file means.
 */
import * as fs from 'node:fs';
import { CheckpointError } from '../errors';
import type { Config } from '../io/checkpoint';
import { GgufFile, readRange } from '../io/gguf-reader';
import type { GgufHparams } from '../model/gguf-map';
import { architectures } from '../model/registry';
import { GGML_TYPE_ID } from './quants';

/** The `<arch>.*` metadata and the tensor list, read with CheckpointErrors that name the key. */
function hparams(g: GgufFile, arch: string): GgufHparams {
  const file = g.file;
  const m = g.metadata;
  const key = (k: string) => `${arch}.${k}`;
  const opt = (k: string): number | undefined => {
    const v = m.get(key(k));
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new CheckpointError(`GGUF metadata ${key(k)} is ${JSON.stringify(v)}, expected a number`, {
        file,
        hint: 'moe reads one value per model (not per layer)',
      });
    return v;
  };
  return {
    file,
    arch,
    opt,
    num: (k, fallback) => {
      const v = opt(k) ?? fallback;
      const hint = 'the file is incomplete or was not written for llama.cpp';
      if (v === undefined) throw new CheckpointError(`the GGUF file has no ${key(k)}`, { file, hint });
      return v;
    },
    bool: (k, fallback) => {
      const v = m.get(key(k));
      if (v === undefined) return fallback;
      if (typeof v !== 'boolean') {
        throw new CheckpointError(`GGUF metadata ${key(k)} is ${JSON.stringify(v)}, expected true or false`, { file });
      }
      return v;
    },
    array: (k) => {
      const v = m.get(key(k));
      if (v === undefined) return undefined;
      if (!Array.isArray(v))
        throw new CheckpointError(`GGUF metadata ${key(k)} is ${JSON.stringify(v)}, expected an array`, { file });
      return v;
    },
    hasTensor: (name) => g.tensors.some((t) => t.name === name),
    tensorShape: (name) => g.tensors.find((t) => t.name === name)?.shape,
    tensorNames: () => g.tensors.map((t) => t.name),
    tensorF32: (name) => {
      const t = g.tensors.find((x) => x.name === name);
      if (!t) return undefined;
      const n = t.shape.reduce((a, b) => a * b, 1);
      if (t.type !== GGML_TYPE_ID.F32 || t.offset + 4 * n > g.fileSize)
        throw new CheckpointError(`GGUF tensor "${name}" is not ${n} F32 values within the file`, {
          file,
          hint: 'llama.cpp stores rope factors as F32; the file is corrupt or was not written for llama.cpp',
        });
      const fd = fs.openSync(file, 'r');
      try {
        const bytes = readRange(fd, file, t.offset, 4 * n);
        return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 4 * n));
      } finally {
        fs.closeSync(fd);
      }
    },
  };
}

/** The keys every architecture has; the family's GgufReader adds its own (src/model/*.ts). */
export function configFromGguf(g: GgufFile): Config {
  const file = g.file;
  const arch = g.metadata.get('general.architecture');
  if (typeof arch !== 'string') {
    throw new CheckpointError('the GGUF file has no general.architecture', { file, hint: 'this is not a model file' });
  }
  const reader = architectures.ggufReader(arch);
  if (!reader) {
    const hint = `moe reads the MoE architectures it writes: ${architectures.ggufArches().join(', ')} (llama with experts)`;
    throw new CheckpointError(`GGUF architecture "${arch}" is not read by moe`, { file, hint });
  }
  const h = hparams(g, arch);
  const embd = g.tensors.find((t) => t.name === 'token_embd.weight');
  if (!embd || embd.shape.length !== 2)
    throw new CheckpointError('the GGUF file has no 2-D token_embd.weight', { file, hint: 'the file is incomplete' });
  const hidden = h.num('embedding_length');
  const heads = h.num('attention.head_count');
  const experts = h.num('expert_count', 0);
  if (experts < 1) {
    const hint = 'moe evaluates Mixture-of-Experts models';
    throw new CheckpointError(`the GGUF file's ${arch} model has no experts (${arch}.expert_count)`, { file, hint });
  }
  const c: Config = {
    hidden_size: hidden,
    num_hidden_layers: h.num('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: h.num('attention.head_count_kv', heads),
    vocab_size: embd.shape[0],
    max_position_embeddings: h.num('context_length', 4096),
    rms_norm_eps: h.num('attention.layer_norm_rms_epsilon'),
    num_experts_per_tok: h.num('expert_used_count'),
    tie_word_embeddings: !h.hasTensor('output.weight'),
    norm_topk_prob: h.bool('expert_weights_norm', reader.normTopKDefault),
    rope_parameters: rope(g, arch, h.opt),
  };
  h.opt('attention.key_length'); // checked for every architecture, read by those that have it
  reader.complete(h, c, experts);
  return c;
}

/** rope_parameters from rope.freq_base and rope.scaling.*: none, linear and yarn (what moe writes). */
function rope(g: GgufFile, arch: string, opt: (k: string) => number | undefined): Record<string, unknown> {
  const m = g.metadata;
  const theta = opt('rope.freq_base') ?? 10000;
  const type = m.get(`${arch}.rope.scaling.type`) ?? 'none';
  if (type === 'none') return { rope_theta: theta, rope_type: 'default' };
  if (type !== 'linear' && type !== 'yarn')
    throw new CheckpointError(`GGUF rope scaling "${String(type)}" is not read by moe`, {
      file: g.file,
      hint: 'moe reads none, linear and yarn',
    });
  const out: Record<string, unknown> = { rope_theta: theta, rope_type: type, factor: opt('rope.scaling.factor') ?? 1 };
  const original = opt('rope.scaling.original_context_length');
  if (original !== undefined) out.original_max_position_embeddings = original;
  opt('rope.scaling.yarn_log_multiplier'); // checked here; DeepSeek's reader turns it into mscale
  return out;
}
