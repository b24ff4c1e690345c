/**
 * Host-side access to a session's workspace that sandboxed code cannot redirect.
 *
 * The workspace is written by untrusted code, which can plant symlinks, FIFOs, sockets
 * and devices and can swap a folder for a link between our check and our use. So no
 * path is ever resolved by the kernel in one go: we hold an fd on the workspace root
 * and open each component relative to its parent's fd through `/proc/self/fd/<fd>/<name>`
 * with O_NOFOLLOW, which makes the kernel refuse a symlink at every step (there is
 * exactly one component after the magic link, and it is the last one). A swap after
 * an open changes nothing: we already hold the fd of the real folder.
 * Files are opened O_NONBLOCK (a FIFO never blocks a libuv thread) and fstat'ed: only
 * regular files are read or written.
 *
 * Writes land as the session's own uid (fchown), so code in the sandbox can change them.
 *
 * Small files (at most SMALL_IO_BYTES, the text editor's own files) are probed, read and
 * written with synchronous system calls on the event loop: the same walk, flags and checks
 * as the asynchronous path, without a trip through libuv's thread pool for each of the
 * dozen calls an edit makes (each trip cost more than the call itself). This is bounded
 * work: a handful of calls on one folder chain and at most SMALL_IO_BYTES copied, on the
 * box's tmpfs (memory, no disk) when the server is root. Nothing is opened that could block:
 * a name is lstat'ed first, only a regular file is opened (O_NONBLOCK, O_NOFOLLOW, fstat'ed
 * again), and writes go to a new file in the server's staging folder. Known limit: a call
 * waits for the folder's lock while sandboxed code holds it inside a system call of its own
 * (microseconds), as a thread-pool call would; and without root (no tmpfs) a small file
 * that is not in the page cache is read from the disk on the loop. Larger files keep the
 * asynchronous path.
 *
 * Bounds (the workspace is hostile, so its size is no bound): a listing stops at
 * `maxEntries` entries or `maxBytes` of JSON, and after examining LIST_SCAN_FACTOR times
 * `maxEntries` names, and says `truncated`; it never holds a folder's names, only the
 * sub-folders still to visit (each already counted as an entry), and one open folder fd
 * per level plus the one being read. See listReserveBytes for what it may hold. A download
 * sends exactly the size it announced or ends with an error (the HTTP layer then drops
 * the connection): a file that shrinks or changes while it is sent never passes for a
 * shorter, complete answer.
 */
import {
  promises as fsp,
  constants as C,
  createWriteStream,
  closeSync,
  fchownSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
  writeFileSync,
  type Dirent,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { randomHex } from '../ids.js';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { SandboxError, type ErrorCode } from '../errors.js';
import type { ResolvedPath } from './paths.js';
import type { ScanPool } from './scan-pool.js';

/** Work of WorkspaceFs that runs on the workspace pool's threads (scan-worker.ts). */
type ThreadMethod = 'probe' | 'commit' | 'copySmall' | 'signature';

/** Paths of written files WorkspaceFs remembers between two takeWritten() calls. */
const WRITTEN_MAX = 64;

/** What the artifact scan records of a file to see it change (artifacts.ts): mtime and
 * ctime in ms as doubles (sub-microsecond precision), size and inode. */
export function fileSignature(st: { mtimeMs: number; size: number; ino: number; ctimeMs: number }): string {
  return `${st.mtimeMs}:${st.size}:${st.ino}:${st.ctimeMs}`;
}

const DIR_FLAGS = C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW;
const READ_FLAGS = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK;
const STAGE_FLAGS = C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW;

/** Files up to this size are probed, read and written with synchronous calls (see above). */
export const SMALL_IO_BYTES = 64 * 1024;

/** What is at a path (WorkspaceFs.probe): nothing, a folder, something else (a link, a
 * FIFO, ...), or a regular file with its size and, when small enough, its bytes. */
export type Probe = { kind: null | 'dir' | 'other' } | { kind: 'file'; size: number; bytes: Buffer | null };

export interface Owner {
  uid: number;
  gid: number;
}

export interface FileEntry {
  path: string;
  size_bytes: number;
  mime_type: string | null;
  modified_at: number;
  is_dir?: boolean;
}

const at = (fd: number, name: string) => `/proc/self/fd/${fd}/${name}`;
/** The same, for a name read from the disk as bytes (it may not be valid UTF-8). */
const atRaw = (fd: number, name: Buffer) => Buffer.concat([Buffer.from(`/proc/self/fd/${fd}/`), name]);

/** Names examined by one listing at most, as a multiple of its entry cap: a folder of
 * millions of links, FIFOs or (in a flat listing) folders ends the walk, not the server. */
export const LIST_SCAN_FACTOR = 8;
/** What one listing may hold besides its entries' strings: an entry object, its number
 * and array slot, a pending sub-folder's name buffer (bytes). */
const LIST_ENTRY_OVERHEAD_BYTES = 256;
const DOWNLOAD_CHUNK_BYTES = 64 * 1024;

/**
 * Upper bound of the server memory one listing holds, for the memory budget. Entry paths
 * are JS strings of at most 2 bytes per UTF-16 unit, never longer than their JSON (which
 * the byte cap counts): 2 x maxBytes; the names of sub-folders waiting to be visited are
 * parts of listed paths: 1 x maxBytes; plus a fixed overhead per entry and 1 MiB for the
 * folder read buffers, the JSON chunks in flight and transient per-entry strings.
 */
export function listReserveBytes(limits: { maxEntries: number; maxBytes: number }): number {
  return 3 * limits.maxBytes + LIST_ENTRY_OVERHEAD_BYTES * limits.maxEntries + 1024 * 1024;
}

/** What a finished listing holds while its answer is written: its entries and the JSON
 * pieces in flight. */
export function listHeldBytes(listing: { entries: unknown[]; jsonBytes: number }): number {
  return 3 * listing.jsonBytes + LIST_ENTRY_OVERHEAD_BYTES * listing.entries.length + 64 * 1024;
}

export interface ListOptions {
  recursive: boolean;
  maxEntries: number;
  /** Cap on the JSON size of the entries (one comma each included), bytes. */
  maxBytes: number;
  /** Checked once per name: true stops the walk (the caller then answers for itself). */
  cancelled?: () => boolean;
}

export interface Listing {
  /** Sorted by path. */
  entries: FileEntry[];
  /** True when the walk stopped at a cap: more entries exist than were returned. */
  truncated: boolean;
  /** JSON size of the entries (as counted against maxBytes). */
  jsonBytes: number;
}

interface WalkState {
  entries: FileEntry[];
  bytes: number;
  scanned: number;
  truncated: boolean;
  stopped: boolean;
}

/** The names of a folder, read lazily (a few at a time) as Dirents with byte names; the
 * folder is closed when the loop over them ends, however it ends. */
async function* eachName(dirFd: number): AsyncGenerator<Dirent<Buffer>> {
  const dir = await fsp.opendir(`/proc/self/fd/${dirFd}`, { encoding: 'buffer' as BufferEncoding, bufferSize: 32 });
  try {
    for await (const entry of dir) yield entry as unknown as Dirent<Buffer>;
  } finally {
    await dir.close().catch(() => {});
  }
}

/** The kind a Dirent reports, when the file system reports one (DT_UNKNOWN: null). A
 * hint only: what is listed is decided by lstat. */
function direntKind(d: Dirent<Buffer>): 'file' | 'dir' | 'other' | null {
  if (d.isFile()) return 'file';
  if (d.isDirectory()) return 'dir';
  if (d.isSymbolicLink() || d.isFIFO() || d.isSocket() || d.isCharacterDevice() || d.isBlockDevice()) return 'other';
  return null;
}

const byPath = (a: FileEntry, b: FileEntry) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

/**
 * Exactly `size` bytes of an open regular file, read in chunks at explicit offsets, or an
 * error. The length was announced (Content-Length) before the first byte, so a file that
 * the sandbox truncates, rewrites or extends meanwhile must not end the stream normally:
 * a short read is an error at once, and the last chunk is held back until an fstat shows
 * the size and mtime unchanged (else an error, so the client sees a short body and a
 * closed connection, never a complete-looking mix of two versions).
 */
class FileSlice extends Readable {
  private pos = 0;

  constructor(
    private readonly handle: fsp.FileHandle,
    private readonly size: number,
    private readonly mtimeNs: bigint,
    private readonly display: string,
    /** Checked before each chunk: true ends the stream with SBX_SESSION_NOT_FOUND. */
    private readonly cancelled?: () => boolean,
  ) {
    super({ highWaterMark: DOWNLOAD_CHUNK_BYTES });
  }

  override _read(): void {
    void this.readChunk();
  }

  private changed(): Error {
    return new SandboxError('SBX_FILE_NOT_FOUND', `file changed while it was being sent: ${this.display}`);
  }

  private async readChunk(): Promise<void> {
    try {
      if (this.cancelled?.()) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'download cancelled: the session is gone');
      const want = Math.min(DOWNLOAD_CHUNK_BYTES, this.size - this.pos);
      const buf = Buffer.allocUnsafe(want);
      const { bytesRead } = await this.handle.read(buf, 0, want, this.pos);
      if (this.destroyed) return;
      if (bytesRead === 0) throw this.changed();
      this.pos += bytesRead;
      const chunk = buf.subarray(0, bytesRead);
      if (this.pos < this.size) {
        this.push(chunk);
        return;
      }
      const st = await this.handle.stat({ bigint: true });
      if (this.destroyed) return;
      if (st.size !== BigInt(this.size) || st.mtimeNs !== this.mtimeNs) throw this.changed();
      this.push(chunk);
      this.push(null);
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.handle.close().then(
      () => callback(err),
      () => callback(err),
    );
  }
}

/** At most `cap` names of a folder, read incrementally: a folder with millions of
 * entries never lands in memory whole. Names are bytes (they may not be UTF-8). */
async function readNames(dirFd: number, cap: number): Promise<Buffer[]> {
  const dir = await fsp.opendir(`/proc/self/fd/${dirFd}`, { encoding: 'buffer' as BufferEncoding, bufferSize: 256 });
  const names: Buffer[] = [];
  try {
    for await (const entry of dir) {
      if (names.length >= cap) break;
      names.push(entry.name as unknown as Buffer);
    }
  } finally {
    await dir.close().catch(() => {});
  }
  return names;
}

function fsError(e: unknown, display: string): never {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') throw new SandboxError('SBX_FILE_NOT_FOUND', `file not found: ${display}`);
  if (code === 'ELOOP' || code === 'ENOTDIR') throw new SandboxError('SBX_NOT_A_FILE', `path crosses a symbolic link or a non-folder: ${display}`);
  if (code === 'EACCES' || code === 'EPERM') throw new SandboxError('SBX_NOT_A_FILE', `permission denied: ${display}`);
  if (code === 'ENXIO' || code === 'EISDIR') throw new SandboxError('SBX_NOT_A_FILE', `not a regular file: ${display}`);
  if (code === 'ENOSPC' || code === 'EDQUOT') throw new SandboxError('SBX_FILE_TOO_LARGE', `no space left in the session's workspace (SANDBOX_WORKSPACE_MB): ${display}`);
  if (code === 'EFBIG') throw new SandboxError('SBX_FILE_TOO_LARGE', `file exceeds the file size limit: ${display}`);
  throw e;
}

/** A file written through WorkspaceFs (takeWritten): its workspace-relative path and, for a
 * small write, its signature right after the rename (null: not a regular file by then) and
 * the bytes written, so that the artifact store need not look at it again. */
export interface Written {
  path: string;
  sig?: string | null;
  bytes?: Buffer;
}

export class WorkspaceFs {
  /** Bumped by every write through this class (uploads, editor writes, spill files): the
   * artifact scan (artifacts.ts) takes a new baseline when it moved between calls. */
  generation = 0;
  /** The files written through this class since takeWritten() (WRITTEN_MAX at most; null
   * past them). */
  private written: Written[] | null = [];

  constructor(
    private readonly root: string,
    /** Who files written here belong to (the session's uid); null: the server's own. */
    readonly owner: Owner | null,
    /** A folder on the same file system as the workspace, invisible to the sandbox. */
    private readonly stagingDir: string,
  ) {}

  /** Where the synchronous small-file work runs; null: on the caller's thread (unit
   * tests, and the pool's threads themselves). */
  private threads: { pool: ScanPool; key: string } | null = null;

  /**
   * Runs the synchronous small-file work (probe, the commit of a small write, small
   * copies, signatures) on `pool`'s threads, as the session `key`, never on the event
   * loop: those calls take the kernel's locks on the workspace's folders and files, which
   * the session's code can hold for seconds (fourth red team of 2026-12-03: a session's
   * own editor calls, their renames waiting on its locks, held the loop up to 2.8 s at a
   * time, and every session's calls with it). A session waits alone: one piece of its
   * work at a time, SCAN_WAIT_MS at most (then SBX_SESSION_BUSY).
   */
  useThreads(pool: ScanPool, key: string): void {
    this.threads = { pool, key };
  }

  /** On a pool thread (scan-worker.ts): one piece of the synchronous work. */
  async onThread(method: ThreadMethod, args: unknown[]): Promise<unknown> {
    const [a, b, c] = args as [ResolvedPath, string, number];
    switch (method) {
      case 'probe':
        return this.probeSync(a, b, c);
      case 'commit':
        // (args: the staged file, the path, its display name)
        return this.commitSync(args[0] as string, args[1] as ResolvedPath, args[2] as string);
      case 'copySmall':
        return this.copySmallSync(a, b);
      case 'signature':
        return this.fileSignatureSync(a);
    }
  }

  private async offload(method: ThreadMethod, args: unknown[]): Promise<unknown> {
    const t = this.threads!;
    const answer = await t.pool.run(t.key, { op: 'fs', root: this.root, owner: this.owner, stagingDir: this.stagingDir, method, args });
    if ('value' in answer) return answer.value;
    if ('stuck' in answer) {
      throw new SandboxError('SBX_SESSION_BUSY', "the session's workspace did not answer in time: a process of the session holds its files busy");
    }
    if (answer.error.sandbox) throw new SandboxError(answer.error.code as ErrorCode, answer.error.message);
    throw Object.assign(new Error(answer.error.message), { code: answer.error.code });
  }

  /** fileSignatureSync, off the event loop when threads are in use. */
  async fileSignature(p: ResolvedPath): Promise<string | null> {
    if (!this.threads) return this.fileSignatureSync(p);
    return (await this.offload('signature', [p])) as string | null;
  }

  /** copySmallSync, off the event loop when threads are in use. */
  async copySmall(p: ResolvedPath, dest: string): Promise<number | null> {
    if (!this.threads) return this.copySmallSync(p, dest);
    return (await this.offload('copySmall', [p, dest])) as number | null;
  }

  private wrote(p: ResolvedPath, sig?: string | null, bytes?: Buffer): void {
    if (this.written !== null && this.written.length < WRITTEN_MAX) this.written.push({ path: p.segments.join('/'), sig, bytes });
    else this.written = null;
  }

  /** The files written through this class since the last call (null when more than
   * WRITTEN_MAX were), and a fresh start. */
  takeWritten(): Written[] | null {
    const w = this.written;
    this.written = [];
    return w;
  }

  /** The (mtime, size, inode, ctime) signature of a regular file at p, as the artifact scan
   * records it, or null (no such file, not a regular file, a link on the way). */
  fileSignatureSync(p: ResolvedPath): string | null {
    if (p.segments.length === 0) return null;
    let dir: number;
    try {
      dir = this.openDirSync(p.segments.slice(0, -1), '');
    } catch {
      return null;
    }
    try {
      const st = lstatSync(at(dir, p.segments.at(-1)!), { throwIfNoEntry: false });
      return st?.isFile() ? fileSignature(st) : null;
    } catch {
      return null;
    } finally {
      closeSync(dir);
    }
  }

  /** Opens the folder holding `segments` (all of them when `parentOnly` is false). */
  private async openDir(segments: string[], display: string, create = false): Promise<fsp.FileHandle> {
    let dir = await fsp.open(this.root, DIR_FLAGS);
    try {
      for (const seg of segments) {
        let next: fsp.FileHandle;
        try {
          next = await fsp.open(at(dir.fd, seg), DIR_FLAGS);
        } catch (e) {
          if (!create || (e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          let made = true;
          try {
            await fsp.mkdir(at(dir.fd, seg), { mode: 0o755 });
          } catch (m) {
            // Sandboxed code made something there since our open: open it again, with
            // O_NOFOLLOW as always (a link still fails; a folder is used as it is).
            if ((m as NodeJS.ErrnoException).code !== 'EEXIST') throw m;
            made = false;
          }
          next = await fsp.open(at(dir.fd, seg), DIR_FLAGS);
          if (made && this.owner) await next.chown(this.owner.uid, this.owner.gid);
        }
        await dir.close();
        dir = next;
      }
      return dir;
    } catch (e) {
      await dir.close();
      fsError(e, display);
    }
  }

  /** openDir with synchronous calls (small editor I/O): the same walk, O_NOFOLLOW at
   * every step. Returns the folder's fd; the caller closes it. */
  private openDirSync(segments: string[], display: string, create = false): number {
    let dir = openSync(this.root, DIR_FLAGS);
    try {
      for (const seg of segments) {
        let next: number;
        try {
          next = openSync(at(dir, seg), DIR_FLAGS);
        } catch (e) {
          if (!create || (e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          let made = true;
          try {
            mkdirSync(at(dir, seg), { mode: 0o755 });
          } catch (m) {
            // Made by sandboxed code since our open: opened again with O_NOFOLLOW as always.
            if ((m as NodeJS.ErrnoException).code !== 'EEXIST') throw m;
            made = false;
          }
          next = openSync(at(dir, seg), DIR_FLAGS);
          if (made && this.owner) {
            try {
              fchownSync(next, this.owner.uid, this.owner.gid);
            } catch (c) {
              closeSync(next);
              throw c;
            }
          }
        }
        closeSync(dir);
        dir = next;
      }
      return dir;
    } catch (e) {
      closeSync(dir);
      fsError(e, display);
    }
  }

  /**
   * What is at p, without following a link, in one walk: nothing, a folder, something
   * else, or a regular file with its size and, when it holds at most `readMaxBytes` (and
   * SMALL_IO_BYTES), its bytes. Synchronous calls only; a larger file is not opened (the
   * caller reserves its memory, then reads it with readFile).
   */
  async probe(p: ResolvedPath, display: string, readMaxBytes: number): Promise<Probe> {
    if (!this.threads) return this.probeSync(p, display, readMaxBytes);
    const probe = (await this.offload('probe', [p, display, readMaxBytes])) as Probe;
    // (bytes come back as a Uint8Array of the thread's copy)
    if (probe.kind === 'file' && probe.bytes) probe.bytes = Buffer.from(probe.bytes.buffer, probe.bytes.byteOffset, probe.bytes.length);
    return probe;
  }

  private probeSync(p: ResolvedPath, display: string, readMaxBytes: number): Probe {
    if (p.segments.length === 0) return { kind: 'dir' };
    let dir: number;
    try {
      dir = this.openDirSync(p.segments.slice(0, -1), display);
    } catch (e) {
      if ((e as SandboxError).code === 'SBX_FILE_NOT_FOUND') return { kind: null };
      throw e;
    }
    try {
      const name = at(dir, p.segments.at(-1)!);
      const st = lstatSync(name, { throwIfNoEntry: false });
      if (!st) return { kind: null };
      if (st.isDirectory()) return { kind: 'dir' };
      if (!st.isFile()) return { kind: 'other' };
      const readMax = Math.min(readMaxBytes, SMALL_IO_BYTES);
      if (st.size > readMax) return { kind: 'file', size: st.size, bytes: null };
      // The name may have been swapped since the lstat: opened without following a link
      // and without blocking on a FIFO, and checked again on the fd.
      let fd: number;
      try {
        fd = openSync(name, READ_FLAGS);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return { kind: null };
        if (code === 'ELOOP' || code === 'ENXIO') return { kind: 'other' };
        fsError(e, display);
      }
      try {
        const fst = fstatSync(fd);
        if (!fst.isFile()) return { kind: fst.isDirectory() ? 'dir' : 'other' };
        if (fst.size > readMax) return { kind: 'file', size: fst.size, bytes: null };
        const buf = Buffer.alloc(fst.size);
        let off = 0;
        while (off < buf.length) {
          const n = readSync(fd, buf, off, buf.length - off, off);
          if (n === 0) break;
          off += n;
        }
        return { kind: 'file', size: fst.size, bytes: off === buf.length ? buf : buf.subarray(0, off) };
      } finally {
        closeSync(fd);
      }
    } catch (e) {
      fsError(e, display);
    } finally {
      closeSync(dir);
    }
  }

  /**
   * Copies a small regular file (at most SMALL_IO_BYTES) at p to `dest` (a new file in a
   * server-only folder) with synchronous calls: the same walk and checks as openRead (no
   * link followed, regular files only), then copy_file_range/sendfile from the open fd.
   * Returns the bytes copied, or null when p is not a regular file any more, or is larger
   * (the caller then takes the asynchronous path). Throws the copy's own errors (ENOSPC).
   */
  copySmallSync(p: ResolvedPath, dest: string): number | null {
    if (p.segments.length === 0) return null;
    let dir: number;
    try {
      dir = this.openDirSync(p.segments.slice(0, -1), p.rel);
    } catch {
      return null;
    }
    let fd: number;
    try {
      fd = openSync(at(dir, p.segments.at(-1)!), READ_FLAGS);
    } catch {
      return null;
    } finally {
      closeSync(dir);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile() || st.size > SMALL_IO_BYTES) return null;
      // At most SMALL_IO_BYTES are read, whatever the file has grown to since its fstat (a
      // sandbox may grow it meanwhile): one byte more says it did, and the copy is left to
      // the bounded asynchronous path (null).
      const buf = Buffer.allocUnsafe(SMALL_IO_BYTES + 1);
      let n = 0;
      for (let r = -1; r !== 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, n);
      if (n > SMALL_IO_BYTES) return null;
      writeFileSync(dest, buf.subarray(0, n), { flag: 'wx', mode: 0o600 });
      return n;
    } finally {
      closeSync(fd);
    }
  }

  /** Opens a regular file for reading; refuses anything else. Caller closes. */
  async openRead(p: ResolvedPath, display: string): Promise<{ handle: fsp.FileHandle; size: number }> {
    if (p.segments.length === 0) throw new SandboxError('SBX_NOT_A_FILE', `is a directory: ${display}`);
    const dir = await this.openDir(p.segments.slice(0, -1), display);
    let handle: fsp.FileHandle;
    try {
      handle = await fsp.open(at(dir.fd, p.segments.at(-1)!), READ_FLAGS);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw new SandboxError('SBX_NOT_A_FILE', `not a regular file (symbolic link): ${display}`);
      fsError(e, display);
    } finally {
      await dir.close();
    }
    const st = await handle.stat().catch(async (e: unknown) => {
      await handle.close();
      throw e;
    });
    if (!st.isFile()) {
      await handle.close();
      throw new SandboxError('SBX_NOT_A_FILE', st.isDirectory() ? `is a directory: ${display}` : `not a regular file: ${display}`);
    }
    return { handle, size: st.size };
  }

  /** Reads a whole regular file, refusing ones above maxBytes. */
  async readFile(p: ResolvedPath, display: string, maxBytes: number): Promise<Buffer> {
    const { handle, size } = await this.openRead(p, display);
    try {
      if (size > maxBytes) throw new SandboxError('SBX_FILE_TOO_LARGE', `file is too large for this operation: ${display} is ${size} bytes, the limit is ${maxBytes}`);
      const buf = Buffer.alloc(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await handle.read(buf, off, size - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return buf.subarray(0, off);
    } finally {
      await handle.close();
    }
  }

  /** A stream of exactly `size` bytes of a regular file (see FileSlice), with the size
   * for Content-Length. */
  async streamFile(p: ResolvedPath, display: string, maxBytes: number, cancelled?: () => boolean): Promise<{ stream: Readable | Buffer; size: number }> {
    const { handle, size } = await this.openRead(p, display);
    let st;
    try {
      if (size > maxBytes) {
        throw new SandboxError('SBX_FILE_TOO_LARGE', `file is too large to download: ${display} is ${size} bytes, the limit is ${maxBytes} (SANDBOX_MAX_DOWNLOAD_BYTES)`);
      }
      st = await handle.stat({ bigint: true });
    } catch (e) {
      await handle.close();
      throw e;
    }
    if (size === 0 || st.size !== BigInt(size)) {
      await handle.close();
      if (size !== 0) throw new SandboxError('SBX_FILE_NOT_FOUND', `file changed while it was being opened: ${display}`);
      return { stream: Buffer.alloc(0), size };
    }
    return { stream: new FileSlice(handle, size, st.mtimeNs, display, cancelled), size };
  }

  /** Streams `source` into a new file in the staging folder (same file system as the
   * workspace, invisible to the sandbox). Returns its path and size. */
  async stage(source: Readable, cancelled?: () => boolean): Promise<{ staged: string; size: number }> {
    // The staging folder is the server's own (0700, not mounted in the sandbox), so a
    // plain path is safe here.
    const staged = `${this.stagingDir}/${randomBytes(8).toString('hex')}`;
    let size = 0;
    try {
      const out = createWriteStream(staged, { flags: 'wx', mode: 0o644 });
      await pipeline(
        source,
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const c of chunks) {
            if (cancelled?.()) throw new SandboxError('SBX_SESSION_NOT_FOUND', 'upload cancelled: the session is gone');
            size += c.length;
            yield c;
          }
        },
        out,
      );
      if (this.owner) await fsp.chown(staged, this.owner.uid, this.owner.gid);
      return { staged, size };
    } catch (e) {
      await fsp.rm(staged, { force: true }).catch(() => {});
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') fsError(e, 'upload');
      throw e;
    }
  }

  async discard(staged: string): Promise<void> {
    await fsp.rm(staged, { force: true });
  }

  /** Writes `data` to p atomically: written to a new file in the staging folder, owned by
   * the session, then renamed in (see commit). Small data takes synchronous calls. */
  async writeFile(p: ResolvedPath, display: string, data: Buffer | string): Promise<void> {
    if (p.segments.length === 0) throw new SandboxError('SBX_NOT_A_FILE', `is a directory: ${display}`);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const staged = `${this.stagingDir}/${randomHex(8)}`;
    if (bytes.length <= SMALL_IO_BYTES) {
      try {
        const fd = openSync(staged, STAGE_FLAGS, 0o644);
        try {
          for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off, bytes.length - off);
          if (this.owner) fchownSync(fd, this.owner.uid, this.owner.gid);
        } finally {
          closeSync(fd);
        }
      } catch (e) {
        rmSync(staged, { force: true });
        fsError(e, display);
      }
      let sig: string | null;
      if (this.threads) {
        this.generation++; // (as commitSync: before the rename)
        sig = (await this.offload('commit', [staged, p, display])) as string | null;
      } else {
        sig = this.commitSync(staged, p, display);
      }
      this.wrote(p, sig, bytes);
      return;
    }
    try {
      const handle = await fsp.open(staged, STAGE_FLAGS, 0o644);
      try {
        await handle.writeFile(bytes);
        if (this.owner) await handle.chown(this.owner.uid, this.owner.gid);
      } finally {
        await handle.close();
      }
    } catch (e) {
      await fsp.rm(staged, { force: true }).catch(() => {});
      fsError(e, display);
    }
    await this.commit(staged, p, display);
  }

  /** commit with synchronous calls. rename() over a folder fails (EISDIR) and replaces a
   * planted link or file without following it. Returns the file's signature once renamed
   * (fileSignatureSync). */
  private commitSync(staged: string, p: ResolvedPath, display: string): string | null {
    let dir: number | undefined;
    try {
      dir = this.openDirSync(p.segments.slice(0, -1), display, true);
      this.generation++;
      const dest = at(dir, p.segments.at(-1)!);
      renameSync(staged, dest);
      try {
        const st = lstatSync(dest, { throwIfNoEntry: false });
        return st?.isFile() ? fileSignature(st) : null;
      } catch {
        return null;
      }
    } catch (e) {
      rmSync(staged, { force: true });
      if ((e as NodeJS.ErrnoException).code === 'EISDIR') throw new SandboxError('SBX_NOT_A_FILE', `is a directory: ${display}`);
      if ((e as SandboxError).name === 'SandboxError') throw e;
      return fsError(e, display);
    } finally {
      if (dir !== undefined) closeSync(dir);
    }
  }

  /** Moves a staged file to p, creating parent folders. rename() replaces a planted
   * link or file at the destination without following it. */
  async commit(staged: string, p: ResolvedPath, display: string): Promise<void> {
    if (p.segments.length === 0) {
      await fsp.rm(staged, { force: true });
      throw new SandboxError('SBX_NOT_A_FILE', `is a directory: ${display}`);
    }
    let dir: fsp.FileHandle | undefined;
    try {
      dir = await this.openDir(p.segments.slice(0, -1), display, true);
      const dest = at(dir.fd, p.segments.at(-1)!);
      const st = await fsp.lstat(dest).catch(() => null);
      if (st?.isDirectory()) throw new SandboxError('SBX_NOT_A_FILE', `is a directory: ${display}`);
      this.generation++;
      await fsp.rename(staged, dest);
      this.wrote(p);
    } catch (e) {
      await fsp.rm(staged, { force: true });
      if ((e as SandboxError).name === 'SandboxError') throw e;
      fsError(e, display);
    } finally {
      await dir?.close();
    }
  }

  /** Lists a folder: regular files (and, when asked, folders), one level or recursively,
   * within the caps of `opts` (see the file comment). */
  async list(p: ResolvedPath, display: string, opts: ListOptions, mimeOf: (name: string) => string | null): Promise<Listing> {
    let dir: fsp.FileHandle;
    try {
      dir = await this.openDir(p.segments, display);
    } catch (e) {
      if ((e as SandboxError).code === 'SBX_FILE_NOT_FOUND') throw new SandboxError('SBX_FILE_NOT_FOUND', `path not found: ${display}`);
      if ((e as SandboxError).code === 'SBX_NOT_A_FILE') {
        const entries = await this.listSingleFile(p, display, mimeOf);
        return { entries, truncated: false, jsonBytes: JSON.stringify(entries).length };
      }
      throw e;
    }
    const state: WalkState = { entries: [], bytes: 0, scanned: 0, truncated: false, stopped: false };
    try {
      await this.walk(dir, p.segments.join('/'), 0, opts, mimeOf, state);
    } finally {
      await dir.close();
    }
    // Bounded: at most maxEntries entries whose paths total at most maxBytes.
    state.entries.sort(byPath);
    return { entries: state.entries, truncated: state.truncated, jsonBytes: state.bytes };
  }

  private async listSingleFile(p: ResolvedPath, display: string, mimeOf: (name: string) => string | null): Promise<FileEntry[]> {
    const { handle } = await this.openRead(p, display).catch((e: SandboxError) => {
      if (e.code === 'SBX_FILE_NOT_FOUND') throw new SandboxError('SBX_FILE_NOT_FOUND', `path not found: ${display}`);
      throw e;
    });
    try {
      const st = await handle.stat({ bigint: true });
      return [{ path: p.rel, size_bytes: Number(st.size), mime_type: mimeOf(p.segments.at(-1)!), modified_at: Number(st.mtimeNs) / 1e9 }];
    } finally {
      await handle.close();
    }
  }

  /** Adds an entry if it fits both caps; false (and `truncated`) when it does not. */
  private admit(entry: FileEntry, opts: ListOptions, state: WalkState): boolean {
    const cost = Buffer.byteLength(JSON.stringify(entry)) + 1;
    if (state.entries.length >= opts.maxEntries || state.bytes + cost > opts.maxBytes) {
      state.truncated = true;
      return false;
    }
    state.entries.push(entry);
    state.bytes += cost;
    return true;
  }

  /**
   * One folder: its files (and folders) first, while the folder is read lazily; then its
   * sub-folders, one at a time, after the folder is closed. So only one folder is being
   * read at any time, and what waits is the names of sub-folders already listed.
   */
  private async walk(dir: fsp.FileHandle, prefix: string, depth: number, opts: ListOptions, mimeOf: (name: string) => string | null, state: WalkState): Promise<void> {
    const scanCap = opts.maxEntries * LIST_SCAN_FACTOR;
    const subdirs: Buffer[] = [];
    try {
      // Names as bytes: sandboxed code can make names that are not valid UTF-8; they are
      // reported with replacement characters, and still found on the disk.
      for await (const d of eachName(dir.fd)) {
        if (opts.cancelled?.()) {
          state.stopped = true;
          return;
        }
        if (++state.scanned > scanCap) {
          state.truncated = true;
          return;
        }
        const hint = direntKind(d);
        if (hint === 'other' || (hint === 'dir' && !opts.recursive)) continue;
        const raw = d.name;
        let st;
        try {
          st = await fsp.lstat(atRaw(dir.fd, raw), { bigint: true });
        } catch {
          continue;
        }
        const name = raw.toString('utf8');
        const rel = prefix ? `${prefix}/${name}` : name;
        if (st.isFile()) {
          if (!this.admit({ path: rel, size_bytes: Number(st.size), mime_type: mimeOf(name), modified_at: Number(st.mtimeNs) / 1e9 }, opts, state)) return;
        } else if (st.isDirectory() && opts.recursive) {
          if (!this.admit({ path: rel, size_bytes: 0, mime_type: null, modified_at: Number(st.mtimeNs) / 1e9, is_dir: true }, opts, state)) return;
          if (depth < 64) subdirs.push(raw);
        }
      }
    } catch {
      if (subdirs.length === 0) return; // unreadable (chmod 000): nothing to list, no error
    }
    for (const raw of subdirs) {
      if (state.truncated || state.stopped) return;
      let sub: fsp.FileHandle;
      try {
        sub = await fsp.open(atRaw(dir.fd, raw), DIR_FLAGS);
      } catch {
        continue;
      }
      try {
        const name = raw.toString('utf8');
        await this.walk(sub, prefix ? `${prefix}/${name}` : name, depth + 1, opts, mimeOf, state);
      } finally {
        await sub.close();
      }
    }
  }

  /** Directory tree two levels deep for the text editor's `view` of a folder. */
  async tree(p: ResolvedPath, display: string, maxEntries: number): Promise<string[]> {
    const dir = await this.openDir(p.segments, display);
    const out: string[] = [];
    const visit = async (d: fsp.FileHandle, prefix: string, depth: number): Promise<void> => {
      let names: Buffer[];
      try {
        names = (await readNames(d.fd, maxEntries - out.length)).sort(Buffer.compare);
      } catch {
        return;
      }
      for (const raw of names) {
        if (out.length >= maxEntries) return;
        const name = raw.toString('utf8');
        const rel = prefix ? `${prefix}/${name}` : name;
        out.push(rel);
        if (depth >= 2) continue;
        const st = await fsp.lstat(atRaw(d.fd, raw)).catch(() => null);
        if (!st?.isDirectory()) continue;
        const sub = await fsp.open(atRaw(d.fd, raw), DIR_FLAGS).catch(() => null);
        if (!sub) continue;
        try {
          await visit(sub, rel, depth + 1);
        } finally {
          await sub.close();
        }
      }
    };
    try {
      await visit(dir, '', 1);
    } finally {
      await dir.close();
    }
    return out;
  }
}
