// Jest's node environment gives each test file its own realm, with its own Float32Array. onnxruntime-node
// builds its output arrays in Node's main realm and hands them to onnxruntime-common's Tensor constructor,
// whose `instanceof Float32Array` check then fails inside the sandbox ("A float32 tensor's data must be type
// of function Float32Array()"). Outside jest there is one realm and no such problem. This environment shares
// the main realm's ArrayBuffer and typed-array constructors with the sandbox. Use it with the docblock
// `@jest-environment ./test/backend/ort-environment.js` in any test file that runs the onnx backend.
const { TestEnvironment } = require('jest-environment-node');

const SHARED = [
  'ArrayBuffer',
  'SharedArrayBuffer',
  'DataView',
  'Int8Array',
  'Uint8Array',
  'Uint8ClampedArray',
  'Int16Array',
  'Uint16Array',
  'Int32Array',
  'Uint32Array',
  'Float32Array',
  'Float64Array',
  'BigInt64Array',
  'BigUint64Array',
];

class OrtEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    for (const name of SHARED) if (globalThis[name]) this.global[name] = globalThis[name];
  }
}

module.exports = OrtEnvironment;
