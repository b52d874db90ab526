/** Worker thread of src/gguf/error-pool.ts: one weight's error at one type. */
import { parentPort } from 'node:worker_threads';
import type { TypeErrorJob } from './error-pool';
import { typeError } from './type-error';

parentPort!.on('message', (job: TypeErrorJob) => {
  parentPort!.postMessage({ id: job.id, error: typeError(job.w, job.rows, job.cols, job.type, job.imp) });
});
