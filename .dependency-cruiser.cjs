/**
 * Import rules for src/ (`npm run lint` runs `depcruise src`; see docs in node_modules/dependency-cruiser).
 *
 * Layers, from the ground up; a module imports only from its own layer or a lower one (STYLE.md):
 *   0 base      src/errors.ts, src/version.ts, src/util/, src/ui/ (progress and parsing are used everywhere)
 *   1 io        src/io/ (stored formats: safetensors, moe-packed, GGUF headers, output folders)
 *   2 backend   src/backend/
 *   3 model     src/model/
 *   4 methods   src/calib/, src/eval/, src/quant/, src/prune/, src/merge/, src/gguf/, src/synth/
 *               (they may import each other where that makes no cycle)
 *   5 recipe    src/recipe/, src/report/
 *   6 commands  src/commands/
 *   7 entry     src/cli.ts, src/main.ts
 * `import type` counts (tsPreCompilationDeps): a type-only cycle is still two modules that cannot be read apart.
 */
const LAYERS = [
  ['base', '^src/(errors|version)\\.ts$|^src/(util|ui)/'],
  ['io', '^src/io/'],
  ['backend', '^src/backend/'],
  ['model', '^src/model/'],
  ['methods', '^src/(calib|eval|quant|prune|merge|gguf|synth)/'],
  ['recipe', '^src/(recipe|report)/'],
  ['commands', '^src/commands/'],
  ['entry', '^src/(cli|main)\\.ts$'],
];

/** One rule per layer: nothing in it imports from a layer above it. */
const layerRules = LAYERS.slice(0, -1).map(([name, path], i) => ({
  name: `layer-${name}`,
  severity: 'error',
  comment: `${name} (layer ${i}) imports only from its own layer or below: ${LAYERS.slice(0, i + 1)
    .map(([n]) => n)
    .join(', ')}`,
  from: { path },
  to: {
    path: LAYERS.slice(i + 1)
      .map(([, p]) => `(${p})`)
      .join('|'),
  },
}));

/**
 * The files that are a `moe VERB` command. A command does not import another one (shared constants and helpers
 * belong to the layer that owns them), except the orchestrators that run other commands in sequence (run, demo) and
 * the recipe loader, which derives a recipe's schema from the specs of the commands its steps run.
 * Helper modules of the commands layer (e.g. a shared option spec) are not in this list and may be imported.
 */
const VERBS = 'assemble|calibrate|convert|demo|eval|generate|inspect|merge|prune|quantize|report|run|synth|verify';
const ORCHESTRATORS = 'run|demo|recipe';

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'no import cycles, type-only imports included',
      from: {},
      to: { circular: true },
    },
    ...layerRules,
    {
      name: 'command-imports-command',
      severity: 'error',
      comment: `a command imports no other command (only the orchestrators ${ORCHESTRATORS} run or describe others); move the shared constant down`,
      from: { path: '^src/commands/', pathNot: `^src/commands/(${ORCHESTRATORS})\\.ts$` },
      to: { path: `^src/commands/(${VERBS})\\.ts$` },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      comment: 'an import that resolves to no file',
      from: {},
      to: { couldNotResolve: true },
    },
    {
      name: 'src-not-to-dev-folders',
      severity: 'error',
      comment: 'src is what ships: it does not import tests, benches or dev scripts',
      from: { path: '^src/' },
      to: { path: '^(test|bench|scripts)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    // node: built-ins and the packages in node_modules resolve; everything else must too.
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
