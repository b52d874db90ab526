/** Worker thread of src/quant/rtn-pool.ts: quantizes the rows it is given into the shared output buffers. */
import { parentPort } from 'node:worker_threads';
import type { RtnJob } from './rtn-pool';
import { rtnPackRows } from './rtn-packed';

parentPort!.on('message', (job: RtnJob) => {
  const bad = rtnPackRows(job.src, job.dtype, job.cols, job.r0, job.r1, job.spec, job.out);
  parentPort!.postMessage({ id: job.id, bad });
});
