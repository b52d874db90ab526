/** Types of bench/fuzz-lib.js, for test/reliability/fuzz.test.ts. */
export interface Rng {
  (): number;
  int(n: number): number;
  pick<T>(list: readonly T[]): T;
}
export interface Model {
  files: Record<string, Buffer>;
}
export interface Mutation extends Model {
  kind: string;
  target: string;
}
export interface RawTensor {
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}
export const INDEX: string;
export const DTYPE_BYTES: Record<string, number>;
export function prng(seed: number): Rng;
export function readModel(dir: string): Model;
export function writeModel(dir: string, files: Record<string, Buffer>): void;
export function mutate(model: Model, rng: Rng): Mutation;
export function parseShard(buf: Buffer): Map<string, RawTensor> | undefined;
export function tensorBytes(dtype: string, shape: number[]): number;
export function split(buf: Buffer): { n: number; header: string; data: Buffer };
export interface ReaderApi {
  openCheckpoint(dir: string): {
    tensors: Map<
      string,
      { name: string; dtype: string; shape: number[]; file: string; begin: number; end: number; packed?: unknown }
    >;
  };
  TensorReader: new (ckpt: never) => { bytes(name: string): Uint8Array; close(): void };
  loadArchitecture(ckpt: never): unknown;
}
export function readAll(dir: string, files: Record<string, Buffer>, api: ReaderApi): void;
export function messageClass(message: string): string;
export function fuzzCase(bases: Model[], seed: number, i: number): Mutation & { base: number };
