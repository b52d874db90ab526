/**
 * A GGUF file as a model source for inspect and eval: its header is read (no tensor data), the config rebuilt
 * from the metadata (./config.ts), and every Hugging Face tensor the architecture implies is mapped back to the
 * GGUF tensor it was written to, by inverting moe's own export mapping (./arch.ts `ggufModel`): stacked experts
 * ffn_*_exps [E, out, in] are sliced per expert, Mixtral's q/k rows un-permuted, DeepSeek's kv_b_proj rebuilt
 * from k_b (transposed per head) and v_b, Qwen2-MoE's shared-expert gate given back its [1, hidden] shape, an
 * architecture's GgufTransform undone (./transform.ts; Qwen3-Next's in_proj_qkvz gathered from attn_qkv and attn_gate).
 * Tensors are dequantized to float32 one at a time, with positioned reads. A ggml type moe does not decode, a
 * tensor outside the layout or data past the end of the file is refused, never read approximately.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { Checkpoint, copyInto, TensorReader } from '../io/checkpoint';
import { fromFloat32 } from '../io/dtype';
import type { TensorRef } from '../io/safetensors';
import type { Architecture } from '../model/arch';
import { architectureFor } from '../model/registry';
import { GgufSource, ggufModel, unpermuteRows } from './arch';
import { configFromGguf } from './config';
import { fromGguf } from './transform';
import { blockSize, dequantizeRows, GGML_TYPE_ID, GgmlType, rowBytes } from './quants';
import { GgufFile, GgufTensorInfo, readGguf, readRange } from '../io/gguf-reader';

const TYPE_BY_ID = new Map(Object.entries(GGML_TYPE_ID).map(([t, id]) => [id, t as GgmlType]));
/** Names of ggml types moe does not decode, for the refusal message (ggml.h's enum ggml_type). */
const OTHER_TYPES: Record<number, string> = {
  3: 'Q4_1',
  6: 'Q5_0',
  7: 'Q5_1',
  9: 'Q8_1',
  15: 'Q8_K',
  16: 'IQ2_XXS',
  17: 'IQ2_XS',
  18: 'IQ3_XXS',
  19: 'IQ1_S',
  20: 'IQ4_NL',
  21: 'IQ3_S',
  22: 'IQ2_S',
  23: 'IQ4_XS',
  24: 'I8',
  25: 'I16',
  26: 'I32',
  27: 'I64',
  28: 'F64',
  29: 'IQ1_M',
  34: 'TQ1_0',
  35: 'TQ2_0',
  39: 'MXFP4',
};

export function isGgufPath(p: string): boolean {
  return p.toLowerCase().endsWith('.gguf') && !(fs.existsSync(p) && fs.statSync(p).isDirectory());
}

/** One GGUF tensor with its decoded type and size. */
export interface GgufTensor extends GgufTensorInfo {
  ggml: GgmlType;
  params: number;
  bytes: number;
}

/** Where an HF tensor's values come from. */
interface Part {
  tensor: GgufTensor;
  /** Expert index in a stacked tensor, and how many it stacks. */
  index: number;
  of: number;
  src: GgufSource;
  /** DeepSeek: the v_b half of kv_b_proj (the k_b half is `tensor`). */
  vb?: GgufTensor;
  /** Other GGUF tensors holding rows of the same HF tensor (each with its GgufTransform). */
  more?: Part[];
}

export interface GgufModelSource {
  file: string;
  gguf: GgufFile;
  /** Stands in for a checkpoint folder: the config rebuilt, the HF tensors (F32, as the reader returns them). */
  ckpt: Checkpoint;
  arch: Architecture;
  reader: GgufTensorReader;
  tensors: GgufTensor[];
}

const rowsOf = (shape: number[]) => shape.slice(0, -1).reduce((a, b) => a * b, 1);

function decodeInfo(g: GgufFile, t: GgufTensorInfo): GgufTensor {
  const ggml = TYPE_BY_ID.get(t.type);
  if (!ggml) {
    throw new CheckpointError(
      `GGUF tensor "${t.name}" has ggml type ${OTHER_TYPES[t.type] ?? `#${t.type}`}, which moe does not decode`,
      {
        file: g.file,
        hint: `moe reads ${Object.keys(GGML_TYPE_ID).join(', ')}; use llama.cpp's llama-perplexity for other types`,
      },
    );
  }
  const cols = t.shape[t.shape.length - 1] ?? 1;
  if (t.shape.length === 0 || t.shape.some((d) => !Number.isInteger(d) || d < 1))
    throw new CheckpointError(`GGUF tensor "${t.name}" has shape [${t.shape}]`, {
      file: g.file,
      hint: 'the file is corrupt',
    });
  if (cols % blockSize(ggml) !== 0)
    throw new CheckpointError(`GGUF tensor "${t.name}" is ${ggml} with rows of ${cols}, not whole blocks`, {
      file: g.file,
      hint: 'the file is corrupt',
    });
  const bytes = rowsOf(t.shape) * rowBytes(ggml, cols);
  if (t.offset + bytes > g.fileSize) {
    throw new CheckpointError(
      `not a valid GGUF file: tensor "${t.name}" ends at byte ${t.offset + bytes}, past the end of the file (${g.fileSize} bytes)`,
      { file: g.file, hint: 'the file is truncated; write or download it again' },
    );
  }
  return { ...t, ggml, params: rowsOf(t.shape) * cols, bytes };
}

/** Opens a .gguf file as a model: header only; tensor data is read later through `reader`. */
export function openGgufModel(file: string): GgufModelSource {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs)) throw new CheckpointError('the GGUF file does not exist', { file, hint: 'check the path' });
  const gguf = readGguf(abs);
  const config = configFromGguf(gguf);
  const arch = architectureFor(config, abs);
  const tensors = gguf.tensors.map((t) => decodeInfo(gguf, t));
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const schema = arch.schema();
  const model = ggufModel(arch, new Map(schema.map((s) => [s.name, s.shape])));
  const parts = new Map<string, Part>();
  const used = new Set<string>();
  for (const src of model.tensors) {
    const t = byName.get(src.name);
    if (!t) {
      if (src.name === 'output.weight' && arch.tieEmbeddings) continue; // no output: llama.cpp uses token_embd
      throw new CheckpointError(
        `GGUF tensor "${src.name}" is missing, which the ${gguf.metadata.get('general.architecture')} metadata implies`,
        { file: abs, hint: 'the file is incomplete or its metadata does not match its tensors' },
      );
    }
    if (t.shape.length !== src.shape.length || t.shape.some((d, i) => d !== src.shape[i])) {
      throw new CheckpointError(
        `GGUF tensor "${src.name}" has shape [${t.shape}], the metadata implies [${src.shape}]`,
        { file: abs, hint: 'the metadata does not match the tensors' },
      );
    }
    used.add(src.name);
    src.from.forEach((hf, index) => {
      if (src.splitKvB?.part === 'v') {
        parts.get(hf)!.vb = t;
        return;
      }
      const part = { tensor: t, index, of: src.from.length, src };
      const first = parts.get(hf);
      if (first?.src.transform && src.transform) (first.more ??= []).push(part);
      else parts.set(hf, part);
    });
  }
  const extra = tensors.find((t) => !used.has(t.name));
  if (extra)
    throw new CheckpointError(`GGUF tensor "${extra.name}" is outside the layout moe reads for this architecture`, {
      file: abs,
      hint: 'moe reads the GGUF files it writes; this one holds tensors it would have to ignore',
    });
  const refs = new Map<string, TensorRef>();
  for (const s of schema) {
    const p = parts.get(s.name);
    if (!p)
      throw new CheckpointError(`no GGUF tensor holds "${s.name}"`, { file: abs, hint: 'the file is incomplete' });
    const size = p.tensor.bytes / p.of;
    refs.set(s.name, {
      name: s.name,
      dtype: 'F32',
      shape: s.shape,
      file: abs,
      begin: p.tensor.offset + p.index * size,
      end: p.tensor.offset + (p.index + 1) * size,
    });
  }
  const ckpt: Checkpoint = {
    dir: abs,
    config,
    tensors: refs,
    shards: [abs],
    metadata: {},
    indexed: false,
    bytesRead: { value: 0 },
  };
  return { file: abs, gguf, ckpt, arch, reader: new GgufTensorReader(ckpt, parts), tensors };
}

/** TensorReader over a GGUF file: every tensor dequantized to float32 and put back in its Hugging Face layout. */
export class GgufTensorReader extends TensorReader {
  private fdNum?: number;

  constructor(
    private readonly source: Checkpoint,
    private readonly parts: Map<string, Part>,
  ) {
    super(source);
  }

  private read(t: GgufTensor, position: number, rows: number): Float32Array {
    const cols = t.shape[t.shape.length - 1];
    this.fdNum ??= fs.openSync(this.source.dir, 'r');
    const bytes = readRange(this.fdNum, this.source.dir, position, rows * rowBytes(t.ggml, cols));
    this.source.bytesRead.value += bytes.byteLength;
    return dequantizeRows(bytes, rows, cols, t.ggml);
  }

  /** The rows of one part: a whole tensor, or one expert's slice of a stacked one. */
  private partRows(t: GgufTensor, index: number, of: number): Float32Array {
    const rows = rowsOf(t.shape) / of;
    return this.read(t, t.offset + index * rows * rowBytes(t.ggml, t.shape[t.shape.length - 1]), rows);
  }

  override f32(name: string): Float32Array {
    const ref = this.ref(name);
    const p = this.parts.get(name)!;
    if (p.src.transform) {
      const out = new Float32Array(ref.shape.reduce((a, b) => a * b, 1));
      for (const q of [p, ...(p.more ?? [])])
        fromGguf(this.partRows(q.tensor, q.index, q.of), out, ref.shape, q.src.transform!);
      return out;
    }
    const w = this.partRows(p.tensor, p.index, p.of);
    const kv = p.src.splitKvB;
    if (kv) {
      // k_b [heads, kv_lora, nope] and v_b [heads, v, kv_lora] → kv_b_proj [heads·(nope + v), kv_lora].
      const v = this.partRows(p.vb!, 0, 1);
      const { heads, nope, v: vd } = kv;
      const kvl = ref.shape[1];
      const out = new Float32Array(heads * (nope + vd) * kvl);
      for (let h = 0; h < heads; h++) {
        const base = h * (nope + vd);
        for (let c = 0; c < kvl; c++)
          for (let n = 0; n < nope; n++) out[(base + n) * kvl + c] = w[(h * kvl + c) * nope + n];
        out.set(v.subarray(h * vd * kvl, (h + 1) * vd * kvl), (base + nope) * kvl);
      }
      return out;
    }
    if (p.src.permuteHeads) return unpermuteRows(w, ref.shape[0], ref.shape[1], p.src.permuteHeads);
    return w;
  }

  override rowsF32(name: string, start: number, count: number): Float32Array {
    const ref = this.ref(name);
    const p = this.parts.get(name)!;
    if (start < 0 || start + count > ref.shape[0])
      throw new RangeError(`rowsF32: rows ${start}..${start + count} outside ${name} [${ref.shape}]`);
    if (p.of > 1 || p.src.splitKvB || p.src.permuteHeads || p.src.transform || ref.shape.length !== 2) {
      const cols = ref.shape.length === 1 ? 1 : ref.shape[ref.shape.length - 1];
      return this.f32(name).slice(start * cols, (start + count) * cols);
    }
    return this.read(p.tensor, p.tensor.offset + start * rowBytes(p.tensor.ggml, ref.shape[1]), count);
  }

  override f32Into(name: string, into: Float32Array): Float32Array {
    return copyInto(this.f32(name), into);
  }

  override rowsF32Into(name: string, start: number, count: number, into: Float32Array): Float32Array {
    return copyInto(this.rowsF32(name, start, count), into);
  }

  override bytes(name: string): Uint8Array {
    return fromFloat32(this.f32(name), 'F32');
  }

  override bytesInto(name: string): Uint8Array {
    throw new CheckpointError(`"${name}" is in a GGUF file, which moe reads for inspect and eval only`, {
      file: this.source.dir,
      hint: 'compress the original Hugging Face checkpoint instead',
    });
  }

  override *chunks(name: string): Generator<Uint8Array> {
    yield this.bytes(name);
  }

  override close(): void {
    if (this.fdNum !== undefined) fs.closeSync(this.fdNum);
    this.fdNum = undefined;
    super.close();
  }
}
