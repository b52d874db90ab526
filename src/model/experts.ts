/** Running a layer's routed experts directly on given inputs (NAEE's reconstruction, merge similarity). */
import type { Backend } from '../backend/backend';
import { TensorReader } from '../io/checkpoint';
import type { Architecture } from './arch';
import { concatRows } from './forward/ops';

export interface ExpertWeights {
  /** [width, hidden] */
  gate: Float32Array;
  up: Float32Array;
  /** [hidden, width] */
  down: Float32Array;
}

export function loadExpert(reader: TensorReader, arch: Architecture, layer: number, e: number): ExpertWeights {
  return {
    gate: reader.f32(arch.expertKey(layer, e, 'gate')),
    up: reader.f32(arch.expertKey(layer, e, 'up')),
    down: reader.f32(arch.expertKey(layer, e, 'down')),
  };
}

/** Every routed expert of `layer` applied to x [n, hidden]: one [n, hidden] output per expert (unweighted). */
export async function expertOutputs(
  be: Backend,
  reader: TensorReader,
  arch: Architecture,
  layer: number,
  x: Float32Array,
  n: number,
): Promise<Float32Array[]> {
  const h = arch.hidden;
  const w = arch.expertWidth;
  const out: Float32Array[] = [];
  for (let e = 0; e < arch.numExperts; e++) {
    const ex = loadExpert(reader, arch, layer, e);
    out.push((await be.swiglu(x, concatRows(ex.gate, ex.up), ex.down, n, h, w, false)).out);
  }
  return out;
}
