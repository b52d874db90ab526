/**
 * Progress on a terminal, through a pseudo-terminal (util-linux `script`): one bar for the whole command with an
 * overall ETA (`eta --` before the first estimate) and the current phase below it, units on every count, layers
 * numbered from 0 as in the tensor names, the tokenizing line before the tokenizer runs, and prune/merge writes
 * that end at 100% of the bytes written. The ETA arithmetic and the plain (non-TTY) lines are checked in-process.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { createContext, estimateSeconds, formatAmount, formatBytes, layerLabel } from '../../src/ui/progress';
import { rawHeader, ROOT, tmpDir } from '../helpers';

const SCRIPT = '/usr/bin/script';
const HAS_SCRIPT = fs.existsSync(SCRIPT);
const MODEL = path.join(ROOT, 'fixtures', 'tiny-moe');
const EVAL_TXT = path.join(ROOT, 'fixtures', 'text', 'eval.txt');

interface PtyRun {
  code: number;
  /** Every line drawn, in order: ANSI escapes removed, split at carriage returns, newlines and cursor moves. */
  frames: string[];
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Runs moe with stdout and stderr on a pseudo-terminal of 100 columns, without CI set (CI forces plain lines). */
function pty(args: string[]): PtyRun {
  const env: NodeJS.ProcessEnv = { ...process.env, TERM: 'xterm', COLUMNS: '100' };
  delete env.CI;
  const cmd = `stty cols 100 rows 40; exec ${quote(process.execPath)} ${quote(path.join(ROOT, 'bin', 'moe.js'))} ${args.map(quote).join(' ')}`;
  const r = spawnSync(SCRIPT, ['-qfec', cmd, '/dev/null'], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
  // eslint-disable-next-line no-control-regex -- ANSI escape sequences are what the terminal output holds
  const text = (r.stdout ?? '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '\n');
  const frames = text
    .split(/[\r\n]+/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  return { code: r.status ?? -1, frames };
}

/** Lines of the whole-command bar (they start with its title) and of the phase bar (indented in the raw output). */
const topLines = (frames: string[], title: string) =>
  frames.filter((f) => f.startsWith(`${title} `) && /\d+% \|/.test(f));

function expectWholeCommandBar(frames: string[], title: string): string[] {
  const top = topLines(frames, title);
  expect(top.length).toBeGreaterThan(1);
  expect(top[0]).toMatch(/ 0% \| \d+s elapsed \| eta --$/);
  expect(top[top.length - 1]).toMatch(/ 100% \| \d+s elapsed \| done$/);
  for (const line of top) {
    expect(line).toMatch(/ \d+% \| (\d+m)?\d+s elapsed \| (eta --|eta (\d+h)?(\d+m)?\d+s|done)$/);
    // eta 0s only once everything is done
    if (/eta 0s$/.test(line)) expect(line).toMatch(/ 100% /);
  }
  expect(frames.join('\n')).not.toMatch(/NaN|Infinity|undefined|INF|NULL/);
  return top;
}

/** The tensor bytes of a checkpoint folder's weight files (what the write bar counts). */
function tensorBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce(
      (s, f) =>
        s +
        Object.values(rawHeader(path.join(dir, f)).json).reduce((a, t) => a + t.data_offsets[1] - t.data_offsets[0], 0),
      0,
    );
}

(HAS_SCRIPT ? describe : describe.skip)(
  `progress on a terminal (${HAS_SCRIPT ? SCRIPT : `skipped: ${SCRIPT} (util-linux) is not installed`})`,
  () => {
    let work: string;
    let stats: string;

    beforeAll(() => {
      work = tmpDir();
    });

    test('eval: the tokenizing line first, then one bar for the command with eta -- and the tokens below it', () => {
      const r = pty(['eval', MODEL, '--data', EVAL_TXT, '--seq-len', '128', '--max-tokens', '256']);
      expect(r.code).toBe(0);
      expect(r.frames[0]).toBe(`tokenizing eval.txt (${formatBytes(fs.statSync(EVAL_TXT).size)})…`);
      expect(r.frames[0]).toBe('tokenizing eval.txt (123 KB)…');
      expectWholeCommandBar(r.frames, 'eval tiny-moe');
      const detail = r.frames.filter((f) => f.startsWith('perplexity ') && /\d+% \|/.test(f));
      expect(detail[detail.length - 1]).toMatch(/ 100% \| 256\/256 tokens$/);
      expect(r.frames.some((f) => /^perplexity\s+\d+\.\d{4} \(loss/.test(f))).toBe(true); // the report follows the bars
    });

    test('run: the whole recipe on top with an ETA once known; layers 0-based; tokens, tensors and params below', () => {
      const recipe = path.join(work, 'r.yaml');
      fs.writeFileSync(
        recipe,
        `model: ${MODEL}\noutput: ${path.join(work, 'run')}\nsteps:\n` +
          `  - calibrate: { data: ${EVAL_TXT}, seq_len: 128, max_tokens: 512 }\n` +
          `  - quantize: { bits: 3, allocate: lp, method: rtn }\n`,
      );
      const r = pty(['run', recipe]);
      expect(r.code).toBe(0);
      stats = path.join(work, 'run', '01-calibrate');
      const top = expectWholeCommandBar(r.frames, 'run r.yaml');
      // An estimate replaces "eta --" once work is done, before the end.
      expect(top.some((l) => / eta (\d+m)?\d+s$/.test(l) && !/ 100% /.test(l))).toBe(true);
      const first = (re: RegExp) => r.frames.findIndex((f) => re.test(f));
      // The step line, then the tokenizing line, before calibrate's first layer.
      expect(first(/^== step 1 calibrate/)).toBeGreaterThanOrEqual(0);
      expect(first(/^tokenizing eval\.txt \(123 KB\)…$/)).toBeGreaterThan(first(/^== step 1 calibrate/));
      expect(first(/layer 0 of 0-2/)).toBeGreaterThan(first(/^tokenizing eval\.txt/));
      // Layers as in the tensor names (model.layers.0-2), in order, never 1-based.
      const layers = r.frames
        .map((f) => /^step 1 calibrate › layer (\d+) of 0-2 .* (\d+)\/512 tokens$/.exec(f))
        .filter(Boolean) as RegExpExecArray[];
      expect([...new Set(layers.map((m) => Number(m[1])))]).toEqual([0, 1, 2]);
      expect(r.frames.some((f) => /layer 3\b/.test(f))).toBe(false);
      // Units on every count.
      expect(r.frames.some((f) => /^step 2 quantize › measure error at [\d/]+ bits .* \d+\/\d+ tensors$/.test(f))).toBe(
        true,
      );
      expect(
        r.frames.some((f) => /^step 2 quantize › quantize \(rtn, lp\) .* 100% \| ([\d.]+[kMG]?)\/\1 params$/.test(f)),
      ).toBe(true);
    });

    test.each(['prune', 'merge'])('%s: the write bar ends at 100%% of the bytes written', (verb) => {
      expect(stats).toBeDefined();
      const out = path.join(work, verb);
      const args = ['--method', verb === 'prune' ? 'reap' : 'average'];
      const r = pty([verb, MODEL, '--stats', stats, ...args, '--keep', '4', '-o', out]);
      expect(r.code).toBe(0);
      expectWholeCommandBar(r.frames, `${verb} tiny-moe`);
      const written = formatBytes(tensorBytes(out));
      const writes = r.frames.filter((f) => /^write .*\d+% \|/.test(f));
      expect(writes[writes.length - 1]).toBe(
        writes[writes.length - 1].replace(/ \d+% \| .*$/, '') + ` 100% | ${written}/${written}`,
      );
      // The source is larger: a bar counted in source bytes would stop short of 100%.
      expect(tensorBytes(MODEL)).toBeGreaterThan(tensorBytes(out));
      const select = r.frames.filter((f) =>
        new RegExp(`^${verb === 'prune' ? 'select' : 'group'} experts .* \\d+% \\| \\d+/3 layers$`).test(f),
      );
      expect(select[select.length - 1]).toMatch(/ 100% \| 3\/3 layers$/);
    });
  },
);

/** A stream that says it is a terminal and keeps what is written. */
function fakeTerminal(): Writable & { isTTY: boolean; columns: number; text: () => string } {
  const chunks: string[] = [];
  const s = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  }) as Writable & {
    isTTY: boolean;
    columns: number;
    text: () => string;
    cursorTo: unknown;
    moveCursor: unknown;
    clearLine: unknown;
    clearScreenDown: unknown;
  };
  s.isTTY = true;
  s.columns = 100;
  // eslint-disable-next-line no-control-regex -- ANSI escape sequences are what the terminal output holds
  s.text = () => chunks.join('').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '\n');
  return s;
}

describe('progress in-process', () => {
  afterEach(() => jest.restoreAllMocks());

  test('the whole-command share is weighted by work units; eta -- until there is an estimate, then time left', () => {
    let now = 1_000_000;
    jest.spyOn(Date, 'now').mockImplementation(() => now);
    const stream = fakeTerminal();
    const ctx = createContext({ tty: true, stream });
    const task = ctx.task('job', 100);
    const a = ctx.progress('select', 10, 'layers', 20); // 20% of the work
    const lastTop = () =>
      stream
        .text()
        .split(/[\r\n]+/)
        .filter((l) => l.startsWith('job '))
        .pop()!;
    now += 100; // too early for an estimate, and nothing done
    a.tick(0);
    ctx.log('a line above the bars');
    expect(lastTop()).toMatch(/ 0% \| 0s elapsed \| eta --$/);
    for (let i = 0; i < 10; i++) a.tick();
    a.done();
    const b = ctx.progress('write', 1000, 'bytes', 80);
    now += 2000;
    b.tick(500); // 20 + 40 = 60% in 2.1 s → 1.4 s left
    ctx.log('another line');
    expect(lastTop()).toMatch(/ 60% \| 2s elapsed \| eta 2s$/);
    expect(stream.text()).toMatch(/write [█░]+ 50% \| 500 B\/1.00 KB/);
    b.done();
    task.done();
    expect(lastTop()).toMatch(/ 100% \| 2s elapsed \| done$/);
    expect(stream.text()).toContain('a line above the bars');
  });

  test('estimates and labels', () => {
    expect(estimateSeconds(0, 10)).toBeUndefined();
    expect(estimateSeconds(0.5, 0.2)).toBeUndefined(); // under a second: no estimate yet
    expect(estimateSeconds(0.25, 3)).toBeCloseTo(9);
    expect(estimateSeconds(1, 3)).toBe(0);
    expect(estimateSeconds(NaN, 3)).toBeUndefined();
    expect(layerLabel(0, 24)).toBe('layer 0 of 0-23');
    expect(formatAmount(1024.7, 4096, 'tokens')).toBe('1024/4096 tokens');
    expect(formatAmount(3.2e6, 14.8e6, 'bytes')).toBe('3.20 MB/14.8 MB');
    expect(formatAmount(1.2e6, 3.4e6, 'params')).toBe('1.20M/3.40M params');
    expect(formatAmount(7, 9, 'tensors')).toBe('7/9 tensors');
  });

  test('not a terminal: one plain line per phase with its unit and the whole command share', () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk, _enc, cb) {
        lines.push(...String(chunk).split('\n').filter(Boolean));
        cb();
      },
    });
    const ctx = createContext({ tty: false, stream });
    ctx.note('tokenizing x.txt (1.00 KB)…'); // small text: no line in CI logs
    const task = ctx.task('calibrate m', 2);
    for (let l = 0; l < 2; l++) {
      const p = ctx.progress(layerLabel(l, 2), 64, 'tokens', 1);
      p.tick(64);
      p.done();
    }
    task.done();
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^layer 0 of 0-1: 100% \(64\/64 tokens, \d+\.\d s; calibrate m 50%, eta (--|\d+s)\)$/);
    expect(lines[1]).toMatch(/^layer 1 of 0-1: 100% \(64\/64 tokens, \d+\.\d s; calibrate m 100%, eta 0s\)$/);
    for (const l of lines) expect(l).toMatch(/^[^:]+: \d+% \(/); // the shape CI log readers (and bad-input-matrix) expect
  });
});
