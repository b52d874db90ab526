/**
 * Which allocation granularity each output format can express, and the default per format.
 *
 * Fused-MoE kernels run every routed expert of a layer's projection in one call with one quantization scheme:
 * vLLM's and SGLang's MoE methods for compressed-tensors and GPTQ (one weight config per FusedMoE layer), and
 * llama.cpp, whose GGUF stores a layer's experts as one tensor per projection (ffn_{gate,up,down}_exps, one type
 * each). So `layer-projection` (all experts of a layer share the bits of each of gate/up/down) is the default for
 * those formats, while moe's packed and the dequantized layouts keep per-expert allocation.
 *   - packed, dequantized: any granularity.
 *   - compressed-tensors, gptq: per-expert widths are valid files (config_groups / `dynamic` name every module),
 *     but the engines' fused-MoE kernels need layer-projection: allowed, with a warning.
 *   - gguf: one type per ffn_*_exps tensor, which is layer-projection; finer or coarser groups are refused.
 */
import { UsageError } from '../errors';
import type { Granularity } from './plan';
import type { QuantFormat } from './quant-plan';

/** Granularities under which experts of one layer projection may take different widths. */
const PER_EXPERT: readonly Granularity[] = ['expert', 'projection'];

/** The engine formats, whose serving kernels want one scheme per layer projection. */
const ENGINE_FORMATS: readonly string[] = ['compressed-tensors', 'gptq', 'gguf'];

export function defaultGranularity(format: QuantFormat | 'gguf'): Granularity {
  return ENGINE_FORMATS.includes(format) ? 'layer-projection' : 'expert';
}

/** What --help says about --granularity. */
export const GRANULARITY_HELP =
  'allocation group under --allocate lp: expert (its projections together), projection (each weight), layer (all ' +
  'experts of a layer), or layer-projection (all experts of a layer, per gate/up/down: one scheme per fused-MoE ' +
  'kernel). Default: layer-projection for compressed-tensors, gptq and gguf, expert for packed and dequantized. ' +
  'packed and dequantized express any; compressed-tensors and gptq store per-expert widths (warned: vLLM and ' +
  "SGLang's fused-MoE kernels need one scheme per layer projection); gguf only layer-projection (one type per " +
  'ffn_*_exps tensor)';

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

/** The one-line warning for per-expert widths in an engine format under the LP (undefined: nothing to say). */
export function engineGranularityWarning(
  format: QuantFormat,
  g: Granularity,
  allocate: 'uniform' | 'lp',
): string | undefined {
  if (allocate !== 'lp' || !ENGINE_FORMATS.includes(format) || !PER_EXPERT.includes(g)) return undefined;
  // README: transformers 5.18 decodes every expert of a layer with one compressed-tensors scheme.
  const also = format === 'compressed-tensors' ? ' (nor transformers 5.18)' : '';
  return `--granularity ${g} with --format ${format}: experts of one layer projection may get different bits, which the file stores per module but vLLM's and SGLang's fused-MoE kernels do not run${also}: they need one scheme per layer projection; use --granularity layer-projection (the default) to serve with them`;
}
