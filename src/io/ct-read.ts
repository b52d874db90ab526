/**
 * Reading compressed-tensors checkpoints (llm-compressor; config.json `quantization_config.quant_method:
 * "compressed-tensors"`), as the library release 0.18.0 defines them (the writer: src/quant/compressed-tensors.ts):
 *   P.weight_packed      I32 [out, ⌈in·b/32⌉]   `pack-quantized`: value i of a row at bits i·b.. of the row's
 *                                               little-endian word stream, stored as v + 2^(b−1)
 *   P.weight             I8 [out, in]           `int-quantized` / `naive-quantized` (8 bits, symmetric): v itself
 *   P.weight_scale       float [out, groups]    the model's dtype
 *   P.weight_zero_point  I32 [⌈out·b/32⌉, groups]  asymmetric pack-quantized: zp + 2^(b−1) packed along dim 0
 *   P.weight_g_idx       I32/I64 [in]           group act-order: the group of each input column
 *   P.weight_shape       I64 [2]                [out, in] (16 bytes read at open: the only tensor data read then)
 * and w = (v − zp) · scale in the scale's dtype (src/io/intquant.ts).
 *
 * Which scheme a module has is resolved as the library's apply_quantization_config does: every target of every
 * config group maps to its group (a later group taking a target over), a module matches a target by its name
 * (exactly, or `re:` + Python re.match) or by its class ("Linear": every packed module is a linear layer here), and
 * not `ignore`; of the matched targets the first in the order exact names, regexes (each sorted), class names wins.
 *
 * Read: int weights at 1–8 bits, group or channel strategy, symmetric or asymmetric (asymmetric only packed),
 * g_idx, several config groups (`mixed-precision`), dynamic input activations (W4A8, W8A8 int: the engine
 * quantizes activations on the fly; moe computes them in float32 — the weights are exact, the activations are not
 * what the engine's kernels see). Refused, one line each: float weights (FP8 `float-quantized`, NVFP4, MXFP4),
 * other formats (marlin-24, sparse, dense), tensor/block strategies, static activation scales, output activation
 * or KV-cache quantization, transforms, sparsity, a status other than "compressed", 3-D (fused) packed weights.
 */
import * as fs from 'node:fs';
import { CheckpointError, shown } from '../errors';
import { isFloatDType } from './dtype';
import type { IntQuantParts, TensorRef } from './safetensors';
import { readExact } from './safetensors';
import { CT_METHOD, pyMatch, withFolded } from './intquant';

const PACKED = 'pack-quantized';
const INT8 = ['int-quantized', 'naive-quantized'];
const HINT =
  'moe reads compressed-tensors int weights (pack-quantized, int-quantized) with group or channel scales; dequantize the checkpoint first (llm-compressor, or transformers CompressedTensorsConfig(run_compressed=False)), or use the unquantized original';

interface CtScheme {
  group: string;
  bits: number;
  /** undefined: per channel. */
  groupSize?: number;
  symmetric: boolean;
  format: string;
  /** Dynamic input activations the engine quantizes (W4A8, W8A8): "int8", "float8"; moe computes them in float. */
  activations?: string;
}

export interface CtConfig {
  /** Target → scheme, in the order of the config (apply_quantization_config's target_to_scheme). */
  targets: Map<string, CtScheme>;
  ignore: string[];
  file: string;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const empty = (v: unknown) => v === undefined || v === null || (isObj(v) && Object.keys(v).length === 0);

function refuse(file: string, key: string, what: string): CheckpointError {
  return new CheckpointError(`config.json quantization_config${key} ${what}`, { file, hint: HINT });
}

function parseScheme(name: string, g: Obj, format: string, file: string): CtScheme {
  const key = `.config_groups.${name}`;
  const w = g.weights;
  if (!isObj(w)) throw refuse(file, key, `quantizes no weights (weights ${shown(w)}), which moe does not decode`);
  const fmt = typeof g.format === 'string' ? g.format : format;
  if (w.type !== 'int')
    throw refuse(file, `${key}.weights.type`, `is ${shown(w.type)} (format ${shown(fmt)}), which moe does not decode`);
  if (fmt !== PACKED && !INT8.includes(fmt))
    throw refuse(file, `${key}.format`, `is ${shown(fmt)}, which moe does not decode`);
  const bits = w.num_bits;
  if (!Number.isInteger(bits) || (bits as number) < 1 || (bits as number) > 8 || (fmt !== PACKED && bits !== 8))
    throw refuse(file, `${key}.weights.num_bits`, `is ${shown(bits)}, which ${shown(fmt)} does not store`);
  const strategy = w.strategy ?? 'tensor';
  if (strategy !== 'group' && strategy !== 'channel')
    throw refuse(file, `${key}.weights.strategy`, `is ${shown(strategy)}, which moe does not decode (group, channel)`);
  const gs = w.group_size;
  if (strategy === 'group' && (!Number.isInteger(gs) || (gs as number) < 1))
    throw refuse(file, `${key}.weights.group_size`, `is ${shown(gs)}, not a positive integer`);
  const symmetric = w.symmetric !== false;
  if (!symmetric && fmt !== PACKED)
    throw refuse(file, `${key}.weights.symmetric`, `is false with format ${shown(fmt)}, which moe does not decode`);
  const act = g.input_activations;
  if (isObj(act) && act.dynamic !== true && act.dynamic !== 'local')
    throw refuse(
      file,
      `${key}.input_activations.dynamic`,
      `is ${shown(act.dynamic)}: static input scales change the activations and moe does not apply them`,
    );
  if (!empty(g.output_activations))
    throw refuse(file, `${key}.output_activations`, 'quantizes outputs, which moe does not apply');
  return {
    group: name,
    bits: bits as number,
    groupSize: strategy === 'group' ? (gs as number) : undefined,
    symmetric,
    format: fmt,
    activations: isObj(act) ? `${act.type === 'float' ? 'float' : 'int'}${act.num_bits ?? ''}` : undefined,
  };
}

/** The compressed-tensors settings of a config (undefined for any other config); refuses what moe does not read. */
export function parseCtConfig(config: Obj, file: string): CtConfig | undefined {
  const q = config.quantization_config;
  if (!isObj(q) || q.quant_method !== CT_METHOD) return undefined;
  const status = q.quantization_status ?? 'compressed';
  if (status !== 'compressed')
    throw refuse(file, '.quantization_status', `is ${shown(status)}, not "compressed" (weights not packed)`);
  for (const k of ['sparsity_config', 'transform_config', 'kv_cache_scheme'])
    if (!empty(q[k])) throw refuse(file, `.${k}`, `is set (${shown(q[k], 60)}), which moe does not apply`);
  const format = typeof q.format === 'string' ? q.format : PACKED;
  const groups = q.config_groups;
  if (!isObj(groups) || Object.keys(groups).length === 0)
    throw refuse(file, '.config_groups', `is ${shown(groups)}, expected one or more scheme groups`);
  const targets = new Map<string, CtScheme>();
  for (const [name, g] of Object.entries(groups)) {
    if (!isObj(g) || !Array.isArray(g.targets) || !g.targets.every((t) => typeof t === 'string'))
      throw refuse(file, `.config_groups.${name}.targets`, `is ${shown(isObj(g) ? g.targets : g)}, not a list`);
    const s = parseScheme(name, g, format, file);
    for (const t of g.targets as string[]) targets.set(t, s);
  }
  const ignore = Array.isArray(q.ignore) ? q.ignore.filter((t): t is string => typeof t === 'string') : [];
  return { targets, ignore, file };
}

/** A class-name target: a linear layer's class (every packed weight here belongs to one). */
const isLinearClass = (target: string) => /^\w*Linear$/.test(target);

/** match_name: `re:` + re.match, or the exact name. */
function nameMatches(c: CtConfig, module: string, target: string, key: string): boolean {
  return target.startsWith('re:') ? pyMatch(target.slice(3), module, c.file, key) : target === module;
}

/** The scheme the library gives `module` (a linear layer), or why none applies. */
export function ctSchemeOf(c: CtConfig, module: string): CtScheme | 'ignored' | undefined {
  const all = [...c.targets.keys()];
  const hit = (t: string, key: string) => nameMatches(c, module, t, key) || isLinearClass(t);
  if (!all.some((t) => hit(t, 'config_groups target'))) return undefined;
  if (c.ignore.some((t) => hit(t, 'ignore entry'))) return 'ignored';
  const sorted = [...all].sort((a, b) => {
    const ra = a.includes('re:') ? 1 : 0;
    const rb = b.includes('re:') ? 1 : 0;
    return ra - rb || (a < b ? -1 : a > b ? 1 : 0);
  });
  const first =
    sorted.find((t) => nameMatches(c, module, t, 'config_groups target')) ?? sorted.find((t) => isLinearClass(t))!;
  return c.targets.get(first)!;
}

function readShape(t: TensorRef): number[] {
  const fd = fs.openSync(t.file, 'r');
  try {
    const b = readExact(fd, t.file, t.begin, t.end - t.begin).slice();
    return t.dtype === 'I64' ? Array.from(new BigInt64Array(b.buffer), Number) : Array.from(new Int32Array(b.buffer));
  } finally {
    fs.closeSync(fd);
  }
}

const shapeIs = (t: TensorRef | undefined, dtypes: string[], shape: number[]) =>
  !!t && dtypes.includes(t.dtype) && t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);

/** One module's parts checked against its scheme and folded into a logical weight. */
function foldModule(m: string, s: CtScheme, tensors: Map<string, TensorRef>, used: Set<string>): TensorRef {
  const packedFmt = s.format === PACKED;
  const codes = tensors.get(packedFmt ? `${m}.weight_packed` : `${m}.weight`)!;
  const part = (p: string) => tensors.get(`${m}.${p}`);
  const bad = (t: TensorRef, why: string) =>
    new CheckpointError(`tensor "${t.name}" is ${t.dtype} [${t.shape}], ${why}`, {
      file: t.file,
      hint: 'the checkpoint does not match its quantization_config; re-download or re-export it',
    });
  if (codes.shape.length !== 2)
    throw bad(codes, 'not a 2-D weight: moe decodes compressed-tensors weights of linear layers only');
  const shapeT = part('weight_shape');
  const [rows, cols] = packedFmt
    ? shapeT && ['I64', 'I32'].includes(shapeT.dtype) && shapeT.shape.join() === '2'
      ? readShape(shapeT)
      : [NaN, NaN]
    : codes.shape;
  if (packedFmt && !(rows === codes.shape[0] && codes.shape[1] === Math.ceil((cols * s.bits) / 32)))
    throw bad(codes, `not ${s.bits}-bit codes of ${shapeT ? `weight_shape [${rows}, ${cols}]` : 'a weight_shape'}`);
  if (!packedFmt && codes.dtype !== 'I8') throw bad(codes, `expected I8 codes (format ${s.format})`);
  const g = s.groupSize ?? cols;
  const ng = Math.ceil(cols / g);
  const scale = part('weight_scale');
  if (!scale || !isFloatDType(scale.dtype) || !shapeIs(scale, [scale.dtype], [rows, ng]))
    throw bad(scale ?? codes, `expected its weight_scale [${rows}, ${ng}] (group ${s.groupSize ?? 'channel'})`);
  if (ng > 1 && cols % g !== 0) throw bad(codes, `${cols} inputs are not whole groups of ${g}`);
  const zero = part('weight_zero_point');
  if (s.symmetric && zero) throw bad(zero, `a zero point of the symmetric scheme ${s.group}`);
  if (!s.symmetric && !shapeIs(zero, ['I32'], [Math.ceil((rows * s.bits) / 32), ng]))
    throw bad(zero ?? codes, `expected its packed weight_zero_point (asymmetric scheme ${s.group})`);
  const gIdx = part('weight_g_idx');
  if (gIdx && !shapeIs(gIdx, ['I32', 'I64'], [cols])) throw bad(gIdx, `expected I32 [${cols}]`);
  for (const t of [codes, scale, zero, gIdx, shapeT]) if (t) used.add(t.name);
  const intq: IntQuantParts = {
    format: 'compressed-tensors',
    bits: s.bits,
    groupSize: g,
    symmetric: s.symmetric,
    codes,
    scale,
    zero,
    gIdx,
    shape: shapeT,
    scheme: `compressed-tensors int${s.bits} ${s.groupSize ? `group ${s.groupSize}` : 'channel'} ${s.symmetric ? 'symmetric' : 'asymmetric'}${gIdx ? ' act-order' : ''}${s.activations ? `, ${s.activations} dynamic activations (not applied: moe computes them in float32)` : ''}`,
  };
  return { ...codes, name: `${m}.weight`, dtype: scale.dtype, shape: [rows, cols], intq };
}

/**
 * Folds every compressed-tensors weight's parts into one logical tensor named P.weight (see the header); other
 * tensors pass through. Without a compressed-tensors config the tensors are returned as they are.
 */
export function foldCt(tensors: Map<string, TensorRef>, c: CtConfig | undefined): Map<string, TensorRef> {
  if (!c) return tensors;
  const folded = new Map<string, TensorRef>();
  const used = new Set<string>();
  for (const [name, t] of tensors) {
    const packed = name.endsWith('.weight_packed');
    if (!packed && !(name.endsWith('.weight') && t.dtype === 'I8')) continue;
    const m = name.replace(/\.weight(_packed)?$/, '');
    const s = ctSchemeOf(c, m);
    if (s === undefined || s === 'ignored')
      throw new CheckpointError(
        `tensor "${name}" is stored quantized, but quantization_config ${s === 'ignored' ? 'lists its module in ignore' : 'has no config group whose targets match it'}`,
        { file: t.file, hint: 'the config does not match the weights; re-export the checkpoint' },
      );
    if ((s.format === PACKED) !== packed)
      throw new CheckpointError(`tensor "${name}" is ${t.dtype}, but its scheme ${s.group} has format ${s.format}`, {
        file: t.file,
        hint: 'the config does not match the weights; re-export the checkpoint',
      });
    folded.set(name, foldModule(m, s, tensors, used));
  }
  return withFolded(tensors, folded, used);
}
