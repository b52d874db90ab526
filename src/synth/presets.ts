/**
 * Tiny configs, one per registered model_type, with the keys and aliases transformers writes. Used by tests and
 * `moe synth` to make random checkpoints with the exact Hugging Face tensor names. Each preset lives in its family
 * file (src/model/*.ts); PRESETS is a live view of the registry, so a family registered later is listed too.
 */
import type { Config } from '../io/checkpoint';
import { architectures } from '../model/registry';

const presetOf = (key: string | symbol): Config | undefined =>
  typeof key === 'string' ? architectures.get(key)?.preset : undefined;

export const PRESETS: Record<string, Config> = new Proxy({} as Record<string, Config>, {
  get: (_t, key) => presetOf(key),
  has: (_t, key) => presetOf(key) !== undefined,
  ownKeys: () => architectures.modelTypes(),
  getOwnPropertyDescriptor: (_t, key) => {
    const value = presetOf(key);
    return value === undefined ? undefined : { value, enumerable: true, configurable: true, writable: false };
  },
  set: () => false,
  defineProperty: () => false,
  deleteProperty: () => false,
});
