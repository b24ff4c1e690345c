/**
 * Artifacts: the files a call created or modified in the workspace, listed in its result
 * and kept as they were when the call ended, downloadable by file_id
 * (GET /sessions/{id}/artifacts/{file_id}) even after a later call rewrites or deletes them.
 *
 * How a change is seen: a scan records (mtime_ns, size, ino, ctime_ns) of every regular
 * file below the workspace; a call's artifacts are the files whose record differs from
 * the scan taken before it (or that are new). The scan after a call is the baseline of the
 * next one, so a call costs one scan, not two; the baseline is taken again before a call
 * when the server wrote to the workspace since (an upload, WorkspaceFs.generation), so an
 * upload is not listed as a call's file. Known limit: a file changed between calls by a
 * process that a call left running is listed with the next call. A text-editor call
 * changes only the files it writes itself: those are looked at alone (collectWritten),
 * not the whole workspace; what a process changed meanwhile goes to the next scan.
 *
 * The rule for what is looked at (one rule, documented in the README): a path with a
 * component that starts with '.' is skipped, except the top-level `.output/` folder, where
 * the server writes spill files (spill.ts) (hidden names inside it are skipped too). Links,
 * FIFOs, sockets and devices are never listed or followed.
 *
 * The workspace is hostile: the scan opens every folder relative to its parent's fd with
 * O_NOFOLLOW (through /proc/self/fd, as workspace-fs.ts), lstat()s files without following
 * them (by plain path, see scan()), and copies a file through WorkspaceFs (copySmallSync or
 * openRead: no link is followed, only a regular file is read), so only workspace files are
 * ever listed. It runs with synchronous calls on a thread of its own, never on the event
 * loop (scan.ts, scan-pool.ts: the session's code can hold its folders' locks for seconds),
 * bounded by SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES names and MAX_DEPTH folder levels (one fd
 * each); a call waits for its scan SCAN_WAIT_MS at most, and then says its files were not
 * looked at;
 * files of at most 64 KiB are copied with synchronous calls too, larger ones
 * asynchronously. Cost (bench/artifacts.ts, README "Performance"): tens of microseconds
 * for a small workspace, a few microseconds more per file, plus a copy per changed file.
 *
 * Bounds: at most SANDBOX_ARTIFACTS_MAX_FILES files and SANDBOX_ARTIFACTS_MAX_BYTES bytes
 * are kept per call, and the names of the files listed in one answer take at most
 * ANSWER_NAME_CHARS characters of its JSON (`filename` and `path`, escapes counted at their
 * six characters: a name of control bytes is six times its length), so a call that prints
 * nothing cannot make a megabytes-long answer of names (the first by path; the result's
 * stderr says what was left out). A session keeps at most SANDBOX_ARTIFACTS_KEEP_MAX
 * artifacts, SANDBOX_ARTIFACTS_KEEP_MB of them and KEEP_NAME_CHARS characters of their
 * names (each path held once), the oldest evicted first: the index the server's heap holds
 * per session is bounded by names, not only by count.
 *
 * The scan's cost per call is bounded by SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES names, a folder
 * counting FOLDER_COST names (opening and reading a folder costs the server several times
 * a file's lstat): a session that fills its workspace with files or folders makes each of
 * its calls cost at most that bound (a few milliseconds at the default), and past it the
 * scan stops and stderr says so (files past it are not listed). Copies live in the box's own `artifacts/` folder
 * (0700, not mounted in the sandbox): on the session's disk, so they count against its
 * quota (a full disk stops the copying and says so), and they go with the session.
 */
import { promises as fsp, rmSync, writeFileSync } from 'node:fs';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { randomHex } from '../ids.js';
import { resolveInside } from './paths.js';
import { SMALL_IO_BYTES, type WorkspaceFs, type Written } from './workspace-fs.js';
import { SPILL_DIR } from './spill.js';
import { FOLDER_COST, MAX_DEPTH, SCAN_MAX_NAME_BYTES, type Scan } from './scan.js';
import { SCAN_WAIT_MS, scanPool, type ScanPool } from './scan-pool.js';

export { FOLDER_COST, MAX_DEPTH, SCAN_MAX_NAME_BYTES };

/** Small files copied between two yields to the event loop. */
const COPIES_PER_TURN = 16;

/** Characters of JSON text the names (`filename` and `path`) of one answer's listed files
 * take at most: files past them are not listed in that answer and stderr says so. */
export const ANSWER_NAME_CHARS = 64 * 1024;

/** Characters of names (one path per artifact) a session's kept index holds at most, the
 * oldest evicted first. At least what one answer lists (whose paths take at most half of
 * ANSWER_NAME_CHARS), so a call's own artifacts never evict one another. */
export const KEEP_NAME_CHARS = 128 * 1024;

/** JSON characters of an entry's two names: `filename` and `path` (/workspace/ + filename). */
export function entryNameChars(path: string): number {
  return 2 * JSON.stringify(path).length + '/workspace/'.length;
}

/** A 53-bit hash (cyrb53) of a path and its signature: what the baseline keeps. */
function fingerprint(path: string, sig: string): number {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  const text = `${path}\0${sig}`;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

function fingerprints(files: Map<string, string>): Set<number> {
  const set = new Set<number>();
  for (const [path, sig] of files) set.add(fingerprint(path, sig));
  return set;
}

export interface ArtifactLimits {
  maxFiles: number;
  maxBytes: number;
  scanMaxEntries: number;
  keepMax: number;
  keepBytes: number;
}

/** One entry of a result's inner `content`: contract v1's fields plus extensions. */
export interface ArtifactEntry {
  type: 'code_execution_output';
  file_id: string;
  /** Workspace-relative path (what the gateway shows the model). */
  filename: string;
  /** Extension: the same path under /workspace/. */
  path: string;
  size_bytes: number;
  mime_type: string | null;
}

/** What the index keeps per artifact: the path once (the entry is built when asked for). */
interface Kept {
  path: string;
  size: number;
}

export class ArtifactStore {
  /** Between calls only a 53-bit hash of each (path, signature): a few bytes a file, however
   * long the names (a workspace of long names would otherwise hold megabytes per session). */
  private baseline: Set<number> | null = null;
  private baselineGeneration = -1;
  /** Insertion order is age: the first is evicted first. */
  private readonly kept = new Map<string, Kept>();
  private keptBytes = 0;
  /** Characters of the kept paths (KEEP_NAME_CHARS). */
  private keptNameChars = 0;

  constructor(
    private readonly workspaceDir: string,
    /** The server-only folder of the copies (made by the box). */
    private readonly storeDir: string,
    private readonly fs: WorkspaceFs,
    private readonly limits: ArtifactLimits,
    private readonly mimeOf: (name: string) => string | null,
    /** Where the scans run (the server's pool by default); `scanKey` names this session in it. */
    private readonly scans: ScanPool = scanPool(),
    private readonly scanKey: string = workspaceDir,
  ) {}

  /** Before a call: the baseline, unless the one the last call left is still good. */
  async begin(): Promise<void> {
    if (this.baseline !== null && this.baselineGeneration === this.fs.generation) return;
    const generation = this.fs.generation;
    const scan = await this.scan();
    if (scan.truncated === 'stuck') return; // (the baseline stays as it was: collect scans again)
    this.baselineGeneration = generation;
    this.baseline = fingerprints(scan.files);
    this.added = 0;
  }

  /** After a call: copies what changed since begin() and returns its entries, with plain
   * lines for stderr about anything left out. */
  async collect(): Promise<{ files: ArtifactEntry[]; notes: string[] }> {
    const before = this.baseline ?? new Set<number>();
    const scan = await this.scan();
    if (scan.truncated === 'stuck') {
      // (the baseline stays: what changed is listed by the next call whose scan answers)
      return {
        files: [],
        notes: [`artifacts: the workspace did not answer within ${SCAN_WAIT_MS / 1000} s (a process of this session holds its folders busy); its files were not looked at`],
      };
    }
    this.baseline = fingerprints(scan.files);
    this.baselineGeneration = this.fs.generation;
    this.added = 0;
    const notes: string[] = [];
    if (scan.truncated === 'names') {
      notes.push(`artifacts: the workspace's file names add up to more than ${SCAN_MAX_NAME_BYTES} bytes; files past them were not looked at`);
    } else if (scan.truncated === 'entries') {
      notes.push(
        `artifacts: the workspace has more than ${this.limits.scanMaxEntries} names (a folder counts as ${FOLDER_COST}); files past them were not looked at (SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES)`,
      );
    } else if (scan.truncated === 'depth') {
      notes.push(`artifacts: folders nested deeper than ${MAX_DEPTH} levels were not looked at`);
    }
    const changed: string[] = [];
    for (const [path, sig] of scan.files) if (!before.has(fingerprint(path, sig))) changed.push(path);
    return this.keepChanged(changed, (path) => sizeOf(scan.files.get(path)!), notes);
  }

  /**
   * After a call that changed only files the server wrote itself (a text-editor call:
   * `written`, from WorkspaceFs.takeWritten), what begin() saw plus those files is the
   * workspace as far as this call is concerned: they are looked at alone, not the whole
   * workspace (a scan per editor call cost a few microseconds per file of the workspace).
   * A file a process left running changed meanwhile is listed by the next call that scans,
   * as between calls (the baseline does not take it in). The baseline grows by one entry
   * per written file until the next scan replaces it; past SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES
   * additions the next call scans anew.
   */
  async collectWritten(written: Written[]): Promise<{ files: ArtifactEntry[]; notes: string[] }> {
    if (this.baseline === null) return this.collect();
    const baseline = this.baseline;
    // (a path written twice: its last write)
    const last = new Map(written.map((w) => [w.path, w]));
    const sigs = new Map<string, string>();
    const contents = new Map<string, Buffer>();
    for (const [path, w] of last) {
      if (!scanned(path)) continue;
      // A small write's signature came with its rename, and its bytes are the file's: no
      // second look at the workspace (each is a trip to a workspace thread).
      const sig = w.sig !== undefined ? w.sig : await this.fs.fileSignature(resolveInside(path)).catch(() => null);
      if (sig === null || baseline.has(fingerprint(path, sig))) continue;
      sigs.set(path, sig);
      if (w.sig !== undefined && w.bytes && w.bytes.length === sizeOf(sig)) contents.set(path, w.bytes);
    }
    for (const [path, sig] of sigs) baseline.add(fingerprint(path, sig));
    this.added += sigs.size;
    if (this.added > this.limits.scanMaxEntries) this.baseline = null;
    else this.baselineGeneration = this.fs.generation;
    return this.keepChanged([...sigs.keys()], (path) => sizeOf(sigs.get(path)!), [], contents);
  }

  /** Baseline entries added by collectWritten since the last scan. */
  private added = 0;

  /** Copies the changed files (the first by path, within the per-call bounds) and returns
   * their entries, with lines for stderr about what was left out added to `notes`. */
  private async keepChanged(
    changed: string[],
    sizeOfPath: (path: string) => number,
    notes: string[],
    contents?: Map<string, Buffer>,
  ): Promise<{ files: ArtifactEntry[]; notes: string[] }> {
    if (changed.length === 0) return { files: [], notes };
    changed.sort();
    const files: ArtifactEntry[] = [];
    let bytes = 0;
    let overBytes = 0;
    let nameChars = 0;
    for (const [i, path] of changed.entries()) {
      if (i > 0 && i % COPIES_PER_TURN === 0) await yieldToLoop();
      if (files.length >= this.limits.maxFiles) {
        notes.push(`artifacts: ${changed.length} files changed; the first ${this.limits.maxFiles} are listed (SANDBOX_ARTIFACTS_MAX_FILES)`);
        break;
      }
      // Checked before the copy: a file that is not listed is not kept either.
      const names = entryNameChars(path);
      if (nameChars + names > ANSWER_NAME_CHARS) {
        notes.push(
          `artifacts: ${changed.length} files changed; the first ${files.length} are listed: their names fill the ${ANSWER_NAME_CHARS} characters an answer gives to file names (shorter names fit more)`,
        );
        break;
      }
      const size = sizeOfPath(path);
      if (bytes + size > this.limits.maxBytes || size > this.limits.keepBytes) {
        overBytes++;
        continue;
      }
      nameChars += names;
      const copied = await this.keep(path, size, contents?.get(path));
      if (copied === 'disk full') {
        notes.push(`artifacts: the session's disk is full; ${changed.length - i} changed files were not kept (SANDBOX_WORKSPACE_MB)`);
        break;
      }
      if (copied === null) {
        nameChars -= names;
        continue; // gone, or no longer a regular file, since the scan
      }
      bytes += copied.size_bytes;
      files.push(copied);
    }
    if (overBytes > 0) notes.push(`artifacts: ${overBytes} changed files were not kept: past ${this.limits.maxBytes} bytes per call (SANDBOX_ARTIFACTS_MAX_BYTES)`);
    return { files, notes };
  }

  /** The kept copy of an artifact of this session, if it still exists. */
  get(fileId: string): { file: string; entry: ArtifactEntry } | undefined {
    const k = this.kept.get(fileId);
    return k && { file: this.fileOf(fileId), entry: this.entryOf(fileId, k) };
  }

  /** Artifacts kept, their bytes and the characters of their paths (for tests and
   * /health-style figures). */
  get stats(): { count: number; bytes: number; nameChars: number } {
    return { count: this.kept.size, bytes: this.keptBytes, nameChars: this.keptNameChars };
  }

  private fileOf(fileId: string): string {
    return `${this.storeDir}/${fileId}`;
  }

  private entryOf(fileId: string, k: Kept): ArtifactEntry {
    return {
      type: 'code_execution_output',
      file_id: fileId,
      filename: k.path,
      path: `/workspace/${k.path}`,
      size_bytes: k.size,
      mime_type: this.mimeOf(k.path),
    };
  }

  /** Copies one file into the store (or writes `bytes`, the content the server itself
   * wrote there in this call): the entry, null if it is no longer a regular file, or 'disk
   * full'. */
  private async keep(path: string, expected: number, bytes?: Buffer): Promise<ArtifactEntry | 'disk full' | null> {
    this.evictFor(expected, path.length);
    const fileId = `file_${randomHex(12)}`;
    const file = this.fileOf(fileId);
    let size: number | null = null;
    if (bytes && bytes.length <= SMALL_IO_BYTES) {
      // (the store is the server's own folder: no process of the session holds its locks)
      try {
        writeFileSync(file, bytes, { flag: 'wx', mode: 0o600 });
        size = bytes.length;
      } catch (e) {
        rmSync(file, { force: true });
        const code = (e as NodeJS.ErrnoException).code;
        return code === 'ENOSPC' || code === 'EDQUOT' ? 'disk full' : null;
      }
    } else if (expected <= SMALL_IO_BYTES) {
      // Small files (most artifacts) are copied with synchronous calls, on the workspace
      // pool's thread (WorkspaceFs.useThreads): a dozen system calls each, cheaper than a
      // dozen trips through libuv's thread pool.
      try {
        size = await this.fs.copySmall(resolveInside(path), file);
      } catch (e) {
        rmSync(file, { force: true });
        const code = (e as NodeJS.ErrnoException).code;
        return code === 'ENOSPC' || code === 'EDQUOT' ? 'disk full' : null;
      }
    }
    const copied = size ?? (await this.copyLarge(path, file));
    if (copied === 'disk full' || copied === null) return copied;
    return this.add(fileId, file, path, copied);
  }

  /** Copies a file of any size through WorkspaceFs.openRead (asynchronous calls). */
  private async copyLarge(path: string, file: string): Promise<number | 'disk full' | null> {
    let opened;
    try {
      opened = await this.fs.openRead(resolveInside(path), path);
    } catch {
      return null;
    }
    let size: number;
    try {
      // (/proc/self/fd/N names the file already opened: no path is resolved again.)
      await fsp.copyFile(`/proc/self/fd/${opened.handle.fd}`, file, fsp.constants.COPYFILE_EXCL);
      size = (await fsp.stat(file)).size;
    } catch (e) {
      await fsp.rm(file, { force: true }).catch(() => {});
      const code = (e as NodeJS.ErrnoException).code;
      return code === 'ENOSPC' || code === 'EDQUOT' ? 'disk full' : null;
    } finally {
      await opened.handle.close();
    }
    return size;
  }

  private async add(fileId: string, file: string, path: string, size: number): Promise<ArtifactEntry | null> {
    if (size > this.limits.keepBytes) {
      // It grew since the scan, past what a session keeps.
      await fsp.rm(file, { force: true });
      return null;
    }
    this.evictFor(size, path.length);
    const kept: Kept = { path, size };
    this.kept.set(fileId, kept);
    this.keptBytes += size;
    this.keptNameChars += path.length;
    return this.entryOf(fileId, kept);
  }

  /** Evicts the oldest artifacts until one more of `size` bytes and a path of `nameChars`
   * characters fits the session's keep. */
  private evictFor(size: number, nameChars: number): void {
    for (const [id, k] of this.kept) {
      if (this.kept.size < this.limits.keepMax && this.keptBytes + size <= this.limits.keepBytes && this.keptNameChars + nameChars <= KEEP_NAME_CHARS) break;
      this.kept.delete(id);
      this.keptBytes -= k.size;
      this.keptNameChars -= k.path.length;
      // At once: the room it frees on the session's disk is counted on by the next copy.
      rmSync(this.fileOf(id), { force: true });
    }
  }

  /** Path -> "mtime_ns:size:ino:ctime_ns" of every regular file the rule lets in (scan.ts,
   * on the scan pool's threads). */
  scan(): Promise<Scan> {
    return this.scans.scan(this.scanKey, this.workspaceDir, this.limits.scanMaxEntries);
  }
}

/** Whether the scan looks at a workspace-relative file path (the rule in the file comment:
 * no component starting with '.', but the top-level spill folder; within MAX_DEPTH). */
function scanned(path: string): boolean {
  const parts = path.split('/');
  if (parts.length > MAX_DEPTH) return false;
  return parts.every((part, i) => !part.startsWith('.') || (i === 0 && part === SPILL_DIR && parts.length > 1));
}

function sizeOf(sig: string): number {
  return Number(sig.split(':')[1]);
}
