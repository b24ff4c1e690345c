/**
 * Spill files: the complete output of a stream that went past its cap
 * (SANDBOX_RUNNER_MAX_OUTPUT_BYTES), up to SANDBOX_OUTPUT_SPILL_MAX_BYTES, saved in the
 * workspace as `.output/<call>-stdout.txt` / `-stderr.txt`. The result keeps the stream's
 * head and tail and names the file in its marker; the artifact scan lists it (the
 * top-level `.output/` folder is the one hidden folder it looks into).
 *
 * Invariants: nothing is written for a stream that fits its cap (the buffer calls the
 * sink at the first byte past it); the file is written with synchronous calls into the
 * server's own staging folder (0700, invisible to the sandbox, on the session's disk and
 * its quota), at most maxBytes, then moved into the workspace through WorkspaceFs (no
 * link is followed) and given to the session's uid. A full disk stops the spill and the
 * marker says so; the call's result is never affected otherwise.
 */
import { closeSync, constants as C, fchownSync, openSync, rmSync, writeSync } from 'node:fs';
import { randomHex } from '../ids.js';
import type { OutputSink } from '../runner/output.js';
import type { WorkspaceFs } from './workspace-fs.js';
import { resolveInside } from './paths.js';

/** The workspace folder of spill files (top level, hidden: see artifacts.ts). */
export const SPILL_DIR = '.output';

export class OutputSpill implements OutputSink {
  private fd: number | null = null;
  /** Whether the staged file may exist (it was created and not yet moved): only then is
   * there anything for discard() to remove, so a call that fit its cap costs no system call. */
  private staging = false;
  private readonly staged: string;
  /** Bytes in the file. */
  written = 0;
  /** Bytes past maxBytes (or after a failure): not in the file. */
  dropped = 0;
  /** Why the spill stopped early (a full disk), if it did. */
  failure: string | null = null;

  constructor(
    stagingDir: string,
    private readonly maxBytes: number,
    private readonly fs: WorkspaceFs,
  ) {
    this.staged = `${stagingDir}/spill-${randomHex(8)}`;
  }

  write(chunk: Buffer): void {
    if (this.failure !== null) {
      this.dropped += chunk.length;
      return;
    }
    const n = Math.min(chunk.length, this.maxBytes - this.written);
    this.dropped += chunk.length - Math.max(0, n);
    if (n <= 0) return;
    try {
      if (this.fd === null) {
        this.staging = true;
        this.fd = openSync(this.staged, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o644);
      }
      for (let off = 0; off < n;) off += writeSync(this.fd, chunk, off, n - off);
      this.written += n;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      this.failure = code === 'ENOSPC' || code === 'EDQUOT' ? "the session's disk is full" : `it could not be written (${code ?? 'error'})`;
      this.dropped += n;
    }
  }

  /** Whether the stream overflowed (the sink was written to). */
  get used(): boolean {
    return this.fd !== null || this.failure !== null;
  }

  /** Moves the file into the workspace as `.output/<name>`; returns its workspace path
   * (`/workspace/.output/<name>`), or null if there is nothing to move or it failed. */
  async commit(name: string): Promise<string | null> {
    if (this.fd === null) return null;
    const fd = this.fd;
    this.fd = null;
    try {
      if (this.fs.owner) fchownSync(fd, this.fs.owner.uid, this.fs.owner.gid);
    } finally {
      closeSync(fd);
    }
    const rel = `${SPILL_DIR}/${name}`;
    try {
      await this.fs.commit(this.staged, resolveInside(rel), rel);
      this.staging = false;
      return `/workspace/${rel}`;
    } catch (e) {
      this.failure = `it could not be moved into the workspace (${(e as Error).message})`;
      this.discard();
      return null;
    }
  }

  /** Removes the staged file (a call that ended without committing it). Idempotent. */
  discard(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
    if (!this.staging) return;
    this.staging = false;
    rmSync(this.staged, { force: true });
  }
}

/** A fresh name for one call's spill files: `<call>-stdout.txt` and `<call>-stderr.txt`. */
export function spillCallName(): string {
  return `call-${randomHex(4)}`;
}
