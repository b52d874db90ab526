/**
 * Which allocation granularity each output format can express, and the default per format.
 *
 * Fused-MoE kernels run all routed experts of a layer in one call, so they need those experts to share a scheme:
 * llama.cpp's GGUF stores a layer's experts as one tensor per projection (ffn_{gate,up,down}_exps, one type each),
 * and vLLM builds one fused-MoE method per layer (for compressed-tensors it compares expert 0's gate/up/down
 * schemes and refuses a mix, CompressedTensorsMoEMethod.get_moe_method; for GPTQ it takes one width per layer from
 * `dynamic` matched against the layer's prefix `….mlp.experts`), so it also needs gate/up/down to agree.
 * Defaults: `layer` (all experts of a MoE layer at one width, gate/up/down together) for compressed-tensors and gptq,
 * what vLLM runs; `layer-projection` (all experts of a layer share the bits of each of gate/up/down) for gguf, what
 * llama.cpp stores; moe's packed and the dequantized layouts keep per-expert allocation.
 *   - packed, dequantized: any granularity.
 *   - compressed-tensors, gptq: any (config_groups / `dynamic` name every module); a warning when the LP gives the
 *     experts of a layer more than one width (vLLM runs them with --granularity layer or uniform bits).
 *   - gguf: one type per ffn_*_exps tensor, which is layer-projection; finer or coarser groups are refused.
 */
import { UsageError } from '../errors';
import type { Granularity, Target } from './plan';
import type { QuantFormat } from './quant-plan';

/** Granularities under which experts of one layer projection may take different widths. */
const PER_EXPERT: readonly Granularity[] = ['expert', 'projection'];

/**
 * The default per format: what the engine that loads it runs. vLLM's fused-MoE path wants one scheme per MoE layer
 * (compressed-tensors, gptq); llama.cpp one type per ffn_*_exps tensor (gguf); moe's own formats take any.
 */
export function defaultGranularity(format: QuantFormat | 'gguf'): Granularity {
  if (format === 'gguf') return 'layer-projection';
  return format === 'compressed-tensors' || format === 'gptq' ? 'layer' : 'expert';
}

/** What --help says about --granularity. */
export const GRANULARITY_HELP =
  'allocation group under --allocate lp: expert (its projections together), projection (each weight), layer (all ' +
  'experts of a layer), or layer-projection (all experts of a layer, per gate/up/down: one scheme per fused-MoE ' +
  'kernel). Default: layer for compressed-tensors and gptq (what vLLM runs), layer-projection for gguf, expert ' +
  'for packed and dequantized. ' +
  "packed, dequantized, compressed-tensors and gptq express any (the last two warn when a MoE layer's experts get " +
  "several widths: vLLM's fused-MoE kernels run one scheme per layer, --granularity layer); gguf only " +
  'layer-projection (one type per ffn_*_exps tensor)';

/** --format gguf: the LP chooses one type per GGUF tensor, so each layer's experts per projection (refused else). */
export function checkGgufGranularity(g: Granularity | undefined): void {
  if (g === undefined || g === 'layer-projection') return;
  const why = PER_EXPERT.includes(g)
    ? 'per-expert bits cannot be expressed'
    : 'the LP chooses one type per tensor, not per layer';
  throw new UsageError(
    `--format gguf stores each layer's routed experts as one tensor per projection (ffn_{gate,up,down}_exps, one type each): --granularity ${g} is refused, ${why}`,
    { hint: `use --granularity layer-projection (the default for gguf), or --format packed for --granularity ${g}` },
  );
}

/**
 * The one-line warning of an engine-format run whose LP gave the routed experts of a MoE layer more than one bit
 * width (undefined: none did). The file stores that, but vLLM builds one fused-MoE method per layer: for
 * compressed-tensors it compares expert 0's gate/up/down schemes and refuses a mix
 * (CompressedTensorsMoEMethod.get_moe_method), for GPTQ it takes one width per layer from `dynamic` matched against
 * the layer's prefix (`….mlp.experts`).
 */
export function engineGranularityWarning(
  format: QuantFormat,
  g: Granularity,
  targets: Target[],
  bitsOf: Map<string, number>,
): string | undefined {
  if (format !== 'compressed-tensors' && format !== 'gptq') return undefined;
  const widths = new Map<number, Set<number>>();
  for (const t of targets)
    if (t.cls === 'expert') widths.set(t.layer, (widths.get(t.layer) ?? new Set()).add(bitsOf.get(t.group)!));
  if (![...widths.values()].some((w) => w.size > 1)) return undefined;
  return mixedWidthsWarning(format, g);
}

export function mixedWidthsWarning(format: 'compressed-tensors' | 'gptq', g: Granularity): string {
  return `--format ${format}: the LP gave the routed experts of a MoE layer more than one bit width (--granularity ${g}); the file stores that, but vLLM's fused-MoE kernels run one scheme per MoE layer (all experts, gate/up/down together): use --granularity layer to serve with vLLM`;
}
