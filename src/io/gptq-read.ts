/**
 * Reading GPTQ checkpoints (GPTQModel, AutoGPTQ, moe's `--format gptq`; config.json `quantization_config.quant_method:
 * "gptq"`) in the layout src/io/gptq.ts describes: P.qweight I32 [in·b/32, out], P.qzeros I32 [groups, out·b/32],
 * P.scales [groups, out], P.g_idx I32 [in] (absent: column / group_size). checkpoint_format "gptq" (v1) stores each
 * zero point minus one, "gptq_v2" as it is. Read settings: bits 2, 3, 4, 8; group_size (−1: one group per row);
 * desc_act (g_idx says each column's group); sym (the zero points are stored either way); `dynamic` per-module
 * overrides as vLLM's get_dynamic_override and GPTQModel resolve them: the first key whose regex (after "-:" or
 * "+:") re.matches the module name wins, "-:" meaning the module is not quantized, "+:" (or no prefix) overriding
 * bits / group_size. Refused, one line each: other checkpoint formats (marlin, bitblas, gptq_p, ...), other pack
 * dtypes, other bit widths, a module stored quantized that `dynamic` excludes, parts of the wrong shape.
 * The logical weight has the config's dtype (torch_dtype / dtype, f16 when absent): its values are rounded to it.
 */
import { CheckpointError, shown } from '../errors';
import { DType, TORCH_NAMES } from './dtype';
import type { IntQuantParts, TensorRef } from './safetensors';
import { GPTQ_METHOD, pyMatch, withFolded } from './intquant';

const BITS = [2, 3, 4, 8];
const FORMATS = ['gptq', 'gptq_v2'];
const HINT =
  'moe reads GPTQ v1/v2 checkpoints (checkpoint_format "gptq" or "gptq_v2", int32 packing, 2/3/4/8 bits); convert it with GPTQModel to that format or use the unquantized original';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

export interface GptqConfig {
  bits: number;
  groupSize: number;
  desc: boolean;
  sym: boolean;
  v2: boolean;
  dynamic: [string, Obj][];
  dtype: DType;
  file: string;
}

function refuse(file: string, key: string, what: string): CheckpointError {
  return new CheckpointError(`config.json quantization_config.${key} ${what}`, { file, hint: HINT });
}

const checkBits = (b: unknown, file: string, key: string) => {
  if (!BITS.includes(b as number)) throw refuse(file, key, `is ${shown(b)}, which GPTQ v1 does not pack (2, 3, 4, 8)`);
  return b as number;
};
const checkGroup = (g: unknown, file: string, key: string) => {
  if (!Number.isInteger(g) || (g !== -1 && (g as number) < 1))
    throw refuse(file, key, `is ${shown(g)}, not a positive integer or -1`);
  return g as number;
};

/** The GPTQ settings of a config (undefined for any other config); refuses what moe does not read. */
export function parseGptqConfig(config: Obj, file: string): GptqConfig | undefined {
  const q = config.quantization_config;
  if (!isObj(q) || q.quant_method !== GPTQ_METHOD) return undefined;
  const format = q.checkpoint_format ?? q.format ?? 'gptq';
  if (!FORMATS.includes(format as string))
    throw refuse(
      file,
      q.checkpoint_format !== undefined ? 'checkpoint_format' : 'format',
      `is ${shown(format)}, which moe does not decode`,
    );
  const pack = q.pack_dtype ?? 'int32';
  if (pack !== 'int32' && pack !== 'torch.int32')
    throw refuse(file, 'pack_dtype', `is ${shown(pack)}, which moe does not decode (int32)`);
  const dyn = q.dynamic ?? {};
  if (!isObj(dyn)) throw refuse(file, 'dynamic', `is ${shown(dyn)}, not an object of regex → overrides`);
  const dynamic = Object.entries(dyn).map(([k, v]): [string, Obj] => [k, isObj(v) ? v : {}]);
  for (const [k, v] of dynamic) {
    if (v.bits !== undefined) checkBits(v.bits, file, `dynamic[${JSON.stringify(k)}].bits`);
    if (v.group_size !== undefined) checkGroup(v.group_size, file, `dynamic[${JSON.stringify(k)}].group_size`);
  }
  const name = config.torch_dtype ?? config.dtype;
  const dtype = (Object.entries(TORCH_NAMES) as [DType, string][]).find(([, n]) => n === name)?.[0] ?? 'F16';
  return {
    bits: checkBits(q.bits, file, 'bits'),
    groupSize: checkGroup(q.group_size ?? 128, file, 'group_size'),
    desc: q.desc_act === true,
    sym: q.sym !== false,
    v2: format === 'gptq_v2',
    dynamic,
    dtype,
    file,
  };
}

/** vLLM's get_dynamic_override: false when a "-:" key matches first, else the overrides of the first match. */
export function gptqOverrides(c: GptqConfig, module: string): Obj | false {
  for (const [key, v] of c.dynamic) {
    const neg = key.startsWith('-:');
    const pattern = neg || key.startsWith('+:') ? key.slice(2) : key;
    if (pyMatch(pattern, module, c.file, `quantization_config.dynamic key ${JSON.stringify(key)}`))
      return neg ? false : v;
  }
  return {};
}

/** One module's four parts checked and folded into a logical weight. */
function foldModule(m: string, c: GptqConfig, tensors: Map<string, TensorRef>, used: Set<string>): TensorRef {
  const qweight = tensors.get(`${m}.qweight`)!;
  const o = gptqOverrides(c, m);
  if (o === false)
    throw new CheckpointError(
      `tensor "${qweight.name}" is stored quantized, but quantization_config.dynamic excludes ${m} ("-:")`,
      { file: qweight.file, hint: 'the config does not match the weights; re-export the checkpoint' },
    );
  const bits = (o.bits as number | undefined) ?? c.bits;
  const gs = (o.group_size as number | undefined) ?? c.groupSize;
  const [qzeros, scales, gIdx] = ['qzeros', 'scales', 'g_idx'].map((p) => tensors.get(`${m}.${p}`));
  const bad = (t: TensorRef, why: string) =>
    new CheckpointError(`tensor "${t.name}" is ${t.dtype} [${t.shape}], ${why}`, {
      file: t.file,
      hint: 'the checkpoint does not match its quantization_config; re-download or re-export it',
    });
  if (qweight.dtype !== 'I32' || qweight.shape.length !== 2)
    throw bad(qweight, `not ${bits}-bit GPTQ codes (I32 [in·${bits}/32, out])`);
  const rows = qweight.shape[1];
  const cols = gIdx ? gIdx.shape[0] : (qweight.shape[0] * 32) / bits;
  if ((cols * bits) / 32 !== qweight.shape[0])
    throw bad(qweight, `not ${bits}-bit codes of ${cols} inputs (bits ${bits} from quantization_config)`);
  const g = gs === -1 ? cols : gs;
  const groups = Math.ceil(cols / g);
  const ok = (t: TensorRef | undefined, dtypes: string[], shape: number[]) =>
    !!t && dtypes.includes(t.dtype) && t.shape.join() === shape.join();
  if (!ok(scales, ['F16', 'BF16', 'F32'], [groups, rows]))
    throw bad(scales ?? qweight, `expected its scales [${groups}, ${rows}] (group_size ${gs})`);
  if (!ok(qzeros, ['I32'], [groups, (rows * bits) / 32]))
    throw bad(qzeros ?? qweight, `expected its qzeros I32 [${groups}, ${(rows * bits) / 32}]`);
  if (gIdx && !ok(gIdx, ['I32', 'I64'], [cols])) throw bad(gIdx, `expected g_idx I32 [${cols}]`);
  for (const t of [qweight, qzeros, scales, gIdx]) if (t) used.add(t.name);
  const intq: IntQuantParts = {
    format: 'gptq',
    bits,
    groupSize: g,
    symmetric: c.sym,
    codes: qweight,
    scale: scales!,
    zero: qzeros,
    gIdx,
    zeroMinusOne: !c.v2,
    scheme: `gptq${c.v2 ? '_v2' : ''} ${bits}-bit ${gs === -1 ? 'channel' : `group ${gs}`}${c.desc ? ' desc_act' : ''}`,
  };
  return { ...qweight, name: `${m}.weight`, dtype: c.dtype, shape: [rows, cols], intq };
}

/** Folds every GPTQ module's parts into one logical tensor named P.weight; other tensors pass through. */
export function foldGptq(tensors: Map<string, TensorRef>, c: GptqConfig | undefined): Map<string, TensorRef> {
  if (!c) return tensors;
  const folded = new Map<string, TensorRef>();
  const used = new Set<string>();
  for (const name of tensors.keys())
    if (name.endsWith('.qweight')) folded.set(name, foldModule(name.slice(0, -'.qweight'.length), c, tensors, used));
  return withFolded(tensors, folded, used);
}
