/** Parsing of command-line values; bad values are usage errors naming the flag. */
import { UsageError } from '../errors';

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

/** "5GB" (decimal, as transformers' max_shard_size), "2GiB" (binary) or a byte count. */
export function parseSize(text: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2].toUpperCase()] : undefined;
  if (!m || unit === undefined)
    throw new UsageError(`${flag} ${JSON.stringify(text)} is not a size`, {
      hint: 'use a number with an optional unit, e.g. 5GB, 500MB or 2GiB',
    });
  const n = Math.floor(Number(m[1]) * unit);
  if (n < 1) throw new UsageError(`${flag} must be at least 1 byte`);
  return n;
}

export function parseIntArg(text: string, flag: string, min = 0): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min)
    throw new UsageError(`${flag} ${JSON.stringify(text)} is not an integer ≥ ${min}`);
  return n;
}
