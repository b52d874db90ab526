// CLI tests spawn bin/moe.js, which runs the compiled dist/: compile once so they test the current source.
// Every test's temporary folder lives under one root that global-teardown removes.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

module.exports = async () => {
  const tsc = path.join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], {
    cwd: path.join(__dirname, '..'),
    stdio: 'inherit',
  });
  process.env.MOE_TEST_TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-jest-'));
};
