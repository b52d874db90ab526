/** The `quantization_config` of config.json, read for its method and removed when an output no longer has it. */

/** A config without its `quantization_config` when that declares `method`; otherwise the config itself. */
export function withoutQuantMethod(config: Record<string, unknown>, method: string): Record<string, unknown> {
  const q = config.quantization_config as { quant_method?: unknown } | undefined;
  if (q?.quant_method !== method) return config;
  const out = { ...config };
  delete out.quantization_config;
  return out;
}
