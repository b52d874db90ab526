/**
 * Crash safety (issue 11): `moe quantize` and `moe prune` are SIGKILLed at every named write phase (src/io/crash.ts,
 * MOE_CRASH_AT), writing a new destination and replacing one with --force. The destination never holds a partial
 * model: it is absent, or whole and equal to a reference run. A SIGKILLed run cannot remove its temporary folder; the
 * re-run removes it (src/io/output.ts removeStaleTemps) and nothing else beside the destination, and writes the
 * reference bytes.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CRASH_PHASES, CrashPhase } from '../../src/io/crash';
import { removeStaleTemps } from '../../src/io/output';
import { verifyCheckpoint } from '../../src/model/verify';
import { listDir, ROOT, runMain, tmpDir } from '../helpers';

const BIN = path.join(ROOT, 'bin', 'moe.js');

function hashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of listDir(dir))
    out[f] = createHash('sha256')
      .update(fs.readFileSync(path.join(dir, f)))
      .digest('hex');
  return out;
}

async function ok(args: string[]): Promise<void> {
  const r = await runMain(args);
  if (r.code !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
}

/** Runs the built CLI in a child process that kills itself with SIGKILL at `phase`. */
function runUntil(
  args: string[],
  phase: CrashPhase,
): { signal: NodeJS.Signals | null; code: number | null; stderr: string } {
  const env = { ...process.env, CI: 'true', MOE_CRASH_AT: phase };
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, env, encoding: 'utf8' });
  return { signal: r.signal, code: r.status, stderr: r.stderr };
}

let work: string;
let model: string;
let stats: string;
const COMMANDS: Record<
  'quantize' | 'prune',
  { args: (dest: string) => string[]; reference?: Record<string, string>; refDir?: string }
> = {
  // --max-shard-size: several shards, so a kill can land between two of them.
  quantize: {
    args: (dest) => ['quantize', model, '--bits', '4', '--method', 'rtn', '--max-shard-size', '60KB', '-o', dest],
  },
  prune: { args: (dest) => ['prune', model, '--method', 'frequency', '--keep', '6', '--stats', stats, '-o', dest] },
};

beforeAll(async () => {
  work = tmpDir('moe-crash-');
  model = path.join(work, 'model');
  stats = path.join(work, 'stats');
  await ok(['synth', '--arch', 'qwen3_moe', '-o', model]);
  const ids = Array.from({ length: 8 }, (_, i) => Array.from({ length: 64 }, (_, j) => (i * 31 + j * 7) % 128));
  fs.writeFileSync(path.join(work, 'ids.json'), JSON.stringify(ids));
  await ok(['calibrate', model, '--data', path.join(work, 'ids.json'), '--seq-len', '64', '-o', stats]);
  // A reference run of each command: every complete output must equal it byte for byte. It writes where the trials
  // write (records name their output), and a copy is kept for the trials that replace a folder.
  for (const [name, c] of Object.entries(COMMANDS)) {
    const dest = path.join(work, `${name}-trials`, 'out');
    fs.mkdirSync(path.dirname(dest));
    await ok(c.args(dest));
    c.reference = hashes(dest);
    c.refDir = path.join(work, `${name}-reference`);
    fs.renameSync(dest, c.refDir);
  }
}, 60_000);

test('the reference outputs: quantize writes several shards (so after-first-shard is reached), prune one', () => {
  expect(Object.keys(COMMANDS.quantize.reference!)).toEqual(
    expect.arrayContaining(['config.json', 'model.safetensors.index.json']),
  );
  expect(
    Object.keys(COMMANDS.quantize.reference!).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length,
  ).toBeGreaterThan(1);
  expect(Object.keys(COMMANDS.prune.reference!)).toEqual(expect.arrayContaining(['config.json', 'model.safetensors']));
});

/** Every phase a run reaches: the renames' phases only when it replaces a folder, between shards only with several. */
const TRIALS: ['quantize' | 'prune', CrashPhase, boolean][] = [];
for (const name of ['quantize', 'prune'] as const) {
  for (const replace of [false, true]) {
    for (const phase of CRASH_PHASES) {
      if (!replace && (phase === 'between-renames' || phase === 'before-remove-old')) continue;
      if (name === 'prune' && phase === 'after-first-shard') continue;
      TRIALS.push([name, phase, replace]);
    }
  }
}

test.each(TRIALS)(
  '%s killed at %s (replacing a folder: %s): the destination is untouched, absent or whole; a re-run succeeds',
  async (name, phase, replace) => {
    const c = COMMANDS[name];
    // Every trial writes to the reference run's path (records name their output), in a folder emptied first.
    const dir = path.join(work, `${name}-trials`);
    const dest = path.join(dir, 'out');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir);
    if (replace) fs.cpSync(c.refDir!, dest, { recursive: true });
    // A folder beside the destination that moe did not make, and one named like moe's but owned by a live process (this
    // one).
    const foreign = ['.out.moe-tmp-x', `.out.moe-tmp-${process.pid}-0badcafe`].sort();
    for (const f of foreign) fs.mkdirSync(path.join(dir, f));

    const end = runUntil([...c.args(dest), ...(replace ? ['--force'] : [])], phase);
    // Killed at the phase (so it was reached), with no error before it.
    expect({ signal: end.signal, errors: end.stderr.split('\n').filter((l) => l.startsWith('moe:')) }).toEqual({
      signal: 'SIGKILL',
      errors: [],
    });
    // A SIGKILLed run leaves its temporary folder (or the replaced folder, moved aside) for the re-run to remove.
    const stale = listDir(dir).filter((n) => /^\.out\.moe-tmp-\d+-[0-9a-f]{8}(-old)?$/.test(n) && !foreign.includes(n));
    expect(stale.length).toBeGreaterThan(0);
    if (!replace || phase === 'between-renames') {
      expect(fs.existsSync(dest)).toBe(false);
    } else {
      // Never partial: the destination is the folder it replaced (or, after the rename, the new one): whole, the
      // reference.
      expect(verifyCheckpoint(dest).ok).toBe(true);
      expect(hashes(dest)).toEqual(c.reference);
    }

    const rerun = await runMain([...c.args(dest), ...(fs.existsSync(dest) ? ['--force'] : [])]);
    expect({ code: rerun.code, stderr: rerun.stderr.split('\n').filter((l) => l.startsWith('moe:')) }).toEqual({
      code: 0,
      stderr: [],
    });
    expect(verifyCheckpoint(dest).ok).toBe(true);
    expect(hashes(dest)).toEqual(c.reference);
    // The re-run removed the dead run's temporary folders and left the others alone.
    expect(listDir(dir)).toEqual([...foreign, 'out'].sort());
  },
);

test('every named phase is covered by a trial', () => {
  expect([...new Set(TRIALS.map(([, phase]) => phase))].sort()).toEqual([...CRASH_PHASES].sort());
});

test("a re-run removes only moe's temporary folders for that destination whose process is gone", () => {
  const dir = tmpDir();
  const dead = spawnSync(process.execPath, ['-e', '']).pid;
  const mine = [`.out.moe-tmp-${dead}-0123abcd`, `.out.moe-tmp-${dead}-0123abcd-old`];
  const kept = [
    `.out.moe-tmp-${process.pid}-0123abcd`,
    `.other.moe-tmp-${dead}-0123abcd`,
    `.out.moe-tmp-${dead}-zzzz`,
    `.out.moe-tmp-${dead}-0123abcd-new`,
    'out.moe-tmp-1-0123abcd',
  ];
  for (const d of [...mine, ...kept]) fs.mkdirSync(path.join(dir, d));
  // Named like moe's, but a file and a symlink: moe made neither.
  fs.writeFileSync(path.join(dir, `.out.moe-tmp-${dead}-00000000`), 'x');
  fs.symlinkSync(path.join(dir, kept[1]), path.join(dir, `.out.moe-tmp-${dead}-11111111`));
  expect(
    removeStaleTemps(path.join(dir, 'out'))
      .map((p) => path.basename(p))
      .sort(),
  ).toEqual(mine.sort());
  expect(listDir(dir)).toEqual([...kept, `.out.moe-tmp-${dead}-00000000`, `.out.moe-tmp-${dead}-11111111`].sort());
  expect(fs.existsSync(path.join(dir, kept[1]))).toBe(true);
});
