/**
 * A thread of the workspace pool (scan-pool.ts): runs the work on a session's files that
 * must not run on the event loop (the session's code can hold their locks): the artifact
 * scan (scan.ts), and the small synchronous file work of WorkspaceFs (the editor's reads
 * and writes, the artifacts' small copies), each on a WorkspaceFs of the same workspace.
 * Answers { value }, or { error } with a SandboxError's code or an errno code.
 */
import { parentPort } from 'node:worker_threads';
import { scanWorkspace } from './scan.js';
import { WorkspaceFs, type Owner } from './workspace-fs.js';

export type ThreadJob =
  | { op: 'scan'; dir: string; maxEntries: number }
  | { op: 'fs'; root: string; owner: Owner | null; stagingDir: string; method: 'probe' | 'commit' | 'copySmall' | 'signature'; args: unknown[] };

async function run(job: ThreadJob): Promise<unknown> {
  if (job.op === 'scan') {
    const scan = scanWorkspace(job.dir, job.maxEntries);
    return { files: [...scan.files], truncated: scan.truncated };
  }
  const fs = new WorkspaceFs(job.root, job.owner, job.stagingDir);
  return fs.onThread(job.method, job.args);
}

parentPort!.on('message', (job: ThreadJob) => {
  run(job).then(
    (value) => parentPort!.postMessage({ value }),
    (e: unknown) => {
      const err = e as { name?: string; code?: string; message?: string };
      parentPort!.postMessage({ error: { code: err?.code, message: String(err?.message ?? e), sandbox: err?.name === 'SandboxError' } });
    },
  );
});
