/**
 * Float32 buffers in a WebAssembly memory, with a SIMD bf16 → float32 decoder that writes straight into them.
 *
 * Decoding bf16 in JavaScript costs ~0.6–1.9 ns per value (one 16-bit load, shift and 32-bit store each; V8 does not
 * vectorise it); the loop below does eight values per iteration with 128-bit SIMD, 0.19 ns per value (measured on
 * this project's machine, 4 M values). WebAssembly only reaches its own memory, so the buffers the forward pass
 * decodes weights into (model.ts BufferPool) are carved out of one. Its size is fixed when it is made: growing a
 * memory detaches every view of it, and onnxruntime-node refuses views of a shared memory (which would survive
 * growth). The pages cost nothing until they are touched. Blocks are never returned to the memory; freed ones are
 * kept by size and handed out again. A full arena hands out nothing: the caller falls back to plain arrays. */

/** The few WebAssembly API pieces used here (the project's TypeScript libs declare no WebAssembly). */
interface WasmMemory {
  readonly buffer: ArrayBufferLike;
  grow(pages: number): number;
}
interface WasmModuleObject {
  readonly kind: 'module';
}
declare const WebAssembly: {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => WasmModuleObject;
  Instance: new (
    mod: WasmModuleObject,
    imports: Record<string, Record<string, unknown>>,
  ) => { exports: Record<string, unknown> };
  Memory: new (d: { initial: number; maximum: number }) => WasmMemory;
};

/** WebAssembly pages are 64 KB; a 32-bit memory holds at most 65,536 of them (4 GB). */
const PAGE = 65536;
const MAX_PAGES = 65535;

function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

const section = (id: number, payload: number[]) => [id, ...leb(payload.length), ...payload];
const name = (s: string) => [s.length, ...Array.from(Buffer.from(s, 'ascii'))];

/** SIMD instructions: the 0xfd prefix and the opcode as LEB128. */
const simd = (op: number) => [0xfd, ...leb(op)];
const V128_LOAD = 0x00;
const V128_STORE = 0x0b;
const I8X16_SHUFFLE = 0x0d;
const I8X16_SPLAT = 0x0f;
const F32X4_SPLAT = 0x13;
const V128_AND = 0x4e;
const I8X16_SHR_U = 0x6d;
const I16X8_EXTEND_LOW_I8X16_U = 0x89;
const I16X8_EXTEND_HIGH_I8X16_U = 0x8a;
const I32X4_EXTEND_LOW_I16X8_U = 0xa9;
const I32X4_EXTEND_HIGH_I16X8_U = 0xaa;
const I32X4_SHL = 0xab;
const F32X4_SUB = 0xe5;
const F32X4_MUL = 0xe6;
const F32X4_CONVERT_I32X4_U = 0xfb;
const get = (i: number) => [0x20, i];
const set = (i: number) => [0x21, i];
/** i32.const: its immediate is signed LEB128 (64 needs two bytes: a lone 0x40 would read as −64). */
const i32 = (v: number) => [0x41, ...sleb(v)];

function sleb(v: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
}
const add = [0x6a];
const sub = [0x6b];
const memarg = (offset: number) => [0x04, ...leb(offset)]; // align 16, offset
/** x += step for the i32 local x. */
const bump = (x: number, step: number) => [...get(x), ...i32(step), ...add, ...set(x)];
/** x -= 1, and loop while it is not 0 (the end of a `loop` body). */
const countDown = (x: number) => [...get(x), ...i32(1), ...sub, 0x22, x, 0x0d, 0x00, 0x0b];

/**
 * bf16(src, dst, groups): for each group of eight bf16 values at src (16 bytes), their float32 values at dst
 * (32 bytes): widened to 32 bits (i32x4.extend_{low,high}_i16x8_u) and shifted into the high half (i32x4.shl 16).
 * groups ≥ 1.
 */
function bf16Body(): number[] {
  const [src, dst, groups] = [0, 1, 2];
  const half = (extend: number, offset: number) => [
    ...get(dst), ...get(src), ...simd(V128_LOAD), ...memarg(0), ...simd(extend),
    ...i32(16), ...simd(I32X4_SHL), ...simd(V128_STORE), ...memarg(offset),
  ]; // prettier-ignore
  return [
    0x00, // no locals
    0x03, 0x40, // loop
    ...half(I32X4_EXTEND_LOW_I16X8_U, 0),
    ...half(I32X4_EXTEND_HIGH_I16X8_U, 16),
    ...bump(src, 16),
    ...bump(dst, 32),
    ...countDown(groups),
    0x0b, // end function
  ]; // prettier-ignore
}

/**
 * q4 / q8(codes, scales, zeros, dst, groups, chunks): 4-bit codes two per byte (low nibble first), or 8-bit codes
 * one per byte, in groups sharing a float32 scale and zero point (scales[g], zeros[g]); each group is `chunks` runs
 * of 16 bytes (32 or 16 values). Each value is (code − zero)·scale in float32 (one rounding, as dequantizePacked
 * computes it). groups, chunks ≥ 1.
 */
function groupsBody(bits: 4 | 8): number[] {
  const [codes, scales, zeros, dst, groups, chunks] = [0, 1, 2, 3, 4, 5];
  const [c, sv, zv, lo, hi, x] = [6, 7, 8, 9, 10, 11];
  // the 16 values of x (bytes 0–15) as float32 at dst + offset .. + 63
  const store4 = (ext8: number, ext16: number, offset: number) => [
    ...get(dst), ...get(x), ...simd(ext8), ...simd(ext16), ...simd(F32X4_CONVERT_I32X4_U),
    ...get(zv), ...simd(F32X4_SUB), ...get(sv), ...simd(F32X4_MUL), ...simd(V128_STORE), ...memarg(offset),
  ]; // prettier-ignore
  const store16 = (offset: number) => [
    ...store4(I16X8_EXTEND_LOW_I8X16_U, I32X4_EXTEND_LOW_I16X8_U, offset),
    ...store4(I16X8_EXTEND_LOW_I8X16_U, I32X4_EXTEND_HIGH_I16X8_U, offset + 16),
    ...store4(I16X8_EXTEND_HIGH_I8X16_U, I32X4_EXTEND_LOW_I16X8_U, offset + 32),
    ...store4(I16X8_EXTEND_HIGH_I8X16_U, I32X4_EXTEND_HIGH_I16X8_U, offset + 48),
  ];
  // byte i's low nibble is value 2i, its high nibble value 2i + 1
  const interleave = (from: number) =>
    Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? from + i / 2 : 16 + from + (i - 1) / 2));
  const run = bits === 8
    ? [...get(codes), ...simd(V128_LOAD), ...memarg(0), ...set(x), ...store16(0), ...bump(dst, 64)]
    : [
        ...get(codes), ...simd(V128_LOAD), ...memarg(0), ...set(hi),
        ...get(hi), ...i32(15), ...simd(I8X16_SPLAT), ...simd(V128_AND), ...set(lo),
        ...get(hi), ...i32(4), ...simd(I8X16_SHR_U), ...set(hi),
        ...get(lo), ...get(hi), ...simd(I8X16_SHUFFLE), ...interleave(0), ...set(x),
        ...store16(0),
        ...get(lo), ...get(hi), ...simd(I8X16_SHUFFLE), ...interleave(8), ...set(x),
        ...store16(64),
        ...bump(dst, 128),
      ]; // prettier-ignore
  return [
    0x02, 0x01, 0x7f, 0x05, 0x7b, // locals: 1 i32 (c), 5 v128 (sv, zv, lo, hi, x)
    0x03, 0x40, // loop over groups
    ...get(scales), 0x2a, 0x02, 0x00, ...simd(F32X4_SPLAT), ...set(sv), // sv = splat(f32.load scales)
    ...get(zeros), 0x2a, 0x02, 0x00, ...simd(F32X4_SPLAT), ...set(zv),
    ...get(chunks), ...set(c),
    0x03, 0x40, // loop over the group's 16-byte runs
    ...run,
    ...bump(codes, 16),
    ...countDown(c),
    ...bump(scales, 4),
    ...bump(zeros, 4),
    ...countDown(groups),
    0x0b, // end function
  ]; // prettier-ignore
}

/** The module: memory imported as env.mem (any size), bf16, q4 and q8 exported. */
function moduleBytes(): Uint8Array {
  const bodies = [bf16Body(), groupsBody(4), groupsBody(8)];
  const i32x = (n: number) => Array<number>(n).fill(0x7f);
  return Uint8Array.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
    ...section(1, [0x02, 0x60, 0x03, ...i32x(3), 0x00, 0x60, 0x06, ...i32x(6), 0x00]), // types: (3 i32), (6 i32)
    ...section(2, [0x01, ...name('env'), ...name('mem'), 0x02, 0x00, ...leb(1)]), // memory, ≥ 1 page
    ...section(3, [0x03, 0x00, 0x01, 0x01]), // bf16: type 0, q4 and q8: type 1
    ...section(7, [0x03, ...name('bf16'), 0x00, 0x00, ...name('q4'), 0x00, 0x01, ...name('q8'), 0x00, 0x02]),
    ...section(10, [0x03, ...bodies.flatMap((b) => [...leb(b.length), ...b])]),
  ]);
}

let compiled: WasmModuleObject | null | undefined;

/** The compiled module, or null where WebAssembly SIMD or shared memory is unavailable. */
function wasmModule(): WasmModuleObject | null {
  if (compiled === undefined) {
    try {
      const bytes = moduleBytes();
      compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    } catch {
      compiled = null;
    }
  }
  return compiled;
}

/** Which arena a buffer's SharedArrayBuffer belongs to (every view the arena hands out, and their subarrays). */
const owners = new WeakMap<ArrayBufferLike, WasmArena>();

/** The arena holding `a`, if any. */
export function arenaOf(a: ArrayBufferView): WasmArena | undefined {
  return owners.get(a.buffer);
}

export class WasmArena {
  private readonly memory: WasmMemory;
  private readonly decode: (src: number, dst: number, groups: number) => void;
  private readonly decodeGroups: Record<
    4 | 8,
    (codes: number, scales: number, zeros: number, dst: number, g: number, c: number) => void
  >;
  private top = 0;
  private readonly free = new Map<number, number[]>();
  private scratchAt = -1;
  private scratchBytes = 0;

  private constructor(mod: WasmModuleObject, pages: number) {
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    const inst = new WebAssembly.Instance(mod, { env: { mem: this.memory } });
    this.decode = inst.exports.bf16 as (src: number, dst: number, groups: number) => void;
    this.decodeGroups = { 4: inst.exports.q4, 8: inst.exports.q8 } as WasmArena['decodeGroups'];
    owners.set(this.memory.buffer, this);
  }

  /**
   * An arena of `bytes` (at most 4 GB), or undefined where this runtime lacks WebAssembly SIMD or will not reserve
   * the memory.
   */
  static create(bytes: number): WasmArena | undefined {
    const mod = wasmModule();
    if (!mod) return undefined;
    try {
      return new WasmArena(mod, Math.max(1, Math.min(MAX_PAGES, Math.ceil(bytes / PAGE))));
    } catch {
      return undefined;
    }
  }

  /** `bytes` bytes (a multiple of 16) at a fresh or reused address; -1 when the memory is full. */
  private block(bytes: number): number {
    const reuse = this.free.get(bytes)?.pop();
    if (reuse !== undefined) return reuse;
    if (this.top + bytes > this.memory.buffer.byteLength) return -1;
    const at = this.top;
    this.top += bytes;
    return at;
  }

  private release(at: number, bytes: number): void {
    const list = this.free.get(bytes);
    if (list) list.push(at);
    else this.free.set(bytes, [at]);
  }

  /** n float32 values in the arena (contents undefined), or undefined when it is full. */
  alloc(n: number): Float32Array | undefined {
    const at = this.block(roundUp(n * 4));
    return at < 0 ? undefined : new Float32Array(this.memory.buffer, at, n);
  }

  /** Gives back a buffer that alloc() returned; it will be handed out again. */
  dispose(a: Float32Array): void {
    if (arenaOf(a) === this) this.release(a.byteOffset, roundUp(a.length * 4));
  }

  /** A byte buffer in the arena for the raw bytes to decode (valid until the next call), or undefined. */
  scratch(bytes: number): Uint8Array | undefined {
    if (bytes > this.scratchBytes) {
      if (this.scratchAt >= 0) this.release(this.scratchAt, this.scratchBytes);
      const size = roundUp(bytes);
      const at = this.block(size);
      if (at < 0) return undefined;
      [this.scratchAt, this.scratchBytes] = [at, size];
    }
    return new Uint8Array(this.memory.buffer, this.scratchAt, bytes);
  }

  /**
   * Decodes bf16 `src` into float32 `dst` (as many values), both in this arena: eight values per SIMD step, the
   * remainder here. Returns dst.
   */
  bf16(src: Uint8Array, dst: Float32Array): Float32Array {
    const n = dst.length;
    const groups = n >> 3;
    if (groups > 0) this.decode(src.byteOffset, dst.byteOffset, groups);
    const o32 = new Uint32Array(dst.buffer, dst.byteOffset, n);
    for (let i = groups << 3; i < n; i++) o32[i] = (src[2 * i] | (src[2 * i + 1] << 8)) << 16;
    return dst;
  }

  /**
   * 4- or 8-bit codes into float32: `groups` groups of `groupSize` values (a multiple of 32 for 4 bits, of 16 for
   * 8), group g's values (code − zeros[g])·scales[g]; codes, scales, zeros and dst all in this arena. Returns dst.
   */
  groups(
    bits: 4 | 8,
    codes: Uint8Array,
    scales: Float32Array,
    zeros: Float32Array,
    dst: Float32Array,
    groupSize: number,
  ): Float32Array {
    const groups = scales.length;
    const run = bits === 4 ? 32 : 16;
    if (groupSize % run !== 0 || zeros.length !== groups || dst.length !== groups * groupSize)
      throw new RangeError(`${bits}-bit groups: ${groups} groups of ${groupSize} do not fit ${dst.length} values`);
    if (groups > 0)
      this.decodeGroups[bits](
        codes.byteOffset,
        scales.byteOffset,
        zeros.byteOffset,
        dst.byteOffset,
        groups,
        groupSize / run,
      );
    return dst;
  }
}

function roundUp(bytes: number): number {
  return Math.ceil(bytes / 16) * 16;
}
