/** Opening a model for the commands that run it (eval, generate): a folder or a .gguf file, its tokenizer and size. */
import { tokenizerFromJson, loadTokenizer } from '../eval/tokenizer';
import { isGgufPath, openGgufModel } from '../gguf/source';
import { ggufTokenizerJson } from '../gguf/tokenizer';
import { Checkpoint, openCheckpoint, TensorReader } from '../io/checkpoint';
import { quantSummary } from '../io/packed';
import { numel } from '../io/safetensors';
import { fileBytes } from '../io/size';
import { loadArchitecture } from '../model/registry';

export interface SizeReport {
  params: number;
  /** The bytes of the weight files (src/io/size.ts). */
  bytes: number;
  bits_per_param: number;
  /** Packed models: mean code bits of the quantized weights (moe quantize). */
  quantized_average_bits?: number;
}

/** From the checkpoint already opened: parameters from its headers, bytes of its weight files. */
function size(ckpt: Checkpoint): SizeReport {
  let params = 0;
  for (const t of ckpt.tensors.values()) params += numel(t.shape);
  const bytes = fileBytes(ckpt.shards);
  return {
    params,
    bytes,
    bits_per_param: params ? (8 * bytes) / params : 0,
    quantized_average_bits: quantSummary(ckpt.tensors)?.average_bits,
  };
}

/** A model folder, or a .gguf file read back into the same shape (tensors by their Hugging Face names). */
export function openModel(dir: string) {
  if (isGgufPath(dir)) {
    const g = openGgufModel(dir);
    const params = g.tensors.reduce((s, t) => s + t.params, 0);
    const bytes = g.gguf.fileSize; // the size is the weight file's bytes (src/io/size.ts)
    return {
      ckpt: g.ckpt,
      arch: g.arch,
      reader: g.reader as TensorReader,
      tokenizer: () => tokenizerFromJson(ggufTokenizerJson(g.gguf), {}, g.file),
      size: (): SizeReport => ({ params, bytes, bits_per_param: (8 * bytes) / params }),
    };
  }
  const ckpt = openCheckpoint(dir);
  const arch = loadArchitecture(ckpt);
  return {
    ckpt,
    arch,
    reader: new TensorReader(ckpt),
    tokenizer: () => loadTokenizer(ckpt.dir),
    size: () => size(ckpt),
  };
}
