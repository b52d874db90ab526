/**
 * RTN on every core: worker threads quantize ranges of rows of one weight at a time (src/quant/rtn-packed.ts),
 * reading its stored bytes from and writing its packed parts into SharedArrayBuffers. Each row is quantized
 * whole by one thread with the same arithmetic, so the bytes do not depend on the number of threads.
 * Under a TypeScript test runner the compiled worker does not exist; the rows are then quantized in this thread.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { DType } from '../io/dtype';
import { PackedBuffers, rtnPackRows } from './rtn-packed';
import type { QuantSpec } from './rtn';

export interface RtnJob {
  id: number;
  src: Uint8Array;
  dtype: DType;
  cols: number;
  r0: number;
  r1: number;
  spec: QuantSpec;
  out: PackedBuffers;
}

const WORKER_FILE = path.join(__dirname, 'rtn-worker.js');

export class RtnPool {
  private workers: Worker[] = [];
  private waiting = new Map<number, { resolve: (bad: number) => void; reject: (e: Error) => void }>();
  private nextId = 0;

  constructor(readonly threads: number) {
    if (threads > 1 && fs.existsSync(WORKER_FILE)) {
      for (let i = 0; i < threads; i++) {
        const w = new Worker(WORKER_FILE);
        w.on('message', (m: { id: number; bad: number }) => {
          const p = this.waiting.get(m.id);
          this.waiting.delete(m.id);
          p?.resolve(m.bad);
        });
        w.on('error', (e) => {
          for (const p of this.waiting.values()) p.reject(e);
          this.waiting.clear();
        });
        this.workers.push(w);
      }
    }
  }

  /**
   * Buffers for weights of up to `maxBytes` stored bytes and packed parts of up to the given sizes, shared with the
   * workers when there are any. The caller reuses them weight after weight (views of the sizes it needs): a
   * worker's copy of a view keeps its buffer alive until that worker collects garbage, which, allocating almost
   * nothing, it seldom does, so fresh buffers per weight would pile up.
   */
  slot(
    maxBytes: number,
    parts: { qweight: number; scales: number; qzeros: number },
  ): { src: Uint8Array; out: PackedBuffers } {
    const make = (n: number) => new Uint8Array(this.workers.length ? new SharedArrayBuffer(n) : new ArrayBuffer(n));
    return {
      src: make(maxBytes),
      out: { qweight: make(parts.qweight), scales: make(parts.scales), qzeros: make(parts.qzeros) },
    };
  }

  /**
   * Quantizes a [rows, cols] weight held as `dtype` bytes in `src` into `out` (both from slot(), every byte of the
   * parts' views is written). Resolves to −1, or the flat index of the first non-finite weight.
   */
  async quantize(
    src: Uint8Array,
    dtype: DType,
    rows: number,
    cols: number,
    spec: QuantSpec,
    out: PackedBuffers,
  ): Promise<number> {
    if (this.workers.length === 0) return rtnPackRows(src, dtype, cols, 0, rows, spec, out);
    const n = this.workers.length;
    const jobs: Promise<number>[] = [];
    for (let i = 0; i < n; i++) {
      const r0 = Math.floor((rows * i) / n);
      const r1 = Math.floor((rows * (i + 1)) / n);
      if (r0 === r1) continue;
      const id = this.nextId++;
      jobs.push(new Promise<number>((resolve, reject) => this.waiting.set(id, { resolve, reject })));
      this.workers[i].postMessage({ id, src, dtype, cols, r0, r1, spec, out } satisfies RtnJob);
    }
    const bads = (await Promise.all(jobs)).filter((b) => b >= 0);
    return bads.length ? Math.min(...bads) : -1;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
