/**
 * Reads a GGUF file's header (metadata and tensor infos) without its tensor data: what moe's tests and checks use
 * to re-open the files it writes. Values are decoded for the scalar, string and array types of GGUF v3.
 */
import * as fs from 'node:fs';
import { CheckpointError } from '../errors';
import { GGUF_ALIGNMENT } from './writer';

export interface GgufTensorInfo {
  name: string;
  /** PyTorch order, outermost first. */
  shape: number[];
  type: number;
  /** Absolute offset of the data in the file. */
  offset: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, unknown>;
  tensors: GgufTensorInfo[];
}

export function readGguf(file: string): GgufFile {
  const buf = fs.readFileSync(file);
  let at = 0;
  const bad = (what: string) => new CheckpointError(`not a valid GGUF file: ${what}`, { file });
  const need = (n: number) => {
    if (at + n > buf.length) throw bad('truncated header');
  };
  const u32 = () => (need(4), (at += 4), buf.readUInt32LE(at - 4));
  const u64 = () => (need(8), (at += 8), Number(buf.readBigUInt64LE(at - 8)));
  const str = () => {
    const n = u64();
    need(n);
    at += n;
    return buf.toString('utf8', at - n, at);
  };
  const scalar = (type: number): unknown => {
    switch (type) {
      case 0: return (need(1), buf.readUInt8(at++));
      case 1: return (need(1), buf.readInt8(at++));
      case 2: return (need(2), (at += 2), buf.readUInt16LE(at - 2));
      case 3: return (need(2), (at += 2), buf.readInt16LE(at - 2));
      case 4: return u32();
      case 5: return (need(4), (at += 4), buf.readInt32LE(at - 4));
      case 6: return (need(4), (at += 4), buf.readFloatLE(at - 4));
      case 7: return (need(1), buf.readUInt8(at++) !== 0);
      case 8: return str();
      case 10: return u64();
      case 11: return (need(8), (at += 8), Number(buf.readBigInt64LE(at - 8)));
      case 12: return (need(8), (at += 8), buf.readDoubleLE(at - 8));
      default: throw bad(`value type ${type}`);
    }
  };
  if (u32() !== 0x46554747) throw bad('no GGUF magic');
  const version = u32();
  if (version !== 3) throw bad(`version ${version}, expected 3`);
  const nTensors = u64();
  const nKv = u64();
  const metadata = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const type = u32();
    if (type === 9) {
      const of = u32();
      const n = u64();
      const arr: unknown[] = [];
      for (let j = 0; j < n; j++) arr.push(scalar(of));
      metadata.set(key, arr);
    } else metadata.set(key, scalar(type));
  }
  const infos: { name: string; shape: number[]; type: number; rel: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const dims = u32();
    const ne: number[] = [];
    for (let d = 0; d < dims; d++) ne.push(u64());
    const type = u32();
    infos.push({ name, shape: ne.reverse(), type, rel: u64() });
  }
  const alignment = Number(metadata.get('general.alignment') ?? GGUF_ALIGNMENT);
  const dataStart = Math.ceil(at / alignment) * alignment;
  return { version, metadata, tensors: infos.map(({ rel, ...t }) => ({ ...t, offset: dataStart + rel })) };
}
