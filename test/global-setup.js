// CLI tests spawn bin/moe.js, which runs the compiled dist/: compile once so they test the current source.
const { execFileSync } = require('node:child_process');
const path = require('node:path');

module.exports = async () => {
  const tsc = path.join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], {
    cwd: path.join(__dirname, '..'),
    stdio: 'inherit',
  });
};
