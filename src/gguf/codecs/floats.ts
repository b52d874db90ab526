/** The element types: F32 as stored, F16 and BF16 rounded to nearest even (src/io/dtype.ts). */
import { floatToBf16Bits, floatToHalfBits, halfToFloat } from '../../io/dtype';
import type { ElementCodec } from './codec';

export const F32: ElementCodec = {
  kind: 'element',
  type: 'F32',
  id: 0,
  fileType: 0,
  blockSize: 1,
  typeSize: 4,
  encode: (x, n, out) => out.set(new Uint8Array(x.buffer, x.byteOffset, n * 4)),
  decode: (bytes, n, out) => out.set(new Float32Array(bytes.slice(0, n * 4).buffer)),
};

function halves(conv: (x: number) => number) {
  return (x: Float32Array, n: number, out: Uint8Array) => {
    for (let i = 0; i < n; i++) {
      const h = conv(x[i]);
      out[2 * i] = h & 0xff;
      out[2 * i + 1] = h >> 8;
    }
  };
}

export const F16: ElementCodec = {
  kind: 'element',
  type: 'F16',
  id: 1,
  fileType: 1,
  blockSize: 1,
  typeSize: 2,
  encode: halves(floatToHalfBits),
  decode: (bytes, n, out) => {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(bytes[2 * i] | (bytes[2 * i + 1] << 8));
  },
};

export const BF16: ElementCodec = {
  kind: 'element',
  type: 'BF16',
  id: 30,
  fileType: 32,
  blockSize: 1,
  typeSize: 2,
  encode: halves(floatToBf16Bits),
  decode: (bytes, n, out) => {
    const u = new Uint32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) u[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
  },
};
