/** `moe inspect MODEL`: what a checkpoint holds, from its config and headers only (no tensor data is read). */
import { isGgufPath, openGgufModel } from '../gguf/source';
import { openCheckpoint } from '../io/checkpoint';
import { modelName } from '../io/hf-cache';
import { numel } from '../io/safetensors';
import { loadArchitecture } from '../model/registry';
import type { Architecture, RoutingRule } from '../model/arch';
import { fileBytes, formatMB } from '../io/size';
import { formatBytes } from '../ui/progress';
import { quantSummary, QuantSummary, storedBytes } from '../io/packed';
import { MXFP4_STORAGE } from '../io/mxfp4';
import type { TensorRef } from '../io/safetensors';
import { fp8Bytes, fp8Storage } from '../io/fp8';
import { intQuantSummary, IntQuantSummary } from '../io/intquant';
import { CommandSpec, JSON_OUTPUT } from './spec';

export interface DTypeStats {
  tensors: number;
  params: number;
  bytes: number;
}

export interface LayerSummary {
  index: number;
  kind: 'moe' | 'dense';
  experts: number;
  params: number;
  bytes: number;
}

export interface InspectReport {
  model: string;
  model_type: string;
  num_layers: number;
  moe_layers: number[];
  experts_per_layer: number[];
  top_k: number;
  shared_experts: number;
  hidden_size: number;
  expert_width: number;
  vocab_size: number;
  routing: RoutingRule;
  params_total: number;
  params_active: number;
  params_experts: number;
  /** The model's size: bytes of its weight files (src/io/size.ts). */
  bytes: number;
  /** Bytes of tensor data (the files without their headers): the sum of `dtypes` and of `layers`. */
  bytes_tensors: number;
  bytes_experts: number;
  /** Everything in the files but the routed experts (headers included). */
  bytes_other: number;
  dtypes: Record<string, DTypeStats>;
  shards: number;
  /** Tensors outside the architecture's schema (e.g. DeepSeek's MTP layer); kept as they are by every command. */
  extra_tensors: number;
  layers: LayerSummary[];
  /** Bytes of the model folder's files read to produce this report. */
  bytes_read: number;
  /** Packed weights (moe quantize --format packed): bits per tensor and the average; absent when none. */
  quantization?: QuantSummary;
  /**
   * FP8 block-scaled weights (quant_method "fp8"): how many, their parameters, and the dtype every command reads
   * them as (dequantized on read); absent when none. `dtypes` names their storage, e.g. "F8_E4M3 + F32 block
   * scales 128×128".
   */
  fp8?: { tensors: number; params: number; bytes: number; storage: string[]; read_as: string };
  /** compressed-tensors or GPTQ weights (read dequantized): the format and the weights of each scheme. */
  int_quant?: IntQuantSummary;
  /**
   * A .gguf file: its architecture name, file size and mean bits per weight over every tensor (dtypes are ggml types).
   */
  gguf?: { architecture: string; file_bytes: number; bits_per_weight: number };
}

export interface InspectOptions {
  model: string;
}

/** One empty summary per decoder layer (params and bytes are added as the tensors are read). */
function layerSummaries(arch: Architecture): LayerSummary[] {
  return [...Array(arch.numLayers).keys()].map((index) => ({
    index,
    kind: arch.isMoeLayer(index) ? 'moe' : 'dense',
    experts: arch.isMoeLayer(index) ? arch.numExperts : 0,
    params: 0,
    bytes: 0,
  }));
}

/** What a tensor is stored as (the key of `dtypes`): its dtype, or the quantized format it is decoded from. */
export function storedAs(t: TensorRef): string {
  if (t.packed) return `packed ${t.packed.info.bits}-bit`;
  if (t.mxfp4) return MXFP4_STORAGE;
  if (t.fp8) return fp8Storage(t.fp8);
  if (t.intq) return t.intq.scheme;
  return t.dtype;
}

export function inspect(opts: InspectOptions): InspectReport {
  if (isGgufPath(opts.model)) return inspectGguf(opts.model);
  const ckpt = openCheckpoint(opts.model);
  const arch = loadArchitecture(ckpt);
  const layers = layerSummaries(arch);
  const dtypes: Record<string, DTypeStats> = {};
  let paramsTotal = 0;
  let paramsExperts = 0;
  let bytes = 0;
  let bytesExperts = 0;
  let extra = 0;
  let fp8: InspectReport['fp8'];
  const seen = new Set<string>();
  for (const view of ckpt.tensors.values()) {
    // A per-expert view of a fused tensor (src/model/fused.ts) counts as the stored tensor, once.
    const t = view.view?.source ?? view;
    if (view.view && seen.has(t.name)) continue;
    seen.add(t.name);
    const n = numel(t.shape);
    const b = t.fp8 ? fp8Bytes(t.fp8) : storedBytes(t);
    paramsTotal += n;
    bytes += b;
    if (t.fp8) {
      fp8 ??= { tensors: 0, params: 0, bytes: 0, storage: [], read_as: t.dtype };
      fp8.tensors++;
      fp8.params += n;
      fp8.bytes += b;
      if (!fp8.storage.includes(fp8Storage(t.fp8))) fp8.storage.push(fp8Storage(t.fp8));
    }
    const d = (dtypes[storedAs(t)] ??= { tensors: 0, params: 0, bytes: 0 });
    d.tensors++;
    d.params += n;
    d.bytes += b;
    const role = arch.classify(view.name);
    if (!role) extra++;
    if (role && 'layer' in role) {
      layers[role.layer].params += n;
      layers[role.layer].bytes += b;
    }
    if (role?.kind === 'expert' || role?.kind === 'expert_bias') {
      paramsExperts += n;
      bytesExperts += b;
    }
  }
  const files = fileBytes(ckpt.shards);
  return {
    model: ckpt.dir,
    ...modelSummary(arch, paramsTotal, paramsExperts),
    bytes: files,
    bytes_tensors: bytes,
    bytes_experts: bytesExperts,
    bytes_other: files - bytesExperts,
    dtypes,
    shards: ckpt.shards.length,
    extra_tensors: extra,
    layers,
    bytes_read: ckpt.bytesRead.value,
    quantization: quantSummary(ckpt.tensors),
    ...(fp8 ? { fp8 } : {}),
    ...(intQuantSummary(ckpt.tensors) ? { int_quant: intQuantSummary(ckpt.tensors) } : {}),
  };
}

/** What inspect says of the architecture and its parameters, for a safetensors checkpoint and a GGUF alike. */
function modelSummary(arch: Architecture, paramsTotal: number, paramsExperts: number) {
  return {
    model_type: arch.modelType,
    num_layers: arch.numLayers,
    moe_layers: arch.moeLayers,
    experts_per_layer: arch.moeLayers.map(() => arch.numExperts),
    top_k: arch.topK,
    shared_experts: arch.sharedExperts,
    hidden_size: arch.hidden,
    expert_width: arch.expertWidth,
    vocab_size: arch.vocab,
    routing: arch.routing,
    params_total: paramsTotal,
    // Per token, top_k of the routed experts run; everything else (embeddings included) is active.
    params_active: paramsTotal - paramsExperts + Math.round((paramsExperts * arch.topK) / arch.numExperts),
    params_experts: paramsExperts,
  };
}

/** A .gguf file, from its header: the architecture read back as moe eval runs it, sizes by ggml type. */
function inspectGguf(file: string): InspectReport {
  const g = openGgufModel(file);
  g.reader.close();
  const arch = g.arch;
  const layers = layerSummaries(arch);
  const dtypes: Record<string, DTypeStats> = {};
  let [params, bytes, paramsExperts, bytesExperts] = [0, 0, 0, 0];
  for (const t of g.tensors) {
    params += t.params;
    bytes += t.bytes;
    const d = (dtypes[t.ggml] ??= { tensors: 0, params: 0, bytes: 0 });
    d.tensors++;
    d.params += t.params;
    d.bytes += t.bytes;
    const layer = /^blk\.(\d+)\./.exec(t.name);
    if (layer) {
      layers[Number(layer[1])].params += t.params;
      layers[Number(layer[1])].bytes += t.bytes;
    }
    if (/_exps\.weight$/.test(t.name)) {
      paramsExperts += t.params;
      bytesExperts += t.bytes;
    }
  }
  return {
    model: g.file,
    ...modelSummary(arch, params, paramsExperts),
    // The size is the file's bytes (src/io/size.ts), as for safetensors: "rest" holds the header.
    bytes: g.gguf.fileSize,
    bytes_tensors: bytes,
    bytes_experts: bytesExperts,
    bytes_other: g.gguf.fileSize - bytesExperts,
    dtypes,
    shards: 1,
    extra_tensors: 0,
    layers,
    bytes_read: g.gguf.bytesRead,
    gguf: {
      architecture: String(g.gguf.metadata.get('general.architecture')),
      file_bytes: g.gguf.fileSize,
      bits_per_weight: (8 * bytes) / params,
    },
  };
}

function human(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} K`;
  return String(n);
}

export function formatInspect(r: InspectReport): string {
  const pct = (a: number, b: number) => (b > 0 ? `${((100 * a) / b).toFixed(1)}%` : '-');
  const routing = r.routing;
  const routeText = [
    routing.scoring,
    `top-${routing.topK}`,
    routing.normTopK ? 'renormalised' : 'not renormalised',
    routing.nGroup > 1 ? `${routing.nGroup} groups, best ${routing.topkGroup}` : '',
    routing.scalingFactor !== 1 ? `× ${routing.scalingFactor}` : '',
    routing.correctionBias ? 'selection bias' : '',
    routing.logitBias ? 'router bias' : '',
  ].filter(Boolean);
  const lines = [
    `model          ${modelName(r.model)} (${r.model_type})`,
    `layers         ${r.num_layers} (${r.moe_layers.length} MoE, ${r.num_layers - r.moe_layers.length} dense)`,
    `experts        ${r.experts_per_layer[0] ?? 0} routed per MoE layer, width ${r.expert_width}, ${r.shared_experts} shared`,
    `routing        ${routeText.join(', ')}`,
    `hidden, vocab  ${r.hidden_size}, ${r.vocab_size}`,
    `params         ${human(r.params_total)} total, ${human(r.params_active)} active per token (${pct(r.params_active, r.params_total)})`,
    `size           ${formatMB(r.bytes)} in ${r.shards} shard(s): experts ${formatMB(r.bytes_experts)} (${pct(r.bytes_experts, r.bytes)}), rest ${formatMB(r.bytes_other)}`,
    `dtypes         ${Object.entries(r.dtypes)
      .map(([d, s]) => `${d} ${formatBytes(s.bytes)} (${s.tensors} tensors)`)
      .join(', ')}`,
  ];
  if (r.gguf)
    lines.push(
      `gguf           ${r.gguf.architecture}, ${r.gguf.bits_per_weight.toFixed(3)} bits per weight, file ${formatBytes(r.gguf.file_bytes)}`,
    );
  const q = r.quantization;
  if (q) {
    const hist = Object.entries(q.bits_histogram)
      .map(([b, n]) => `${b}-bit ${pct(n, q.params)}`)
      .join(', ');
    lines.push(
      `quantized      ${q.tensors} weights, ${human(q.params)} params: ${q.average_bits.toFixed(3)} bits average (${q.stored_bits_per_weight.toFixed(3)} with scales and zeros); ${hist}`,
    );
  }
  if (r.fp8)
    lines.push(
      `fp8            ${r.fp8.tensors} weights, ${human(r.fp8.params)} params stored as ${r.fp8.storage.join(', ')}; read dequantized to ${r.fp8.read_as}`,
    );
  if (r.int_quant) {
    const s = Object.entries(r.int_quant.schemes).map(([k, v]) => `${k}: ${v.tensors} weights`);
    lines.push(`int weights    ${s.join('; ')}; read dequantized to ${r.int_quant.read_as}`);
  }
  if (r.extra_tensors > 0)
    lines.push(`other tensors  ${r.extra_tensors} outside the ${r.model_type} layout (kept as they are)`);
  lines.push('', 'layer  kind   experts      params        bytes');
  for (const l of r.layers) {
    lines.push(
      `${String(l.index).padStart(5)}  ${l.kind.padEnd(5)}  ${String(l.experts).padStart(7)}  ${human(l.params).padStart(10)}  ${formatBytes(l.bytes).padStart(11)}`,
    );
  }
  return lines.join('\n');
}

export const inspectSpec: CommandSpec<InspectReport> = {
  name: 'inspect',
  summary: 'show layers, experts, routing, parameters and bytes of a checkpoint (reads headers only)',
  args: [{ name: '<model>', description: 'model folder (config.json + *.safetensors) or a .gguf file' }],
  options: [JSON_OUTPUT],
  examples: ['moe inspect ./Qwen3-30B-A3B', 'moe inspect ./Mixtral-8x7B --json | jq .params_active'],
  run: ([model]) => inspect({ model }),
  format: formatInspect,
};
