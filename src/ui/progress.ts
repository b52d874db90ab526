/**
 * Progress and logs, always on stderr so `--json` keeps stdout clean.
 *
 * A command declares its whole work once (`ctx.task(title, weight)`, weight in any work unit: bytes, tokens × layers,
 * ...) and spends it in phases (`ctx.progress(label, total, unit, weight)`), each counted in its own unit.
 * On a TTY: two cli-progress bars, the whole command on top (its share of the declared weight done, elapsed time
 * and an overall ETA, `eta --` until there is a first estimate) and the current phase below it with its count and
 * unit. A task opened while another one has a phase running (a step of `moe run`) is a part of that phase: the top
 * bar stays the whole command. Otherwise (CI logs, `--json`, `CI` set, TERM=dumb) one plain line per phase, at most
 * every `PLAIN_EVERY_MS` plus the last one, naming the whole command's share when a task was declared.
 *
 * Layers are numbered from 0 everywhere, as in the tensor names: `model.layers.3` is "layer 3 of 0-23".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MultiBar } from 'cli-progress';

const PLAIN_EVERY_MS = 2000;
/** Fastest redraw from tick(): code that never yields to the event loop (a synchronous write) still animates. */
const REDRAW_EVERY_MS = 100;
const BAR_WIDTH = 30;
const BAR_MIN = 8;
/** In plain mode, text at least this large gets a line before it is tokenized (about 20 s at 200 KB/s). */
const PLAIN_TOKENIZE_NOTE_BYTES = 4e6;

export type Unit = 'bytes' | 'tokens' | 'tensors' | 'layers' | 'params' | 'steps' | 'items';

export interface Progress {
  /** Advances by `n` units (bytes, tensors, tokens...). */
  tick(n?: number): void;
  done(): void;
}

export interface Task {
  done(): void;
}

export interface Context {
  log(msg: string): void;
  warn(msg: string): void;
  /**
   * A line shown before a long step that cannot report progress (tokenizing); on a TTY always, in plain mode when
   * `plain`.
   */
  note(msg: string, opts?: { plain?: boolean }): void;
  /** Declares the whole command (or, inside a running phase, that phase's work): `weight` work units in all. */
  task(title: string, weight: number): Task;
  /**
   * A phase of the open task, counted in `unit`, worth `weight` of the task's work units (default: `total`).
   * With no open task, a task of its own.
   */
  progress(label: string, total: number, unit?: Unit, weight?: number): Progress;
  debug: boolean;
}

export interface ContextOptions {
  debug?: boolean;
  quiet?: boolean;
  tty?: boolean;
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return i === 0 ? `${Math.floor(n)} B` : `${n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2)} ${units[i]}`;
}

/** A layer as progress text and logs name it: 0-based like the tensor names, with the range. */
export function layerLabel(layer: number, layers: number): string {
  return `layer ${layer} of 0-${layers - 1}`;
}

/** 12s, 3m05s, 2h07m. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function si(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.floor(n));
}

/** "3.20 MB/14.8 MB", "1024/4096 tokens", "1.20M/3.40M params". */
export function formatAmount(value: number, total: number, unit: Unit): string {
  const v = Math.min(value, total);
  if (unit === 'bytes') return `${formatBytes(v)}/${formatBytes(total)}`;
  if (unit === 'params') return `${si(v)}/${si(total)} params`;
  return `${Math.floor(v)}/${total}${unit === 'items' ? '' : ` ${unit}`}`;
}

interface PhaseState {
  label: string;
  total: number;
  unit: Unit;
  weight: number;
  value: number;
  started: number;
  /** A task opened while this phase runs (a command run by `moe run`). */
  child?: TaskState;
}

interface TaskState {
  title: string;
  weight: number;
  spent: number;
  started: number;
  phase?: PhaseState;
  /** Opened implicitly by a phase with no task around it: closes with that phase. */
  implicit: boolean;
  parent?: PhaseState;
  /** The parent had no running phase: this one was opened for the task (worth nothing) and ends with it. */
  ownParent?: TaskState;
  closed?: boolean;
}

function phaseFraction(p: PhaseState): number {
  if (p.child) return taskFraction(p.child);
  return p.total > 0 ? Math.min(1, p.value / p.total) : 1;
}

function taskFraction(t: TaskState): number {
  if (t.closed) return 1;
  const f =
    t.weight > 0
      ? (t.spent + (t.phase ? t.phase.weight * phaseFraction(t.phase) : 0)) / t.weight
      : t.phase
        ? phaseFraction(t.phase)
        : 0;
  return Math.min(1, f);
}

/** Less time than this tells too little to extrapolate from. */
const MIN_ETA_ELAPSED_SECONDS = 1;

/** Time left, by the share done so far; undefined before there is a first estimate (shown as `eta --`). */
export function estimateSeconds(fraction: number, elapsedSeconds: number): number | undefined {
  if (fraction >= 1) return 0;
  if (!(fraction > 0) || !(elapsedSeconds >= MIN_ETA_ELAPSED_SECONDS)) return undefined;
  const left = (elapsedSeconds * (1 - fraction)) / fraction;
  return Number.isFinite(left) ? left : undefined;
}

function etaText(t: TaskState): string {
  if (t.closed) return 'done';
  const eta = estimateSeconds(taskFraction(t), (Date.now() - t.started) / 1000);
  // Rounded up: "eta 0s" only when nothing is left.
  return eta === undefined ? 'eta --' : `eta ${formatDuration(Math.ceil(eta))}`;
}

/** The innermost running phase, and the labels leading to it ("step 2 prune › write"). */
function innermost(t: TaskState): { phase?: PhaseState; path: string[] } {
  const path: string[] = [];
  let phase: PhaseState | undefined;
  let cur: TaskState | undefined = t;
  while (cur?.phase) {
    phase = cur.phase;
    path.push(phase.label);
    cur = phase.child;
  }
  return { phase, path };
}

/** `head [██░░] tail`, the bar as wide as the terminal leaves room for (BAR_MIN..BAR_WIDTH). */
function barLine(head: string, f: number, tail: string, maxWidth: number): string {
  const room = maxWidth > 0 ? maxWidth - 1 - head.length - tail.length - 2 : BAR_WIDTH;
  const width = Math.max(BAR_MIN, Math.min(BAR_WIDTH, room));
  const full = Math.round(f * width);
  return fit(`${head} ${'\u2588'.repeat(full)}${'\u2591'.repeat(width - full)} ${tail}`, maxWidth);
}

const pct = (f: number) => `${Math.floor(100 * f)}%`;
const fit = (s: string, width: number) => (width > 0 && s.length >= width ? s.slice(0, width - 1) : s);

/** Every live set of bars in the process, so main can stop them before it prints an error. */
const live = new Set<() => void>();

/** Stops any bars still drawn (main calls it before printing an error or on a signal). */
export function stopProgress(): void {
  for (const stop of [...live]) stop();
}

/** The two bars on a TTY: the whole command on top, the current phase below. */
class TtyView {
  private multi: MultiBar;
  private lastDraw = 0;
  private readonly stopFn = () => this.stop();

  constructor(
    stream: NodeJS.WritableStream,
    private root: TaskState,
  ) {
    this.multi = new MultiBar({ stream, hideCursor: true, clearOnComplete: false, linewrap: false, fps: 10 });
    // cli-progress redraws on a timer; it must not keep the process alive after a failed command.
    const unref = () => (this.multi as unknown as { timer?: NodeJS.Timeout }).timer?.unref?.();
    this.multi.on('start', unref);
    this.multi.on('update-post', unref);
    this.multi.create(1, 0, {}, { format: (_o, params) => this.top(params.maxWidth) });
    if (!root.implicit) this.multi.create(1, 0, {}, { format: (_o, params) => this.detail(params.maxWidth) });
    live.add(this.stopFn);
  }

  private top(maxWidth: number): string {
    const t = this.root;
    const f = taskFraction(t);
    const elapsed = formatDuration((Date.now() - t.started) / 1000);
    const amount = t.implicit && t.phase ? ` | ${formatAmount(t.phase.value, t.phase.total, t.phase.unit)}` : '';
    return barLine(t.title, f, `${pct(f)}${amount} | ${elapsed} elapsed | ${etaText(t)}`, maxWidth);
  }

  /** The last phase shown stays on the detail bar between phases and at the end. */
  private shown = '  starting…';

  private detail(maxWidth: number): string {
    const { phase, path } = innermost(this.root);
    if (!phase) return this.shown; // between phases (and at the end) the last one stays
    const f = phaseFraction(phase);
    this.shown = barLine(
      `  ${path.join(' \u203a ')}`,
      f,
      `${pct(f)} | ${formatAmount(phase.value, phase.total, phase.unit)}`,
      maxWidth,
    );
    return this.shown;
  }

  /** Redraws now if the last drawing is older than REDRAW_EVERY_MS (or always with `force`). */
  redraw(force = false): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < REDRAW_EVERY_MS) return;
    this.lastDraw = now;
    this.multi.update();
  }

  log(line: string): void {
    this.multi.log(line + '\n');
    this.redraw(true);
  }

  stop(): void {
    if (!live.delete(this.stopFn)) return;
    this.multi.stop();
  }
}

/** What a phase's progress needs from its context: the stream, the live view, and how the phase ends. */
interface PhaseHooks {
  stream: NodeJS.WritableStream;
  /** One plain line per phase (no TTY view, not quiet). */
  plain: boolean;
  /** The TTY view while one is shown. */
  view: () => TtyView | undefined;
  /** The whole command's share after a plain line. */
  overall: () => string;
  /** Closes the phase in its task (and the task, when the phase opened it). */
  end: () => void;
}

/** The `Progress` of one phase: redraws the TTY view, or writes a plain line at most every `PLAIN_EVERY_MS`. */
function phaseProgress(p: PhaseState, h: PhaseHooks): Progress {
  let last = p.started;
  const line = () => {
    const f = phaseFraction(p);
    h.stream.write(
      `${p.label}: ${pct(f)} (${formatAmount(p.value, p.total, p.unit)}, ${((Date.now() - p.started) / 1000).toFixed(1)} s${h.overall()})\n`,
    );
  };
  let finished = false;
  return {
    tick(n = 1) {
      if (finished) return;
      p.value += n;
      const view = h.view();
      if (view) return view.redraw();
      const now = Date.now();
      if (h.plain && now - last >= PLAIN_EVERY_MS && p.value < p.total) {
        last = now;
        line();
      }
    },
    done() {
      if (finished) return;
      finished = true;
      p.value = Math.max(p.value, p.total);
      if (h.plain) line();
      h.view()?.redraw(true);
      h.end();
    },
  };
}

export function createContext(opts: ContextOptions = {}): Context {
  const stream = opts.stream ?? process.stderr;
  const tty = opts.tty ?? (!!stream.isTTY && !process.env.CI && process.env.TERM !== 'dumb');
  let root: TaskState | undefined;
  let view: TtyView | undefined;
  const out = (s: string) => (view ? view.log(s) : stream.write(s + '\n'));
  const write = (s: string) => {
    if (!opts.quiet) out(s);
  };
  /** The task new phases belong to: the innermost open one. */
  const current = (): TaskState | undefined => {
    let t = root;
    while (t?.phase?.child) t = t.phase.child;
    return t;
  };
  const redraw = () => view?.redraw();

  const openTask = (title: string, weight: number, implicit: boolean): TaskState => {
    const parent = current();
    const t: TaskState = { title, weight, spent: 0, started: Date.now(), implicit };
    if (!parent) {
      root = t;
      if (tty && !opts.quiet) view = new TtyView(stream, t);
      return t;
    }
    if (!parent.phase) {
      parent.phase = { label: title, total: 1, unit: 'steps', weight: 0, value: 0, started: t.started };
      t.ownParent = parent;
    }
    t.parent = parent.phase;
    parent.phase.child = t;
    return t;
  };
  const closeTask = (t: TaskState) => {
    if (t.closed) return;
    if (t.phase) endPhase(t, t.phase);
    t.closed = true;
    if (t.parent?.child === t) {
      t.parent.child = undefined;
      t.parent.value = Math.max(t.parent.value, t.parent.total); // its work was the task's
    }
    if (t.ownParent && t.parent && t.ownParent.phase === t.parent) endPhase(t.ownParent, t.parent);
    if (root === t) {
      root = undefined;
      view?.redraw(true);
      view?.stop();
      view = undefined;
    }
  };
  const endPhase = (t: TaskState, p: PhaseState) => {
    if (t.phase !== p) return;
    t.spent += p.weight;
    t.phase = undefined;
  };
  /** `; calibrate 17%, eta 6s` after a plain line, when the command declared its whole work. */
  const overall = () => (root && !root.implicit ? `; ${root.title} ${pct(taskFraction(root))}, ${etaText(root)}` : '');

  return {
    debug: !!opts.debug,
    log: write,
    warn: (m) => out(`moe: warning: ${m}`),
    note(msg, o = {}) {
      if (opts.quiet || (!tty && !o.plain)) return;
      out(msg);
    },
    task(title, weight) {
      const t = openTask(title, weight, false);
      redraw();
      return { done: () => closeTask(t) };
    },
    progress(label, total, unit = 'items', weight) {
      // A phase asked for while another still runs belongs to it (a command run as a step of moe run).
      const cur = current();
      const t = cur && !cur.phase ? cur : openTask(label, weight ?? total, true);
      const p: PhaseState = { label, total, unit, weight: weight ?? total, value: 0, started: Date.now() };
      t.phase = p;
      view?.redraw(true);
      return phaseProgress(p, {
        stream,
        plain: !tty && !opts.quiet,
        view: () => view,
        overall,
        end: () => {
          endPhase(t, p);
          if (t.implicit) closeTask(t);
        },
      });
    },
  };
}

/** Wraps a tokenizer factory: a line naming the file and its size comes before the tokenizer loads and runs. */
export function announceTokenizing<T>(ctx: Context, file: string, load: () => T): () => T {
  return () => {
    let bytes = 0;
    try {
      bytes = fs.statSync(file).size;
    } catch {
      // the data loader reports an unreadable file
    }
    ctx.note(`tokenizing ${path.basename(file)} (${formatBytes(bytes)})…`, {
      plain: bytes >= PLAIN_TOKENIZE_NOTE_BYTES,
    });
    return load();
  };
}
