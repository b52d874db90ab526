/** Running a layer's routed experts directly on given inputs (NAEE's reconstruction, merge similarity). */
import type { Backend, GluOptions } from '../backend/backend';
import { TensorReader } from '../io/checkpoint';
import type { Architecture, Proj } from './arch';
import { scaleRows } from './forward/moe';
import { concatRows } from './forward/ops';

export interface ExpertWeights {
  /** [width, hidden] */
  gate: Float32Array;
  up: Float32Array;
  /** [hidden, width] */
  down: Float32Array;
  /** The projections' biases ([width], [width], [hidden]) for experts that have them (gpt-oss). */
  bias?: Record<Proj, Float32Array>;
}

/** Whether the routed experts of `layer` have biases in this checkpoint. */
export function expertsHaveBias(reader: TensorReader, arch: Architecture, layer: number): boolean {
  const key = arch.expertBiasKey(layer, 0, 'gate');
  return key !== undefined && reader.has(key);
}

export function loadExpert(reader: TensorReader, arch: Architecture, layer: number, e: number): ExpertWeights {
  const w: ExpertWeights = {
    gate: reader.f32(arch.expertKey(layer, e, 'gate')),
    up: reader.f32(arch.expertKey(layer, e, 'up')),
    down: reader.f32(arch.expertKey(layer, e, 'down')),
  };
  if (expertsHaveBias(reader, arch, layer)) {
    const b = (p: Proj) => reader.f32(arch.expertBiasKey(layer, e, p)!);
    w.bias = { gate: b('gate'), up: b('up'), down: b('down') };
  }
  return w;
}

/**
 * What a routed expert adds to silu(gate)·up (gpt-oss: biases on gate/up and down, the clamped SwiGLU), with the
 * biases read through `f32`; undefined for the plain MLP.
 */
export function expertGluOptions(
  arch: Architecture,
  layer: number,
  e: number,
  f32: (name: string) => Float32Array,
): GluOptions | undefined {
  const clamp = arch.expertGlu;
  const gate = arch.expertBiasKey(layer, e, 'gate');
  const up = arch.expertBiasKey(layer, e, 'up');
  const down = arch.expertBiasKey(layer, e, 'down');
  if (!clamp && !gate && !up && !down) return undefined;
  // gate and up biases in the order of the fused gate|up rows; one without the other is 0.
  const width = arch.expertWidth;
  const gateUpBias =
    gate || up
      ? concatRows(gate ? f32(gate) : new Float32Array(width), up ? f32(up) : new Float32Array(width))
      : undefined;
  return { clamp, gateUpBias, downBias: down ? f32(down) : undefined };
}

/**
 * Every routed expert of `layer` applied to x [n, hidden]: one [n, hidden] output per expert (unweighted). With
 * `scales` [n, E], expert e sees row t of x times scales[t·E + e] (Llama 4's input-scaled experts).
 */
export async function expertOutputs(
  be: Backend,
  reader: TensorReader,
  arch: Architecture,
  layer: number,
  x: Float32Array,
  n: number,
  scales?: Float32Array,
): Promise<Float32Array[]> {
  const h = arch.hidden;
  const w = arch.expertWidth;
  const E = arch.numExperts;
  const out: Float32Array[] = [];
  for (let e = 0; e < E; e++) {
    const ex = loadExpert(reader, arch, layer, e);
    const opts = expertGluOptions(arch, layer, e, (name) => reader.f32(name));
    let xe = x;
    if (scales) {
      xe = x.slice(0, n * h);
      scaleRows(
        xe,
        h,
        Float32Array.from({ length: n }, (_, t) => scales[t * E + e]),
      );
    }
    out.push((await be.swiglu(xe, concatRows(ex.gate, ex.up), ex.down, n, h, w, false, opts)).out);
  }
  return out;
}
