/** @type {import('jest').Config} */
module.exports = {
  // onnxruntime-node hands back typed arrays from Node's main realm: share those constructors with every test.
  testEnvironment: '<rootDir>/test/backend/ort-environment.js',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: {
    '^.+\\.tsx?$': ['@swc/jest', { jsc: { target: 'es2022' } }],
    'glpk\\.js/dist/glpk\\.js$': '<rootDir>/test/esm-shim-transform.js',
  },
  // glpk.js is an ES module: let the shim above turn it into CommonJS for jest.
  transformIgnorePatterns: ['/node_modules/(?!glpk\\.js/)'],
  // CLI tests spawn the built entry point; build once before the suite.
  globalSetup: '<rootDir>/test/global-setup.js',
  globalTeardown: '<rootDir>/test/global-teardown.js',
  // The slowest files first, so that none of them runs alone at the end (test/sequencer.js).
  testSequencer: '<rootDir>/test/sequencer.js',
  testTimeout: 60000,
  // At least two test files at a time. jest's default is one worker fewer than the cores, so one on a 2-core machine;
  // measured there (full suite, npx jest --ci): about 650 s with one worker, 500 s with two. onnxruntime's pools do
  // not spin between runs (src/backend/onnx.ts), so two workers share the cores without starving each other.
  maxWorkers: Math.max(2, require('node:os').availableParallelism() - 1),
};
