import { toFloat32 } from '../../src/io/dtype';
import { arenaOf, WasmArena } from '../../src/io/wasm-arena';

describe('WasmArena', () => {
  const arena = WasmArena.create(4 << 20)!;

  test('is available on this Node (WebAssembly SIMD)', () => {
    expect(arena).toBeDefined();
  });

  test('SIMD bf16 decoding equals the JS decoder on every bit pattern, with remainders of 0–7 values', () => {
    const all = new Uint16Array(65536 + 7).map((_, i) => i & 0xffff);
    for (const n of [65536, 65537, 65543, 8, 1]) {
      const bytes = new Uint8Array(all.buffer, 0, 2 * n);
      const src = arena.scratch(2 * n)!;
      src.set(bytes);
      const dst = arena.alloc(n)!;
      expect(arenaOf(dst)).toBe(arena);
      const got = new Uint32Array(arena.bf16(src, dst).buffer, dst.byteOffset, n);
      const want = new Uint32Array(toFloat32(bytes, 'BF16').buffer);
      expect(Buffer.compare(Buffer.from(got.buffer, got.byteOffset, 4 * n), Buffer.from(want.buffer))).toBe(0);
      arena.dispose(dst);
    }
  });

  test('hands a disposed block out again, and nothing once full', () => {
    const small = WasmArena.create(65536)!;
    const a = small.alloc(1000)!;
    small.dispose(a);
    const b = small.alloc(1000)!;
    expect(b.byteOffset).toBe(a.byteOffset);
    expect(small.alloc(65536 / 4)).toBeUndefined(); // 64 KB more do not fit beside b
    expect(arenaOf(new Float32Array(4))).toBeUndefined();
  });
});
