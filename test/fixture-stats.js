// One calibration of fixtures/tiny-moe shared by the test files that need these options (instead of one each): the
// options of fixtures/reference/compressed-ppl.json (whose transformers references were made from such stats).
// test/global-setup.js writes it once under MOE_TEST_TMP and exports its folder as MOE_FIXTURE_STATS;
// test/helpers.ts fixtureStats() returns it (or calibrates when the setup did not, e.g. a filtered run).
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
/** The test files that use it: the setup calibrates only when the run includes one of them. */
const USERS = [
  'test/reference/compressed.test.ts',
  'test/commands/assemble.test.ts',
  'test/commands/quantize.test.ts',
  'test/quant/gptq-format.test.ts',
  'test/quant/awq.test.ts',
  'test/commands/quantize-awq.test.ts',
  'test/eval/tasks.test.ts',
].map((f) => path.join(ROOT, f));

function flag(args, name) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** calibrate()'s options (without output) from the reference's command-line flags. */
function fixtureCalibration() {
  const args = JSON.parse(
    fs.readFileSync(path.join(ROOT, 'fixtures', 'reference', 'compressed-ppl.json'), 'utf8'),
  ).calibrate;
  return {
    args,
    options: {
      model: path.join(ROOT, 'fixtures', 'tiny-moe'),
      data: path.join(ROOT, 'fixtures', 'text', 'calib.txt'),
      seqLen: Number(flag(args, '--seq-len')),
      maxTokens: Number(flag(args, '--max-tokens')),
      naeeTokens: Number(flag(args, '--naee-tokens')),
      hessians: args.includes('--hessians'),
    },
  };
}

module.exports = { USERS, fixtureCalibration };
