/**
 * The GGUF allocation's error measurement on every core: each (weight, type) pair of the menu is one job, run whole
 * by one worker thread with the same arithmetic as in this thread (src/gguf/type-error.ts), so the errors, and the
 * types the LP chooses from them, do not depend on the number of threads. The weight and its imatrix are shared
 * with the workers (SharedArrayBuffer), not copied. Under a TypeScript test runner the compiled worker does not
 * exist; the errors are then measured in this thread.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { GgmlType } from './quants';
import { typeError } from './type-error';

export interface TypeErrorJob {
  id: number;
  w: Float32Array;
  rows: number;
  cols: number;
  type: GgmlType;
  imp?: Float64Array;
}

const WORKER_FILE = path.join(__dirname, 'error-worker.js');

interface Slot {
  worker: Worker;
  pending: number;
}

export class TypeErrorPool {
  private slots: Slot[] = [];
  private waiting = new Map<number, { resolve: (e: number) => void; reject: (e: Error) => void; slot: Slot }>();
  private nextId = 0;

  constructor(threads: number) {
    if (threads > 1 && fs.existsSync(WORKER_FILE)) {
      for (let i = 0; i < threads; i++) {
        const slot: Slot = { worker: new Worker(WORKER_FILE), pending: 0 };
        slot.worker.on('message', (m: { id: number; error: number }) => {
          const p = this.waiting.get(m.id);
          this.waiting.delete(m.id);
          if (p) {
            p.slot.pending--;
            p.resolve(m.error);
          }
        });
        slot.worker.on('error', (e) => {
          for (const p of this.waiting.values()) p.reject(e);
          this.waiting.clear();
        });
        this.slots.push(slot);
      }
    }
  }

  /** Weights worth having in flight at once: two per thread. */
  get width(): number {
    return 2 * Math.max(1, this.slots.length);
  }

  /** The error of the [rows, cols] weight `w` at each type (null: not measured, e.g. its blocks do not fit). */
  async errors(
    w: Float32Array,
    rows: number,
    cols: number,
    types: (GgmlType | null)[],
    imp?: Float64Array,
  ): Promise<number[]> {
    if (!this.slots.length) return types.map((t) => (t === null ? 0 : typeError(w, rows, cols, t, imp)));
    const ws = shared(w, Float32Array);
    const is = imp && shared(imp, Float64Array);
    return Promise.all(
      types.map((type) => {
        if (type === null) return 0;
        // The least busy worker: K-quant types cost several times what Q8_0 does.
        const slot = this.slots.reduce((a, b) => (b.pending < a.pending ? b : a));
        slot.pending++;
        const id = this.nextId++;
        const done = new Promise<number>((resolve, reject) => this.waiting.set(id, { resolve, reject, slot }));
        slot.worker.postMessage({ id, w: ws, rows, cols, type, imp: is } satisfies TypeErrorJob);
        return done;
      }),
    );
  }

  async close(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    this.slots = [];
  }
}

/** A copy of `a` in a SharedArrayBuffer (the workers read it without a copy of their own). */
function shared<T extends Float32Array | Float64Array>(
  a: T,
  Ctor: { new (b: SharedArrayBuffer): T; BYTES_PER_ELEMENT: number },
): T {
  const out = new Ctor(new SharedArrayBuffer(a.length * Ctor.BYTES_PER_ELEMENT));
  out.set(a as never);
  return out;
}
