/**
 * The hidden states of every calibration batch between layers: kept in memory when they fit the budget,
 * otherwise spilled to one temporary file (one slot per batch, positioned reads and writes).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export class HiddenStore {
  private readonly mem: (Float32Array | undefined)[] = [];
  private readonly offsets: number[] = [];
  private fd?: number;
  private file?: string;
  readonly spilled: boolean;

  constructor(
    /** Float count of each batch's hidden states. */
    readonly sizes: number[],
    budgetBytes: number,
    dir = os.tmpdir(),
  ) {
    const total = sizes.reduce((s, n) => s + n * 4, 0);
    this.spilled = total > budgetBytes;
    if (this.spilled) {
      this.file = path.join(dir, `moe-hidden-${process.pid}-${Date.now()}.f32`);
      this.fd = fs.openSync(this.file, 'w+');
      let at = 0;
      for (const n of sizes) {
        this.offsets.push(at);
        at += n * 4;
      }
    }
  }

  put(batch: number, h: Float32Array): void {
    if (this.fd === undefined) {
      this.mem[batch] = h;
      return;
    }
    const bytes = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    let done = 0;
    while (done < bytes.length)
      done += fs.writeSync(this.fd, bytes, done, bytes.length - done, this.offsets[batch] + done);
  }

  get(batch: number): Float32Array {
    if (this.fd === undefined) return this.mem[batch]!;
    const out = new Float32Array(this.sizes[batch]);
    const bytes = new Uint8Array(out.buffer);
    let done = 0;
    while (done < bytes.length) {
      const n = fs.readSync(this.fd, bytes, done, bytes.length - done, this.offsets[batch] + done);
      if (n === 0) throw new Error('hidden-state spill file ended early');
      done += n;
    }
    return out;
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      fs.rmSync(this.file!, { force: true });
      this.fd = undefined;
    }
  }
}
