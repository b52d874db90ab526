/**
 * A Hugging Face checkpoint folder opened by its config and safetensors headers only.
 * Tensor data is read later, one tensor at a time, through `TensorReader`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { DType, dtypeBytes, fromFloat32, isFloatDType, toFloat32 } from './dtype';
import { arenaOf, WasmArena } from './wasm-arena';
import { PackedParts, readExact, readHeader, SafetensorsHeader, SliceView, TensorRef } from './safetensors';
import { readIndex, INDEX_FILE } from './index-file';
import { dequantizePacked, logicalTensors, METADATA_PREFIX, withoutPackedKeys } from './packed';
import { resolveModel, snapshotBlobs } from './hf-cache';
import { checkConfigNotQuantized, checkTensorsNotQuantized } from './quantized';
import { decodeMxfp4, decodeMxfp4Transposed, foldMxfp4, MXFP4_BLOCK, MXFP4_BLOCK_BYTES } from './mxfp4';
import { dequantizeFp8, foldFp8, parseFp8Config } from './fp8';
import { foldCt, parseCtConfig } from './ct-read';
import { foldGptq, parseGptqConfig } from './gptq-read';
import { decodeIntQuant } from './intquant';

const PICKLE_EXTENSIONS = ['.bin', '.pt', '.pth', '.ckpt', '.pkl'];
const SINGLE_FILE = 'model.safetensors';
const SHARD_NAME = /^model-\d+-of-\d+\.safetensors$/;

export type Config = Record<string, unknown>;

export interface Checkpoint {
  dir: string;
  config: Config;
  /** Tensor refs by name, in the order of the shards and their data. */
  tensors: Map<string, TensorRef>;
  /** Shard files, absolute, in order. */
  shards: string[];
  /** `__metadata__` of the first shard (without the packed weights' entries, which describe tensors). */
  metadata: Record<string, string>;
  /** Whether the tensors came with a model.safetensors.index.json. */
  indexed: boolean;
  /**
   * Stored tensors that `tensors` shows as per-expert views (fused experts, src/model/fused.ts), by stored name.
   */
  stored?: Map<string, TensorRef>;
  /** Bytes of files read so far (headers, config, tensors): lets tests prove that planning reads no data. */
  bytesRead: { value: number };
  /** Set when the language model is nested beside other towers (see `unnest`). */
  nesting?: Nesting;
}

/**
 * A multimodal checkpoint keeps its language model's config under `text_config` and its tensors under a prefix:
 * Qwen3.5-MoE `model.language_model.` (lm_head.weight at the top, the vision tower under `model.visual.`), Llama 4
 * `language_model.model.` (and `language_model.lm_head.weight`; the tower under `vision_model.` and
 * `multi_modal_projector.`). moe shows it as a plain text model: `config` is the text config, the language model's
 * tensors are named `model.…` and `lm_head.weight`; every other tensor keeps its name, is outside any schema and is
 * copied as it is. Outputs store the names and the config back (`storedName`, `nestedConfig`), with only the text
 * config rewritten.
 */
export interface Nesting {
  /** config.json as stored. */
  outer: Config;
  /** The stored prefix of the language model's tensors, shown as `model.`. */
  prefix: string;
  /** The stored name of lm_head.weight when it is not at the top (Llama 4: `language_model.lm_head.weight`). */
  head?: string;
  /** The modules stored under `model.` beside the language model (`visual`): their names are kept. */
  beside: Set<string>;
}

/** The nested layouts: the language model's stored prefix, and where its lm_head is stored. */
const LAYOUTS: readonly { prefix: string; head?: string }[] = [
  { prefix: 'model.language_model.' },
  { prefix: 'language_model.model.', head: 'language_model.lm_head.weight' },
];

/** `visual` of `model.visual.blocks.0…`. */
function module(name: string): string {
  return name.split('.')[1] ?? '';
}

function unnest(config: Config, tensors: Map<string, TensorRef>, file: string) {
  const text = config.text_config;
  if (typeof text !== 'object' || text === null || Array.isArray(text)) return { config, tensors };
  const layout = LAYOUTS.find((l) => [...tensors.keys()].some((n) => n.startsWith(l.prefix)));
  if (!layout) return { config, tensors };
  const { prefix, head } = layout;
  const flat: Config = { ...(text as Config) };
  if (config.quantization_config !== undefined) flat.quantization_config = config.quantization_config;
  const shown = new Map<string, TensorRef>();
  for (const [name, t] of tensors) {
    const as = name.startsWith(prefix) ? `model.${name.slice(prefix.length)}` : name === head ? 'lm_head.weight' : name;
    if (shown.has(as))
      throw new CheckpointError(`tensor "${name}" is stored both inside and outside ${prefix}`, {
        file,
        hint: 'the checkpoint mixes two layouts; re-save it with transformers',
      });
    shown.set(as, as === name ? t : { ...t, name: as });
  }
  const beside = new Set(
    [...tensors.keys()].filter((n) => n.startsWith('model.') && !n.startsWith(prefix)).map(module),
  );
  return { config: flat, tensors: shown, nesting: { outer: config, prefix, head, beside } };
}

/** Where the nesting of an output comes from: the source checkpoint, or a part record of `moe quantize --layers`. */
export interface Nested {
  nesting?: Nesting;
}

/** The stored name of a tensor of `ckpt` (undefined for a plain checkpoint: names are stored as shown). */
export function storedName(ckpt: Nested): ((name: string) => string) | undefined {
  const n = ckpt.nesting;
  if (!n) return undefined;
  return (name) => {
    if (name === 'lm_head.weight' && n.head) return n.head;
    return name.startsWith('model.') && !n.beside.has(module(name)) ? n.prefix + name.slice(6) : name;
  };
}

/** Per-tensor `__metadata__` entries (a packed weight's `moe.quant.<name>`) under the stored names. */
export function storedTensorMetadata(
  ckpt: Nested,
  metadata: Map<string, Record<string, string>>,
): Map<string, Record<string, string>> {
  const stored = storedName(ckpt);
  if (!stored) return metadata;
  const key = (k: string) =>
    k.startsWith(METADATA_PREFIX) ? METADATA_PREFIX + stored(k.slice(METADATA_PREFIX.length)) : k;
  return new Map(
    [...metadata].map(([name, e]) => [name, Object.fromEntries(Object.entries(e).map(([k, v]) => [key(k), v]))]),
  );
}

/** The config.json to write for `config` (a rewritten text config): nested back under text_config. */
export function nestedConfig(ckpt: Nested, config: Config): Config {
  const n = ckpt.nesting;
  if (!n) return config;
  const { quantization_config: q, ...text } = config;
  const outer: Config = { ...n.outer, text_config: text };
  delete outer.quantization_config;
  if (q !== undefined) outer.quantization_config = q;
  return outer;
}

export function readConfig(dir: string): Config {
  const file = besideWeights(dir, 'config.json');
  if (!file) {
    throw new CheckpointError('no config.json in the model folder', {
      file: dir,
      hint: 'point moe at a Hugging Face model folder (config.json plus *.safetensors)',
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CheckpointError(`config.json is not valid JSON (${(e as Error).message})`, {
      file,
      hint: 'fix or re-save the config',
    });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new CheckpointError('config.json is not a JSON object', { file });
  return json as Config;
}

const inside = (folder: string, p: string) => {
  const rel = path.relative(folder, p);
  return !rel.startsWith('..') && !path.isAbsolute(rel);
};

/**
 * Resolves a shard name from an index, refusing names that leave the model folder (also through symlinks). In a
 * Hugging Face cache snapshot (models--ORG--NAME/snapshots/REV) the files are links into the repository's blobs/
 * folder: those are accepted, and every other link out of the folder is still refused.
 */
export function resolveInside(dir: string, name: string, what: string, file: string): string {
  if (typeof name !== 'string' || name === '' || path.isAbsolute(name) || name.split(/[\\/]/).includes('..')) {
    throw new CheckpointError(`${what} ${JSON.stringify(name)} points outside the model folder`, {
      file,
      hint: 'shard names in the index must be plain file names inside the model folder',
    });
  }
  const full = path.resolve(dir, name);
  let real: string;
  try {
    real = fs.realpathSync(full);
  } catch {
    throw new CheckpointError(`${what} ${JSON.stringify(name)} does not exist`, {
      file,
      hint: 'the checkpoint is incomplete; re-download the missing shard',
    });
  }
  const realDir = fs.realpathSync(dir);
  if (!inside(realDir, real)) {
    const blobs = snapshotBlobs(realDir);
    if (blobs && inside(blobs, real)) return full;
    const where = blobs ? "the model folder and its repository's blobs/ folder" : 'the model folder';
    throw new CheckpointError(`${what} ${JSON.stringify(name)} resolves outside ${where} (to ${real})`, {
      file,
      hint: `copy the ${what} into the model folder instead of linking it`,
    });
  }
  return full;
}

/**
 * A file beside the weights (config, tokenizer, generation settings), or undefined when there is none. Like a
 * shard, it is refused when a symlink takes it outside the model folder: moe reads and copies only the folder.
 */
export function besideWeights(dir: string, name: string): string | undefined {
  const file = path.join(dir, name);
  return fs.existsSync(file) ? resolveInside(dir, name, 'file', file) : undefined;
}

function listShards(dir: string): { shards: string[]; weightMap?: Map<string, string> } {
  const indexFile = besideWeights(dir, INDEX_FILE);
  if (indexFile) {
    const { weightMap, shards } = readIndex(indexFile);
    return { shards: shards.map((s) => resolveInside(dir, s, 'shard', indexFile)), weightMap };
  }
  const names = fs.readdirSync(dir);
  // Like transformers: without an index the weights are model.safetensors (or shards named as transformers names them).
  const shards = names.includes(SINGLE_FILE) ? [SINGLE_FILE] : names.filter((n) => SHARD_NAME.test(n)).sort();
  if (shards.length === 0) {
    const pickles = names.filter((n) => PICKLE_EXTENSIONS.includes(path.extname(n)));
    if (pickles.length > 0) {
      throw new CheckpointError(
        `only pickle weights found (${pickles.slice(0, 3).join(', ')}); moe reads safetensors only and never loads pickle`,
        {
          file: dir,
          hint: 'convert with transformers: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)',
        },
      );
    }
    const other = names.filter((n) => n.endsWith('.safetensors'));
    if (other.length > 0) {
      throw new CheckpointError(`no model.safetensors or ${INDEX_FILE} (found ${other.slice(0, 3).join(', ')})`, {
        file: dir,
        hint: 'name the weights model.safetensors, or add the index that lists the shards',
      });
    }
    throw new CheckpointError('no *.safetensors files in the model folder', {
      file: dir,
      hint: 'point moe at a folder holding the model weights as safetensors',
    });
  }
  return { shards: shards.map((s) => resolveInside(dir, s, 'shard', dir)) };
}

/**
 * Opens a checkpoint: config plus every shard's header. Reads no tensor data. `dir` is a folder, or a repository id
 * (ORG/NAME[@REVISION]) found in the local Hugging Face cache when no folder of that path exists (src/io/hf-cache.ts).
 * A checkpoint stored quantized in a format moe does not decode is refused here, for every command.
 */
export function openCheckpoint(dir: string): Checkpoint {
  const abs = resolveModel(dir);
  if (!fs.statSync(abs).isDirectory())
    throw new CheckpointError('not a folder', {
      file: dir,
      hint: 'MODEL is the folder holding config.json and the *.safetensors files',
    });
  const config = readConfig(abs);
  checkConfigNotQuantized(config, path.join(abs, 'config.json'));
  const fp8 = parseFp8Config(config, path.join(abs, 'config.json'));
  const ct = parseCtConfig(config, path.join(abs, 'config.json'));
  const gptq = parseGptqConfig(config, path.join(abs, 'config.json'));
  const bytesRead = { value: 0 };
  const { shards, weightMap } = listShards(abs);
  const headers: SafetensorsHeader[] = shards.map((s) => readHeader(s, (n) => (bytesRead.value += n)));
  const tensors = new Map<string, TensorRef>();
  for (const h of headers) {
    for (const t of h.tensors) {
      const prev = tensors.get(t.name);
      if (prev)
        throw new CheckpointError(`tensor "${t.name}" is stored twice (also in ${path.basename(prev.file)})`, {
          file: h.file,
          hint: 'the shards are inconsistent; re-download the checkpoint',
        });
      tensors.set(t.name, t);
    }
  }
  if (weightMap) checkIndexAgainstShards(path.join(abs, INDEX_FILE), weightMap, tensors);
  const ints = foldGptq(foldCt(logicalTensors(headers, tensors), ct), gptq);
  const logical = foldMxfp4(config, foldFp8(ints, fp8), path.join(abs, 'config.json'));
  checkTensorsNotQuantized(logical);
  const text = unnest(config, logical, path.join(abs, 'config.json'));
  return {
    dir: abs,
    config: text.config,
    tensors: text.tensors,
    nesting: text.nesting,
    shards,
    metadata: withoutPackedKeys(headers[0]?.metadata ?? {}),
    indexed: !!weightMap,
    bytesRead,
  };
}

/** A single safetensors file (stats, golden references, dumps) opened like a checkpoint with no config. */
export function openTensorFile(file: string): Checkpoint {
  const bytesRead = { value: 0 };
  const h = readHeader(path.resolve(file), (n) => (bytesRead.value += n));
  return {
    dir: path.dirname(h.file),
    config: {},
    tensors: new Map(h.tensors.map((t) => [t.name, t])),
    shards: [h.file],
    metadata: h.metadata,
    indexed: false,
    bytesRead,
  };
}

function checkIndexAgainstShards(
  indexFile: string,
  weightMap: Map<string, string>,
  tensors: Map<string, TensorRef>,
): void {
  for (const [name, shard] of weightMap) {
    const t = tensors.get(name);
    if (!t)
      throw new CheckpointError(`the index lists tensor "${name}" in ${shard}, but no shard holds it`, {
        file: indexFile,
        hint: 'the checkpoint is incomplete or the index is stale; re-download it',
      });
    if (path.basename(t.file) !== path.basename(shard)) {
      throw new CheckpointError(`the index puts tensor "${name}" in ${shard}, but it is in ${path.basename(t.file)}`, {
        file: indexFile,
        hint: 'the index is stale; re-save the checkpoint',
      });
    }
  }
  for (const name of tensors.keys()) {
    if (!weightMap.has(name))
      throw new CheckpointError(`tensor "${name}" is in a shard but not in the index`, {
        file: indexFile,
        hint: 'the index is stale; re-save the checkpoint',
      });
  }
}

/** Reads of more bytes than this allocate their own buffer instead of growing the reader's scratch buffer. */
const SCRATCH_MAX_BYTES = 64 << 20;

/** src copied into `into` (the same length), returned. */
export function copyInto(src: Float32Array, into: Float32Array): Float32Array {
  if (src.length !== into.length) throw new RangeError(`${src.length} values into an array of ${into.length}`);
  into.set(src);
  return into;
}

/** Reads tensors one at a time with positioned reads; keeps shard files open until close(). */
export class TensorReader {
  private fds = new Map<string, number>();
  private lastIntq?: { name: string; values: Float32Array };
  private scratch?: Uint8Array;

  constructor(private readonly ckpt: Checkpoint) {}

  has(name: string): boolean {
    return this.ckpt.tensors.has(name);
  }

  ref(name: string): TensorRef {
    const t = this.ckpt.tensors.get(name);
    if (!t)
      throw new CheckpointError(`tensor "${name}" is missing`, {
        file: this.ckpt.dir,
        hint: 'the checkpoint is incomplete or of a different architecture',
      });
    return t;
  }

  /** The raw little-endian bytes of a tensor (a packed weight or a view: decoded, in its logical dtype). */
  bytes(name: string): Uint8Array {
    const t = this.ref(name);
    if (t.packed) return fromFloat32(this.dequantized(t.packed, 0, t.shape[0]), t.dtype);
    if (t.view) return fromFloat32(this.viewF32(t.view), t.dtype);
    if (t.mxfp4) return fromFloat32(this.rowsF32(name, 0, t.shape[0]), t.dtype);
    if (t.fp8) return fromFloat32(this.fp8Rows(t, 0, t.shape[0]), t.dtype);
    if (t.intq) return fromFloat32(this.intqF32(t), t.dtype);
    const out = readExact(this.fd(t.file), t.file, t.begin, t.end - t.begin);
    this.ckpt.bytesRead.value += out.byteLength;
    return out;
  }

  /** An unpacked tensor's stored bytes read into the start of `into` (e.g. a buffer shared with worker threads). */
  bytesInto(name: string, into: Uint8Array): Uint8Array {
    const t = this.ref(name);
    if (t.packed) throw new RangeError(`bytesInto: ${name} is packed`);
    if (t.view || t.mxfp4 || t.fp8 || t.intq) {
      const b = this.bytes(name);
      into.set(b);
      return into.subarray(0, b.byteLength);
    }
    const n = t.end - t.begin;
    const out = readExact(this.fd(t.file), t.file, t.begin, n, into.subarray(0, n));
    this.ckpt.bytesRead.value += n;
    return out;
  }

  /** A tensor's bytes in pieces of at most `maxBytes` (whole elements), so huge tensors stream in bounded memory. */
  *chunks(name: string, maxBytes: number): Generator<Uint8Array> {
    const t = this.ref(name);
    if (t.packed || t.view || t.fp8 || t.intq) {
      yield this.bytes(name);
      return;
    }
    if (t.mxfp4) {
      // One expert at a time, decoded to the logical dtype: bounded memory whatever the fused tensor's size.
      for (let e = 0; e < t.shape[0]; e++) yield fromFloat32(this.mxfp4Slice(t, e), t.dtype);
      return;
    }
    const size = dtypeBytes(t.dtype);
    const step = Math.max(size, maxBytes - (maxBytes % size));
    const fd = this.fd(t.file);
    for (let at = t.begin; at < t.end; at += step) {
      const piece = readExact(fd, t.file, at, Math.min(step, t.end - at));
      this.ckpt.bytesRead.value += piece.byteLength;
      yield piece;
    }
  }

  /** Rows [start, start+count) of a 2-D floating tensor as float32 ([count, cols]). */
  rowsF32(name: string, start: number, count: number): Float32Array {
    const t = this.ref(name);
    const cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    const rowBytes = cols * dtypeBytes(t.dtype);
    if (start < 0 || start + count > t.shape[0])
      throw new RangeError(`rowsF32: rows ${start}..${start + count} outside ${t.name} [${t.shape}]`);
    if (t.packed) return this.dequantized(t.packed, start, count);
    if (t.view) return this.viewF32(t.view).slice(start * cols, (start + count) * cols);
    if (t.mxfp4) {
      const out = new Float32Array(count * cols);
      for (let i = 0; i < count; i++) out.set(this.mxfp4Slice(t, start + i), i * cols);
      return out;
    }
    if (t.fp8) return this.fp8Rows(t, start, count);
    if (t.intq) return this.intqF32(t).slice(start * cols, (start + count) * cols);
    return this.plainF32(t, t.begin + start * rowBytes, count * rowBytes);
  }

  /** rowsF32 decoded into `into` (count × cols values): a reused buffer instead of fresh memory. */
  rowsF32Into(name: string, start: number, count: number, into: Float32Array): Float32Array {
    const t = this.ref(name);
    if (t.packed && start >= 0 && start + count <= t.shape[0]) return this.dequantized(t.packed, start, count, into);
    if (t.packed || t.view || t.mxfp4 || t.fp8 || t.intq) return copyInto(this.rowsF32(name, start, count), into);
    const rowBytes = (t.shape.slice(1).reduce((a, b) => a * b, 1) * dtypeBytes(t.dtype)) | 0;
    if (start < 0 || start + count > t.shape[0])
      throw new RangeError(`rowsF32Into: rows ${start}..${start + count} outside ${t.name} [${t.shape}]`);
    return this.plainF32(t, t.begin + start * rowBytes, count * rowBytes, into);
  }

  /**
   * Stored bytes [at, at + length) of an unpacked floating tensor as float32, into `into` when given. Float32 is read
   * straight into the result; other dtypes through one scratch buffer the reader keeps (fresh memory per read costs
   * page faults that outweigh the decoding).
   */
  private plainF32(t: TensorRef, at: number, length: number, into?: Float32Array): Float32Array {
    const fd = this.fd(t.file);
    const n = length / dtypeBytes(t.dtype);
    if (into && into.length !== n) throw new RangeError(`${t.name}: ${n} values into an array of ${into.length}`);
    let out: Float32Array;
    const arena = into && t.dtype === 'BF16' ? arenaOf(into) : undefined;
    const wasmScratch = arena?.scratch(length);
    if (t.dtype === 'F32') {
      out = into ?? new Float32Array(n);
      readExact(fd, t.file, at, length, new Uint8Array(out.buffer, out.byteOffset, length));
    } else if (wasmScratch) {
      // into lives in a WebAssembly arena: the bytes are read next to it and decoded by its SIMD loop
      out = arena!.bf16(readExact(fd, t.file, at, length, wasmScratch), into!);
    } else {
      out = toFloat32(readExact(fd, t.file, at, length, this.scratchOf(length)), t.dtype, into);
    }
    this.ckpt.bytesRead.value += length;
    return out;
  }

  /** The reader's scratch buffer for `length` bytes (grown on demand), or undefined above SCRATCH_MAX_BYTES. */
  private scratchOf(length: number): Uint8Array | undefined {
    if (length > SCRATCH_MAX_BYTES) return undefined;
    if (!this.scratch || this.scratch.byteLength < length) this.scratch = new Uint8Array(length);
    return this.scratch.subarray(0, length);
  }

  /**
   * Selected rows of a 2-D floating tensor (embedding lookups): [ids.length, cols], one read per distinct id.
   */
  gatherF32(name: string, ids: ArrayLike<number>): Float32Array {
    const t = this.ref(name);
    const cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
    const out = new Float32Array(ids.length * cols);
    const cache = new Map<number, Float32Array>();
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= t.shape[0])
        throw new CheckpointError(`token id ${id} is outside the vocabulary of ${t.shape[0]}`, {
          file: t.file,
          hint: 'the data was tokenized for another model',
        });
      let row = cache.get(id);
      if (!row) {
        row = this.rowsF32(name, id, 1);
        cache.set(id, row);
      }
      out.set(row, i * cols);
    }
    return out;
  }

  /** A floating tensor as float32. */
  f32(name: string): Float32Array {
    const t = this.ref(name);
    if (!isFloatDType(t.dtype))
      throw new CheckpointError(`tensor "${name}" is ${t.dtype}, expected a floating dtype`, { file: t.file });
    if (t.packed) return this.dequantized(t.packed, 0, t.shape[0]);
    if (t.view) return this.viewF32(t.view);
    if (t.mxfp4) return this.rowsF32(name, 0, t.shape[0]);
    if (t.fp8) return this.fp8Rows(t, 0, t.shape[0]);
    if (t.intq) return this.intqF32(t).slice();
    return this.plainF32(t, t.begin, t.end - t.begin);
  }

  /** f32 decoded into `into` (exactly the tensor's size). */
  f32Into(name: string, into: Float32Array): Float32Array {
    const t = this.ref(name);
    if (isFloatDType(t.dtype) && t.packed) return this.dequantized(t.packed, 0, t.shape[0], into);
    if (t.intq && t.shape.length === 2 && this.lastIntq?.name !== t.name) return this.intqF32(t, into);
    if (!isFloatDType(t.dtype) || t.packed || t.view || t.mxfp4 || t.fp8 || t.intq)
      return copyInto(this.f32(name), into);
    return this.plainF32(t, t.begin, t.end - t.begin, into);
  }

  /**
   * t[index] as float32: the slice along the first axis (one expert of a fused expert tensor), read by positioned
   * reads of that slice only (a fused tensor can exceed RAM).
   */
  sliceF32(name: string, index: number): Float32Array {
    return this.sliceOf(this.ref(name), index);
  }

  /** The stored bytes of part[index] (a slice along the first axis), e.g. one expert's MXFP4 blocks, bit-exact. */
  rawSlice(part: TensorRef, index: number): Uint8Array {
    if (part.packed || part.view || part.mxfp4 || part.fp8 || part.intq)
      throw new RangeError(`rawSlice: ${part.name} is not stored plainly`);
    if (!Number.isInteger(index) || index < 0 || index >= part.shape[0])
      throw new RangeError(`rawSlice: index ${index} outside ${part.name} [${part.shape}]`);
    const n = (part.end - part.begin) / part.shape[0];
    const out = readExact(this.fd(part.file), part.file, part.begin + index * n, n);
    this.ckpt.bytesRead.value += n;
    return out;
  }

  private sliceOf(t: TensorRef, index: number): Float32Array {
    if (t.shape.length < 2) throw new RangeError(`sliceF32: ${t.name} [${t.shape}] has no slices`);
    if (!Number.isInteger(index) || index < 0 || index >= t.shape[0])
      throw new RangeError(`sliceF32: index ${index} outside ${t.name} [${t.shape}]`);
    if (t.mxfp4) return this.mxfp4Slice(t, index);
    return toFloat32(this.rawSlice(t, index), t.dtype);
  }

  /** One expert of an MXFP4 tensor [E, in, out], decoded from its blocks [E, out, in/32, 16] and scales. */
  private mxfp4Slice(t: TensorRef, index: number): Float32Array {
    const { blocks, scales } = t.mxfp4!;
    const [, outDim, groups] = blocks.shape;
    const b = this.rawSlice(blocks, index);
    return decodeMxfp4Transposed(b, this.rawSlice(scales, index), outDim, groups);
  }

  /** A view's values: the slice, its selected columns, transposed when asked. */
  private viewF32(v: SliceView): Float32Array {
    const rest = v.source.shape.slice(1);
    const b = rest[rest.length - 1];
    const a = rest.length === 1 ? 1 : rest[0];
    if (v.rows) return this.sliceOf(v.source, v.index).slice(v.rows.start * b, (v.rows.start + v.rows.count) * b);
    const { start, step, count: n } = v.cols ?? { start: 0, step: 1, count: b };
    if (v.source.mxfp4 && v.transpose) return this.mxfp4Rows(v.source, v.index, start, step, n);
    // BF16 is widened while it is picked (its bits are a float32's high half): only the view's values are touched.
    const out = new Float32Array(a * n);
    const pick = { a, b, start, step, n, transpose: v.transpose };
    if (!v.source.mxfp4 && !v.source.fp8 && v.source.dtype === 'BF16') {
      const raw = this.rawSlice(v.source, v.index);
      pickBf16(new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2), new Uint32Array(out.buffer), pick);
    } else pickF32(this.sliceOf(v.source, v.index), out, pick);
    return out;
  }

  /**
   * Rows start, start+step, ... (count of them) of one expert of an MXFP4 tensor in its stored orientation [out, in]
   * (a transposed view of the [in, out] tensor: no transpose at all).
   */
  private mxfp4Rows(t: TensorRef, index: number, start: number, step: number, count: number): Float32Array {
    const { blocks, scales } = t.mxfp4!;
    const [, , groups] = blocks.shape;
    const b = this.rawSlice(blocks, index);
    const sc = this.rawSlice(scales, index);
    const rowBlocks = groups * MXFP4_BLOCK_BYTES;
    const out = new Float32Array(count * groups * MXFP4_BLOCK);
    for (let j = 0; j < count; j++) {
      const r = start + j * step;
      const row = decodeMxfp4(
        b.subarray(r * rowBlocks, (r + 1) * rowBlocks),
        sc.subarray(r * groups, (r + 1) * groups),
        1,
        groups,
      );
      out.set(row, j * row.length);
    }
    return out;
  }

  /** Rows [start, start+count) of a packed weight, dequantized to float32. */
  private dequantized(p: PackedParts, start: number, count: number, into?: Float32Array): Float32Array {
    const [, cols] = p.info.shape;
    // the three parts side by side in the reader's scratch buffer (fresh memory per read costs page faults)
    const parts = [p.qweight, p.scales, p.zeros].map((t) => {
      const rowBytes = t.end - t.begin === 0 ? 0 : (t.end - t.begin) / t.shape[0];
      return { t, at: t.begin + start * rowBytes, length: count * rowBytes };
    });
    const { bits, group_size: gs } = p.info;
    const simd = (bits === 4 && gs % 32 === 0) || (bits === 8 && gs % 16 === 0);
    const arena = into && simd && cols % gs === 0 ? arenaOf(into) : undefined;
    if (arena) {
      const q = this.groupsInArena(arena, bits as 4 | 8, parts, count * (cols / gs), into!, gs);
      if (q) return q;
    }
    const scratch = this.scratchOf(parts.reduce((n, x) => n + x.length, 0));
    let offset = 0;
    const [codes, scales, zeros] = parts.map(({ t, at, length }) => {
      const bytes = readExact(this.fd(t.file), t.file, at, length, scratch?.subarray(offset, offset + length));
      offset += length;
      this.ckpt.bytesRead.value += length;
      return bytes;
    });
    return dequantizePacked(codes, scales, zeros, count, cols, p.info.bits, p.info.group_size, into);
  }

  /**
   * Packed 4- or 8-bit rows decoded by the arena's SIMD loop into `into` (an arena buffer): the codes read next to
   * it, the groups' bf16 scales and zero points widened to float32 there; undefined when the arena has no room.
   */
  private groupsInArena(
    arena: WasmArena,
    bits: 4 | 8,
    parts: { t: TensorRef; at: number; length: number }[],
    groups: number,
    into: Float32Array,
    groupSize: number,
  ): Float32Array | undefined {
    const [codes, scales, zeros] = parts;
    const codeBytes = Math.ceil(codes.length / 16) * 16;
    const room = arena.scratch(codeBytes + 8 * groups);
    if (!room) return undefined;
    const read = ({ t, at, length }: (typeof parts)[number], buf?: Uint8Array) => {
      this.ckpt.bytesRead.value += length;
      return readExact(this.fd(t.file), t.file, at, length, buf);
    };
    const code = read(codes, room.subarray(0, codes.length));
    const s32 = new Float32Array(room.buffer, room.byteOffset + codeBytes, groups);
    const z32 = new Float32Array(room.buffer, room.byteOffset + codeBytes + 4 * groups, groups);
    const small = this.scratchOf(scales.length + zeros.length);
    toFloat32(read(scales, small?.subarray(0, scales.length)), 'BF16', s32);
    const z = read(zeros, small?.subarray(scales.length));
    for (let g = 0; g < groups; g++) z32[g] = z[g];
    return arena.groups(bits, code, s32, z32, into, groupSize);
  }

  /** The stored bytes of a tensor as it is in its shard (e.g. an FP8 weight's codes or scales), in pieces. */
  *storedChunks(t: TensorRef, maxBytes: number): Generator<Uint8Array> {
    const size = dtypeBytes(t.dtype);
    const step = Math.max(size, maxBytes - (maxBytes % size));
    for (let at = t.begin; at < t.end; at += step) {
      const piece = readExact(this.fd(t.file), t.file, at, Math.min(step, t.end - at));
      this.ckpt.bytesRead.value += piece.byteLength;
      yield piece;
    }
  }

  /**
   * A compressed-tensors or GPTQ weight dequantized whole (src/io/intquant.ts); the last one is kept, so reading
   * it row by row (embedding lookups) decodes it once. Callers get copies.
   */
  private intqF32(t: TensorRef, into?: Float32Array): Float32Array {
    const read = (p: TensorRef) => {
      const b = readExact(this.fd(p.file), p.file, p.begin, p.end - p.begin);
      this.ckpt.bytesRead.value += b.byteLength;
      return b;
    };
    // decoded into a caller's buffer: used once, not kept
    if (into) return decodeIntQuant(t.intq!, t.shape[0], t.shape[1], t.dtype, read, into);
    if (this.lastIntq?.name !== t.name)
      this.lastIntq = { name: t.name, values: decodeIntQuant(t.intq!, t.shape[0], t.shape[1], t.dtype, read) };
    return this.lastIntq.values;
  }

  /** Rows [start, start+count) of an FP8 weight, dequantized to float32 (rounded to its logical dtype). */
  private fp8Rows(t: TensorRef, start: number, count: number): Float32Array {
    const { weight, scale, block } = t.fp8!;
    const cols = t.shape[1];
    const sc = scale.shape[1];
    const br0 = Math.floor(start / block[0]);
    const br1 = count > 0 ? Math.floor((start + count - 1) / block[0]) + 1 : br0;
    const read = (p: TensorRef, at: number, n: number) => {
      const bytes = readExact(this.fd(p.file), p.file, p.begin + at, n);
      this.ckpt.bytesRead.value += n;
      return bytes;
    };
    const codes = read(weight, start * cols, count * cols);
    const sb = dtypeBytes(scale.dtype);
    const scales = toFloat32(read(scale, br0 * sc * sb, (br1 - br0) * sc * sb), scale.dtype);
    return dequantizeFp8(codes, scales, start, count, cols, block, t.dtype);
  }

  private fd(file: string): number {
    let fd = this.fds.get(file);
    if (fd === undefined) {
      fd = fs.openSync(file, 'r');
      this.fds.set(file, fd);
    }
    return fd;
  }

  dtype(name: string): DType {
    return this.ref(name).dtype;
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}

interface Pick {
  /** The slice [a, b]; `n` columns from `start` every `step`; transposed or not. */
  a: number;
  b: number;
  start: number;
  step: number;
  n: number;
  transpose: boolean;
}

/**
 * A view's values from float32 (one element type per function: the loops stay monomorphic). Transposed, each output
 * row is gathered from one column: sequential writes, strided reads (measured faster here than tiled copies).
 */
function pickF32(s: Float32Array, out: Float32Array, p: Pick): void {
  const { a, b, start, step, n } = p;
  if (!p.transpose) {
    for (let r = 0; r < a; r++) for (let j = 0; j < n; j++) out[r * n + j] = s[r * b + start + j * step];
    return;
  }
  for (let j = 0; j < n; j++) {
    const o = j * a;
    const c = start + j * step;
    for (let r = 0; r < a; r++) out[o + r] = s[r * b + c];
  }
}

/** A view's values from BF16 bits, widened to float32 bits (`out` is the float32 result's Uint32 view). */
function pickBf16(s: Uint16Array, out: Uint32Array, p: Pick): void {
  const { a, b, start, step, n } = p;
  if (!p.transpose) {
    for (let r = 0; r < a; r++) for (let j = 0; j < n; j++) out[r * n + j] = s[r * b + start + j * step] << 16;
    return;
  }
  for (let j = 0; j < n; j++) {
    const o = j * a;
    const c = start + j * step;
    for (let r = 0; r < a; r++) out[o + r] = s[r * b + c] << 16;
  }
}
