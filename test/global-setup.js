// CLI tests spawn bin/moe.js, which runs the compiled dist/: compile once so they test the current source.
// Every test's temporary folder lives under one root that global-teardown removes.
// The shared calibration of fixtures/tiny-moe (test/fixture-stats.js) is made here once, with the compiled calibrate.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { USERS, fixtureCalibration } = require('./fixture-stats');

/**
 * Whether dist/ holds a compilation of every src/ file newer than the file and than the tsconfigs (npm ci's prepare
 * step has just built it, say): then the build, about 12 s of one core before any test starts, is skipped.
 */
function builtIsCurrent(root) {
  const mtime = (f) => fs.statSync(f, { throwIfNoEntry: false })?.mtimeMs;
  const configs = Math.max(...['tsconfig.json', 'tsconfig.build.json'].map((f) => mtime(path.join(root, f))));
  const walk = (dir) =>
    fs.readdirSync(dir, { withFileTypes: true }).every((e) => {
      const file = path.join(dir, e.name);
      if (e.isDirectory()) return walk(file);
      if (!e.name.endsWith('.ts')) return true;
      const built = mtime(path.join(root, 'dist', path.relative(path.join(root, 'src'), file)).replace(/\.ts$/, '.js'));
      return built !== undefined && built >= mtime(file) && built >= configs;
    });
  return walk(path.join(root, 'src'));
}

module.exports = async (globalConfig) => {
  const root = path.join(__dirname, '..');
  if (!builtIsCurrent(root)) {
    const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
  }
  process.env.MOE_TEST_TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-jest-'));
  // Only when the run includes a test that uses it (a run of one other file does not pay for it).
  const patterns = globalConfig?.testPathPatterns?.patterns ?? [];
  const needed = patterns.length === 0 || USERS.some((f) => patterns.some((p) => new RegExp(p, 'i').test(f)));
  if (needed) {
    const { calibrate } = require('../dist/commands/calibrate');
    const { createContext } = require('../dist/ui/progress');
    const output = path.join(process.env.MOE_TEST_TMP, 'fixture-stats');
    await calibrate({ ...fixtureCalibration().options, output }, createContext({ quiet: true }));
    process.env.MOE_FIXTURE_STATS = output;
  }
};
