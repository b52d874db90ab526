/**
 * The registry of ggml types moe encodes and decodes: one codec module per type.
 * Adding a type is its module and one line here.
 */
import type { Codec, GgmlType } from './codec';
import { BF16, F16, F32 } from './floats';
import { MXFP4 } from './mxfp4';
import { Q2_K } from './q2_k';
import { Q3_K } from './q3_k';
import { Q4_0 } from './q4_0';
import { Q4_K } from './q4_k';
import { Q5_K } from './q5_k';
import { Q6_K } from './q6_k';
import { Q8_0 } from './q8_0';

export type { BlockCodec, Codec, ElementCodec, GgmlType, Importance } from './codec';

/** In the order the CLI lists them. */
export const CODECS: readonly Codec[] = [F32, F16, BF16, Q8_0, Q4_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, MXFP4];

const BY_TYPE = new Map<GgmlType, Codec>(CODECS.map((c) => [c.type, c]));

export function codec(t: GgmlType): Codec {
  const c = BY_TYPE.get(t);
  if (!c) throw new RangeError(`no codec for ggml type ${t}`);
  return c;
}
