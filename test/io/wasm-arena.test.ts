import { toFloat32 } from '../../src/io/dtype';
import { dequantizePacked } from '../../src/io/packed';
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

  test('SIMD 4-bit decoding equals dequantizePacked bit for bit (every byte value, groups of 32 and 128)', () => {
    for (const [rows, cols, gs] of [
      [3, 256, 128],
      [2, 512, 32],
    ]) {
      const ng = cols / gs;
      const codes = arena.scratch(rows * (cols / 2))!;
      for (let i = 0; i < codes.length; i++) codes[i] = (i * 97 + 13) & 255; // every byte value
      const scalesBf16 = new Uint8Array(2 * rows * ng);
      const zeros = new Uint8Array(rows * ng);
      const s32 = arena.alloc(rows * ng)!;
      const z32 = arena.alloc(rows * ng)!;
      for (let g = 0; g < rows * ng; g++) {
        const bits = 0x3c00 + g * 37; // bf16 scales around 2^-7 .. 2^-6
        [scalesBf16[2 * g], scalesBf16[2 * g + 1]] = [bits & 255, bits >> 8];
        s32[g] = toFloat32(scalesBf16.subarray(2 * g, 2 * g + 2), 'BF16')[0];
        zeros[g] = z32[g] = g % 16;
      }
      const want = dequantizePacked(codes.slice(), scalesBf16, zeros, rows, cols, 4, gs);
      const got = arena.groups(4, codes, s32, z32, arena.alloc(rows * cols)!, gs);
      expect(Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer))).toBe(true);
    }
  });

  test('SIMD 8-bit decoding equals dequantizePacked bit for bit (every byte value, groups of 16 and 128)', () => {
    for (const [rows, cols, gs] of [
      [3, 256, 128],
      [2, 64, 16],
    ]) {
      const ng = cols / gs;
      const codes = arena.scratch(rows * cols)!;
      for (let i = 0; i < codes.length; i++) codes[i] = (i * 97 + 13) & 255;
      const scalesBf16 = new Uint8Array(2 * rows * ng);
      const zeros = new Uint8Array(rows * ng);
      const s32 = arena.alloc(rows * ng)!;
      const z32 = arena.alloc(rows * ng)!;
      for (let g = 0; g < rows * ng; g++) {
        const bits = 0x3b80 + g * 41;
        [scalesBf16[2 * g], scalesBf16[2 * g + 1]] = [bits & 255, bits >> 8];
        s32[g] = toFloat32(scalesBf16.subarray(2 * g, 2 * g + 2), 'BF16')[0];
        zeros[g] = z32[g] = (g * 37) % 256;
      }
      const want = dequantizePacked(codes.slice(), scalesBf16, zeros, rows, cols, 8, gs);
      const got = arena.groups(8, codes, s32, z32, arena.alloc(rows * cols)!, gs);
      expect(Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer))).toBe(true);
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
