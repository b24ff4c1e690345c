/**
 * A stand-in for src/files/scan-worker.ts in the scan pool's unit test: a workspace named
 * `stuck...` never answers (as one whose folders the session's code holds locked: the
 * thread waits in the kernel); any other answers at once with one file named after it.
 */
import { parentPort } from 'node:worker_threads';

parentPort!.on('message', (job: { dir: string }) => {
  if (job.dir.startsWith('stuck')) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  parentPort!.postMessage({ value: { files: [[`${job.dir}.txt`, '1:1:1:1']], truncated: false } });
});
