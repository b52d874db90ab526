/**
 * `moe quantize --format gptq`: moe's quantizer results (RTN or GPTQ codes, scales, zero points; bits uniform or
 * from the LP) written in the GPTQ v1 layout (src/io/gptq.ts) with the `quantization_config` GPTQModel, vLLM and
 * transformers read: quant_method "gptq", bits (the most common width), group_size, desc_act false (moe's
 * act-order keeps groups in column order, so g_idx is i / G), sym false, checkpoint_format "gptq", and `dynamic`
 * per-module overrides: "-:regex" for the decoder's linear weights left unquantized (routers, and weights whose
 * dimensions the packing cannot hold) and "+:regex" {bits} for weights at another width (the experts of a layer
 * projection that all take it, as under --granularity layer-projection, as one `experts\.\d+\.` pattern).
 * Matching is re.match in the order written (vLLM's gptq_utils.get_dynamic_override), so every pattern is anchored
 * with ^…$.
 */
import { CheckpointError, UsageError } from '../errors';
import { fromFloat32, halfToFloat, floatToHalfBits } from '../io/dtype';
import { GPTQ_BITS, GPTQ_CHECKPOINT_FORMAT, GPTQ_QUANT_METHOD, gptqFits, gptqUnit } from '../io/gptq';
import { writeField } from '../util/bitfield';
import { escapeRegExp, modulePatterns } from '../util/regexp';
import type { TensorRef } from '../io/safetensors';
import type { Architecture } from '../model/arch';
import type { QuantizedMatrix } from './rtn';

/** Refuses what the GPTQ layout cannot express, before any tensor is read. */
export function checkGptqOptions(o: {
  bits: number;
  allocate?: string;
  bitChoices?: number[];
  attnBits?: number;
  sharedExpertBits?: number;
  layers?: unknown;
}): void {
  const widths =
    o.allocate === 'lp' ? (o.bitChoices ?? GPTQ_BITS) : [o.bits, o.attnBits, o.sharedExpertBits].filter((b) => b);
  for (const b of [...widths, o.attnBits, o.sharedExpertBits].filter((x) => x !== undefined) as number[])
    if (!GPTQ_BITS.includes(b))
      throw new UsageError(`--format gptq stores 2, 3, 4 or 8 bits, not ${b}`, {
        hint: 'choose --bits/--bit-choices among 2,3,4,8, or use --format packed or compressed-tensors',
      });
  if (o.layers !== undefined)
    throw new UsageError(
      '--layers writes parts in moe-packed layout for moe assemble; --format gptq writes a whole model',
    );
}

/** Experts stored fused (gpt_oss) have no per-expert modules a GPTQ loader could replace. */
export function checkNotFused(arch: Architecture, tensors: Map<string, TensorRef>, dir: string): void {
  const fused = [...tensors.values()].find((t) => t.view);
  if (fused || arch.modelType === 'gpt_oss')
    throw new CheckpointError(`${arch.modelType} stores its experts fused, which the GPTQ layout has no modules for`, {
      file: dir,
      hint: 'use --format gguf (llama.cpp), packed or dequantized',
    });
}

/** Whether a weight [rows, cols] can be written at each width it may take (else it stays unquantized). */
export function fitsAll(rows: number, cols: number, widths: number[]): boolean {
  return widths.every((b) => gptqFits(rows, cols, b));
}

export interface GptqEncoded {
  qweight: Uint8Array;
  qzeros: Uint8Array;
  scales: Uint8Array;
  gIdx: Uint8Array;
  /** Scales that FP16 does not hold exactly (rounded to the nearest FP16). */
  inexact: number;
  /** Groups whose zero point is 0, stored as 2^b − 1 (v1's offset; see the report). */
  zeroZeros: number;
}

/** One quantized weight [rows = out, cols = in] in the GPTQ v1 layout. */
export function encodeGptq(q: QuantizedMatrix, name: string): GptqEncoded {
  const { rows, cols, bits, groupSize } = q;
  if (!gptqFits(rows, cols, bits))
    throw new CheckpointError(
      `${name} [${rows}, ${cols}] does not pack at ${bits} bits (GPTQ packs ${gptqUnit(bits)})`,
    );
  const ng = Math.ceil(cols / groupSize);
  const maxq = (1 << bits) - 1;
  const qweight = new Uint32Array(((cols * bits) / 32) * rows);
  for (let o = 0; o < rows; o++)
    for (let i = 0; i < cols; i++) writeField(qweight, rows, o, i, bits, q.codes[o * cols + i]);
  const zw = (rows * bits) / 32;
  const qzeros = new Uint32Array(ng * zw);
  const scales = new Float32Array(ng * rows); // [groups, out]
  let inexact = 0;
  let zeroZeros = 0;
  for (let g = 0; g < ng; g++) {
    const row = qzeros.subarray(g * zw, (g + 1) * zw);
    for (let o = 0; o < rows; o++) {
      const z = q.zeros[o * ng + g];
      if (z === 0) zeroZeros++;
      writeField(row, 1, 0, o, bits, (z - 1) & maxq);
      const s = q.scales[o * ng + g];
      const h = halfToFloat(floatToHalfBits(s));
      if (!Number.isFinite(h))
        throw new CheckpointError(`${name}: scale ${s} of group ${g}, row ${o} overflows FP16`, {
          hint: 'use --format packed or gguf',
        });
      if (h !== s) inexact++;
      scales[g * rows + o] = h;
    }
  }
  const gIdx = new Int32Array(cols);
  for (let i = 0; i < cols; i++) gIdx[i] = Math.floor(i / groupSize);
  return {
    qweight: new Uint8Array(qweight.buffer),
    qzeros: new Uint8Array(qzeros.buffer),
    scales: fromFloat32(scales, 'F16'),
    gIdx: new Uint8Array(gIdx.buffer),
    inexact,
    zeroZeros,
  };
}

const moduleOf = (weight: string) => weight.replace(/\.weight$/, '');
const anchored = (names: string[]) => `^(?:${names.map((n) => escapeRegExp(moduleOf(n))).join('|')})$`;
const MOE_LAYER = /^(.*\.experts)\.\d+\.(.+)$/;

/**
 * As `anchored`, with the routed experts collapsed: all experts of a MoE layer at these bits as one pattern that
 * also matches the layer's own prefix (`….mlp.experts`, which vLLM's fused-MoE method looks `dynamic` up by), else
 * the experts of a layer projection as one `\d+` pattern (src/util/regexp.ts).
 */
function anchoredModules(weights: string[], every: string[]): string {
  const names = weights.map(moduleOf);
  const all = every.map(moduleOf);
  const inSet = new Set(names);
  const whole = new Map<string, Set<string>>();
  for (const n of all) {
    const m = MOE_LAYER.exec(n);
    if (m) whole.set(m[1], (whole.get(m[1]) ?? new Set()).add(m[2]));
  }
  const complete = new Set(
    [...whole.keys()].filter((p) => all.every((n) => MOE_LAYER.exec(n)?.[1] !== p || inSet.has(n))),
  );
  const parts: string[] = [];
  const rest: string[] = [];
  const done = new Set<string>();
  for (const n of names) {
    const p = MOE_LAYER.exec(n)?.[1];
    if (p === undefined || !complete.has(p)) rest.push(n);
    else if (!done.has(p)) {
      done.add(p);
      const projs = [...whole.get(p)!].sort().map(escapeRegExp).join('|');
      parts.push(`${escapeRegExp(p)}(?:\\.\\d+\\.(?:${projs}))?`);
    }
  }
  return `^(?:${[...parts, ...modulePatterns(rest, all)].join('|')})$`;
}

/**
 * The config's quantization_config: the base bits are the width most weights (by parameters) have; `skipped` are
 * the decoder's linear weights left unquantized.
 */
export function gptqConfig(
  weights: { name: string; bits: number; rows: number; cols: number }[],
  skipped: string[],
  groupSize: number,
): Record<string, unknown> {
  const byBits = new Map<number, number>();
  for (const w of weights) byBits.set(w.bits, (byBits.get(w.bits) ?? 0) + w.rows * w.cols);
  const base = [...byBits].sort((a, b) => b[1] - a[1] || b[0] - a[0])[0]?.[0] ?? 4;
  const dynamic: Record<string, Record<string, number>> = {};
  if (skipped.length) dynamic[`-:${anchored(skipped)}`] = {};
  for (const b of [...byBits.keys()].sort((x, y) => x - y)) {
    if (b === base) continue;
    const names = weights.filter((w) => w.bits === b).map((w) => w.name);
    dynamic[
      `+:${anchoredModules(
        names,
        weights.map((w) => w.name),
      )}`
    ] = { bits: b };
  }
  return {
    quant_method: GPTQ_QUANT_METHOD,
    checkpoint_format: GPTQ_CHECKPOINT_FORMAT,
    bits: base,
    group_size: groupSize,
    desc_act: false,
    sym: false,
    lm_head: false,
    true_sequential: true,
    pack_dtype: 'int32',
    ...(Object.keys(dynamic).length ? { dynamic } : {}),
    meta: { quantizer: ['moe'] },
  };
}

/** The widths a weight of class `cls` may take in this run (every allowed choice under --allocate lp). */
function widthsOf(
  cls: string,
  o: { bits: number; allocate?: string; bitChoices?: number[]; attnBits?: number; sharedExpertBits?: number },
): number[] {
  const fixed = cls === 'attn' ? o.attnBits : cls === 'shared' ? o.sharedExpertBits : undefined;
  if (fixed !== undefined) return [fixed];
  return o.allocate === 'lp' ? (o.bitChoices ?? GPTQ_BITS) : [o.bits];
}

/** The targets GPTQ can store at every width they may take; the others stay unquantized ("-:" in `dynamic`). */
export function gptqTargets<T extends { rows: number; cols: number; cls: string }>(
  targets: T[],
  o: Parameters<typeof widthsOf>[1],
): T[] {
  return targets.filter((t) => fitsAll(t.rows, t.cols, widthsOf(t.cls, o)));
}

/** The decoder's linear weights (2-D, in a layer) that are not quantized: routers and what did not fit. */
export function gptqSkipped(arch: Architecture, tensors: Map<string, TensorRef>, quantized: Set<string>): string[] {
  return [...tensors.values()]
    .filter((t) => t.shape.length === 2 && t.name.endsWith('.weight') && !quantized.has(t.name))
    .filter((t) => {
      const role = arch.classify(t.name);
      return !!role && 'layer' in role;
    })
    .map((t) => t.name);
}

/** What the run should say about values the GPTQ layout could not hold exactly. */
export function warnings(s: { inexact: number; zeroZeros: number }): string[] {
  const out: string[] = [];
  if (s.inexact)
    out.push(`--format gptq: ${s.inexact} scale(s) below FP16's precision were rounded to the nearest FP16 value`);
  if (s.zeroZeros)
    out.push(
      `--format gptq: ${s.zeroZeros} group(s) have zero point 0, stored as 2^bits-1 (v1's zero-1); GPTQModel and transformers decode them exactly, kernels that add 1 without wrapping (vLLM's gptq) do not`,
    );
  return out;
}
