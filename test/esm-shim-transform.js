/**
 * Jest runs test files as CommonJS, and cannot load ES modules from node_modules without experimental flags. One
 * dependency is an ES module: glpk.js (its Node build, dist/glpk.js). This transform rewrites its three ESM-only
 * constructs into CommonJS equivalents so that jest can require it; Node itself loads the original (require of an
 * ES module is supported from Node 20.19).
 */
'use strict';
module.exports = {
  process(src, filename) {
    const code = src
      .replace(/import\.meta\.url/g, "require('node:url').pathToFileURL(__filename).href")
      .replace(/await import\("module"\)/g, "require('node:module')")
      .replace(
        /export\s*\{\s*(\w+)\s+as\s+default\s*\}\s*;?\s*$/,
        'module.exports = { default: $1, __esModule: true };',
      );
    if (/\bexport\b\s*\{/.test(code.slice(-200)))
      throw new Error(`esm-shim-transform: unexpected exports left in ${filename}`);
    return { code };
  },
};
