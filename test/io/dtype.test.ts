import { floatToBf16Bits, floatToHalfBits, fromFloat32, toFloat32 } from '../../src/io/dtype';

function bytesOfU16(values: number[]): Uint8Array {
  return new Uint8Array(new Uint16Array(values).buffer);
}

describe('dtype conversion', () => {
  test('BF16 decodes by shifting into the high half of a float32', () => {
    // 0x3f80 = 1.0, 0xc000 = -2.0, 0x7f80 = +inf, 0x0001 = smallest subnormal 2^-133
    const out = toFloat32(bytesOfU16([0x3f80, 0xc000, 0x7f80, 0x0001]), 'BF16');
    expect(Array.from(out)).toEqual([1, -2, Infinity, 2 ** -133]);
  });

  test('F16 decodes normals, subnormals, infinities and NaN', () => {
    const out = toFloat32(bytesOfU16([0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0xfc00, 0x7e00]), 'F16');
    expect(Array.from(out.slice(0, 6))).toEqual([1, -2, 65504, 2 ** -24, 2 ** -14, -Infinity]);
    expect(out[6]).toBeNaN();
  });

  test('F8_E4M3 (fn) and F8_E5M2 decode to the values torch gives', () => {
    // e4m3fn: 0x38 = 1.0, 0x7e = 448 (max), 0x01 = 2^-9, 0xb8 = -1, 0x7f = NaN
    const e4 = toFloat32(new Uint8Array([0x38, 0x7e, 0x01, 0xb8, 0x7f]), 'F8_E4M3');
    expect(Array.from(e4.slice(0, 4))).toEqual([1, 448, 2 ** -9, -1]);
    expect(e4[4]).toBeNaN();
    // e5m2: 0x3c = 1.0, 0x7b = 57344 (max), 0x7c = inf, 0x01 = 2^-16
    const e5 = toFloat32(new Uint8Array([0x3c, 0x7b, 0x7c, 0x01]), 'F8_E5M2');
    expect(Array.from(e5)).toEqual([1, 57344, Infinity, 2 ** -16]);
  });

  test('float32 → BF16 rounds to nearest even', () => {
    expect(floatToBf16Bits(1)).toBe(0x3f80);
    // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even (1.0)
    expect(floatToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    // 1 + 3·2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): ties to even (up)
    expect(floatToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(floatToBf16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(floatToBf16Bits(NaN) & 0x7fc0).toBe(0x7fc0);
  });

  test('float32 → F16 rounds to nearest even, handles subnormals and overflow', () => {
    expect(floatToHalfBits(1)).toBe(0x3c00);
    expect(floatToHalfBits(65504)).toBe(0x7bff);
    expect(floatToHalfBits(65520)).toBe(0x7c00); // rounds up to infinity
    expect(floatToHalfBits(2 ** -24)).toBe(0x0001);
    expect(floatToHalfBits(2 ** -26)).toBe(0x0000); // below half the smallest subnormal
    expect(floatToHalfBits(3 * 2 ** -25)).toBe(0x0002); // 1.5 × subnormal step: tie to even (2)
    expect(floatToHalfBits(1 + 2 ** -11)).toBe(0x3c00); // tie to even
    expect(floatToHalfBits(-0)).toBe(0x8000);
  });

  test('every BF16 and F16 bit pattern survives decode → encode unchanged (NaNs aside)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const bytes = new Uint8Array(all.buffer);
    for (const d of ['BF16', 'F16'] as const) {
      const back = new Uint16Array(fromFloat32(toFloat32(bytes, d), d).buffer);
      for (let i = 0; i < 65536; i++) {
        const isNaN =
          d === 'BF16' ? (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0 : (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
        if (!isNaN && back[i] !== i) throw new Error(`${d} 0x${i.toString(16)} came back as 0x${back[i].toString(16)}`);
      }
    }
  });
});

test('aligned and unaligned buffers decode alike', () => {
  const values = new Float32Array([1.5, -2.25, 3e-8, 65504]);
  const f32 = new Uint8Array(values.buffer);
  const bf16 = new Uint8Array(new Uint16Array([0x3fc0, 0xc010, 0x3300, 0x477f]).buffer);
  for (const [bytes, d] of [
    [f32, 'F32'],
    [bf16, 'BF16'],
  ] as const) {
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    expect(Array.from(toFloat32(shifted, d))).toEqual(Array.from(toFloat32(bytes, d)));
  }
});

test('BF16 decodes alike on every path (pairs of values per 32-bit load, odd counts, 2-byte offsets, into a buffer)', () => {
  const bits = [0x3f80, 0xc000, 0x7f80, 0x0001, 0x8000, 0xff80, 0x3fc0];
  const expected = bits.map((b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]);
  for (const n of [1, 2, 3, 7]) {
    const src = bytesOfU16(bits.slice(0, n));
    const atTwo = new Uint8Array(src.length + 2).subarray(2); // byteOffset % 4 === 2: one value per 16-bit load
    atTwo.set(src);
    const into = new Float32Array(n + 2).subarray(1, n + 1);
    for (const out of [toFloat32(src, 'BF16'), toFloat32(atTwo, 'BF16'), toFloat32(src, 'BF16', into)])
      expect(Array.from(out)).toEqual(expected.slice(0, n));
    expect(toFloat32(src, 'BF16', into)).toBe(into);
  }
  expect(() => toFloat32(bytesOfU16([1, 2]), 'BF16', new Float32Array(3))).toThrow(RangeError);
});
