// The order test files start in. On a clean clone jest has no timings of earlier runs and starts the largest files
// first, and the slowest files here are short ones that run whole commands: started last, one of them ran alone on
// one worker for the last minutes of the suite. These start first, slowest first (file times measured by .ci/run);
// the rest follow in jest's own order (earlier timings when it has them, else size).
const Sequencer = require('@jest/test-sequencer').default;

const SLOW_FIRST = [
  'test/gguf/gguf.test.ts',
  'test/reference/compressed.test.ts',
  'test/commands/quantize.test.ts',
  'test/reliability/determinism.test.ts',
  'test/eval/fixture2-quality.test.ts',
  'test/prune/quality.test.ts',
  'test/gguf/gguf-eval.test.ts',
  'test/quant/router-align.test.ts',
];

class SlowFirst extends Sequencer {
  sort(tests) {
    const rank = (t) => {
      const i = SLOW_FIRST.findIndex((f) => t.path.endsWith(f));
      return i < 0 ? SLOW_FIRST.length : i;
    };
    const rest = super.sort(tests.filter((t) => rank(t) === SLOW_FIRST.length));
    return [...tests.filter((t) => rank(t) < SLOW_FIRST.length).sort((a, b) => rank(a) - rank(b)), ...rest];
  }
}

module.exports = SlowFirst;
