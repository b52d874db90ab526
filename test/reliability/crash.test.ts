/**
 * Crash safety (issue 11): `moe quantize` and `moe prune` are killed with SIGKILL at seeded random moments, 20 trials
 * each. The destination never holds a partial model (it is absent, or complete and equal to a reference run), and a
 * re-run succeeds. A SIGKILLed run cannot remove its temporary folder; the re-run removes it (src/io/output.ts
 * removeStaleTemps) and nothing else beside the destination.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { removeStaleTemps } from '../../src/io/output';
import { verifyCheckpoint } from '../../src/model/verify';
import { mulberry32 } from '../../src/util/random';
import { listDir, ROOT, runCli, tmpDir } from '../helpers';

const TRIALS = 20;
const BIN = path.join(ROOT, 'bin', 'moe.js');
/** Big enough (about 100 MB of BF16) that writing takes most of a run. */
const SYNTH = ['--arch', 'qwen3_moe', '--set', 'hidden_size=512', '--set', 'moe_intermediate_size=256', '--set', 'num_hidden_layers=4', '--set', 'num_experts=16'];

function hashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of listDir(dir)) out[f] = createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex');
  return out;
}

function ok(args: string[]): number {
  const t0 = performance.now();
  const r = runCli(args);
  if (r.code !== 0) throw new Error(`moe ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return performance.now() - t0;
}

/** Runs the CLI and SIGKILLs it after `delayMs` (if it is still running); resolves with how it ended. */
function runAndKill(args: string[], delayMs: number): Promise<{ killed: boolean; code: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, CI: 'true' }, stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ killed: signal === 'SIGKILL', code });
    });
  });
}

describe('SIGKILL while writing', () => {
  let work: string;
  let model: string;
  let stats: string;

  beforeAll(() => {
    work = tmpDir('moe-crash-');
    model = path.join(work, 'model');
    stats = path.join(work, 'stats');
    ok(['synth', ...SYNTH, '-o', model]);
    const ids = Array.from({ length: 8 }, (_, i) => Array.from({ length: 64 }, (_, j) => (i * 31 + j * 7) % 128));
    fs.writeFileSync(path.join(work, 'ids.json'), JSON.stringify(ids));
    ok(['calibrate', model, '--data', path.join(work, 'ids.json'), '--seq-len', '64', '-o', stats]);
  }, 60_000);

  test.each([
    ['quantize', 1101, (dest: string) => ['quantize', model, '--bits', '4', '--method', 'rtn', '-o', dest]],
    ['prune', 2202, (dest: string) => ['prune', model, '--method', 'frequency', '--keep', '12', '--stats', stats, '-o', dest]],
  ])('%s: the destination is absent or complete after every kill, and a re-run succeeds', async (name, seed, args) => {
    // Every trial writes to the same path (records name their output), in a folder emptied first.
    const dir = path.join(work, `${name}-trials`);
    const dest = path.join(dir, 'out');
    const fresh = () => {
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir);
    };
    // A reference run: its duration bounds the kill times, its files are what every complete output must equal.
    fresh();
    const duration = ok(args(dest));
    const reference = hashes(dest);
    expect(Object.keys(reference)).toContain('config.json');
    const random = mulberry32(seed); // seeded, so a failing trial can be replayed
    let killedWithTemp = 0;
    let complete = 0;
    for (let trial = 0; trial < TRIALS; trial++) {
      fresh();
      // A folder beside the destination that moe did not make, and one named like moe's but owned by a live process (this one).
      fs.mkdirSync(path.join(dir, '.out.moe-tmp-x'));
      fs.mkdirSync(path.join(dir, `.out.moe-tmp-${process.pid}-0badcafe`));
      const foreign = ['.out.moe-tmp-x', `.out.moe-tmp-${process.pid}-0badcafe`].sort();
      const delay = random() * duration;
      const end = await runAndKill(args(dest), delay);
      const where = `trial ${trial}, killed after ${delay.toFixed(0)} ms`;
      if (!end.killed) expect({ where, code: end.code }).toEqual({ where, code: 0 });
      const stale = listDir(dir).filter((n) => /^\.out\.moe-tmp-\d+-[0-9a-f]{8}(-old)?$/.test(n) && !foreign.includes(n));
      if (end.killed && stale.length) killedWithTemp++;
      if (fs.existsSync(dest)) {
        // Never partial: a destination that exists re-opens whole and equals the reference byte for byte.
        complete++;
        expect({ where, verify: runCli(['verify', dest]).code }).toEqual({ where, verify: 0 });
        expect({ where, files: hashes(dest) }).toEqual({ where, files: reference });
      }
      const rerun = runCli([...args(dest), ...(fs.existsSync(dest) ? ['--force'] : [])]);
      expect({ where, code: rerun.code, stderr: rerun.stderr.split('\n').filter((l) => l.startsWith('moe:')) }).toEqual({ where, code: 0, stderr: [] });
      expect(verifyCheckpoint(dest).ok).toBe(true);
      expect({ where, files: hashes(dest) }).toEqual({ where, files: reference });
      // The re-run removed the dead run's temporary folder and left the others alone.
      expect({ where, left: listDir(dir) }).toEqual({ where, left: [...foreign, 'out'].sort() });
    }
    // The kills did land mid-write: some left a temporary folder behind for the re-run to remove.
    console.log(`${name}: ${TRIALS} kills in [0, ${duration.toFixed(0)}] ms: ${killedWithTemp} left a temporary folder, ${complete} found the output complete`);
    expect(killedWithTemp).toBeGreaterThan(0);
  }, 150_000);

  test('a re-run removes only moe\'s temporary folders for that destination whose process is gone', () => {
    const dir = tmpDir();
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    const mine = [`.out.moe-tmp-${dead}-0123abcd`, `.out.moe-tmp-${dead}-0123abcd-old`];
    const kept = [`.out.moe-tmp-${process.pid}-0123abcd`, `.other.moe-tmp-${dead}-0123abcd`, `.out.moe-tmp-${dead}-zzzz`, `.out.moe-tmp-${dead}-0123abcd-new`, 'out.moe-tmp-1-0123abcd'];
    for (const d of [...mine, ...kept]) fs.mkdirSync(path.join(dir, d));
    // Named like moe's, but a file and a symlink: moe made neither.
    fs.writeFileSync(path.join(dir, `.out.moe-tmp-${dead}-00000000`), 'x');
    fs.symlinkSync(path.join(dir, kept[1]), path.join(dir, `.out.moe-tmp-${dead}-11111111`));
    expect(removeStaleTemps(path.join(dir, 'out')).map((p) => path.basename(p)).sort()).toEqual(mine.sort());
    expect(listDir(dir)).toEqual([...kept, `.out.moe-tmp-${dead}-00000000`, `.out.moe-tmp-${dead}-11111111`].sort());
    expect(fs.existsSync(path.join(dir, kept[1]))).toBe(true);
  });
});
