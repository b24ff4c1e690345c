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
 */
import { promises as fsp, constants as C, createReadStream, createWriteStream, type ReadStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { SandboxError } from '../errors.js';
import type { ResolvedPath } from './paths.js';

const DIR_FLAGS = C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW;
const READ_FLAGS = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK;

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

export class WorkspaceFs {
  constructor(
    private readonly root: string,
    private readonly owner: Owner | null,
    /** A folder on the same file system as the workspace, invisible to the sandbox. */
    private readonly stagingDir: string,
  ) {}

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

  /** Stat without following: 'file' | 'dir' | 'other' | null (missing). */
  async kind(p: ResolvedPath): Promise<'file' | 'dir' | 'other' | null> {
    if (p.segments.length === 0) return 'dir';
    let dir: fsp.FileHandle;
    try {
      dir = await this.openDir(p.segments.slice(0, -1), p.rel);
    } catch (e) {
      if ((e as SandboxError).code === 'SBX_FILE_NOT_FOUND') return null;
      throw e;
    }
    try {
      const st = await fsp.lstat(at(dir.fd, p.segments.at(-1)!));
      return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other';
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    } finally {
      await dir.close();
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

  /** A read stream of a regular file with its size (for Content-Length). */
  async streamFile(p: ResolvedPath, display: string, maxBytes: number): Promise<{ stream: ReadStream | Buffer; size: number }> {
    const { handle, size } = await this.openRead(p, display);
    if (size > maxBytes) {
      await handle.close();
      throw new SandboxError('SBX_FILE_TOO_LARGE', `file is too large to download: ${display} is ${size} bytes, the limit is ${maxBytes} (SANDBOX_MAX_DOWNLOAD_BYTES)`);
    }
    if (size === 0) {
      await handle.close();
      return { stream: Buffer.alloc(0), size };
    }
    // `end` pins the length to what Content-Length announced, even if the file grows.
    const stream = createReadStream('', { fd: handle.fd, autoClose: false, start: 0, end: size - 1 });
    stream.once('close', () => void handle.close().catch(() => {}));
    return { stream, size };
  }

  /** Streams `source` into a new file in the staging folder (same file system as the
   * workspace, invisible to the sandbox). Returns its path and size. */
  async stage(source: Readable): Promise<{ staged: string; size: number }> {
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
            size += c.length;
            yield c;
          }
        },
        out,
      );
      if (this.owner) await fsp.chown(staged, this.owner.uid, this.owner.gid);
      return { staged, size };
    } catch (e) {
      await fsp.rm(staged, { force: true });
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') fsError(e, 'upload');
      throw e;
    }
  }

  async discard(staged: string): Promise<void> {
    await fsp.rm(staged, { force: true });
  }

  /** Writes `source` to p atomically: staged, then renamed in (see commit). */
  async writeStream(p: ResolvedPath, display: string, source: Readable): Promise<number> {
    if (p.segments.length === 0) throw new SandboxError('SBX_NOT_A_FILE', `is a directory: ${display}`);
    const { staged, size } = await this.stage(source);
    await this.commit(staged, p, display);
    return size;
  }

  async writeFile(p: ResolvedPath, display: string, data: Buffer | string): Promise<void> {
    const { Readable } = await import('node:stream');
    await this.writeStream(p, display, Readable.from([typeof data === 'string' ? Buffer.from(data, 'utf8') : data]));
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
      await fsp.rename(staged, dest);
    } catch (e) {
      await fsp.rm(staged, { force: true });
      if ((e as SandboxError).name === 'SandboxError') throw e;
      fsError(e, display);
    } finally {
      await dir?.close();
    }
  }

  /** Lists a folder: regular files (and, when asked, folders), one level or recursively. */
  async list(p: ResolvedPath, display: string, opts: { recursive: boolean; maxEntries: number }, mimeOf: (name: string) => string | null): Promise<FileEntry[]> {
    let dir: fsp.FileHandle;
    try {
      dir = await this.openDir(p.segments, display);
    } catch (e) {
      if ((e as SandboxError).code === 'SBX_FILE_NOT_FOUND') throw new SandboxError('SBX_FILE_NOT_FOUND', `path not found: ${display}`);
      if ((e as SandboxError).code === 'SBX_NOT_A_FILE') return this.listSingleFile(p, display, mimeOf);
      throw e;
    }
    const out: FileEntry[] = [];
    try {
      await this.walk(dir, p.segments, opts, mimeOf, out, 0);
    } finally {
      await dir.close();
    }
    out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    return out;
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

  private async walk(
    dir: fsp.FileHandle,
    prefix: string[],
    opts: { recursive: boolean; maxEntries: number },
    mimeOf: (name: string) => string | null,
    out: FileEntry[],
    depth: number,
  ): Promise<void> {
    let names: Buffer[];
    try {
      // Names as bytes: sandboxed code can make names that are not valid UTF-8; they are
      // reported with replacement characters, and still found on the disk.
      names = await readNames(dir.fd, opts.maxEntries - out.length);
    } catch {
      return; // unreadable (chmod 000): nothing to list, no error
    }
    for (const raw of names) {
      if (out.length >= opts.maxEntries) return;
      const name = raw.toString('utf8');
      const rel = [...prefix, name].join('/');
      let st;
      try {
        st = await fsp.lstat(atRaw(dir.fd, raw), { bigint: true });
      } catch {
        continue;
      }
      if (st.isFile()) {
        out.push({ path: rel, size_bytes: Number(st.size), mime_type: mimeOf(name), modified_at: Number(st.mtimeNs) / 1e9 });
      } else if (st.isDirectory() && opts.recursive) {
        out.push({ path: rel, size_bytes: 0, mime_type: null, modified_at: Number(st.mtimeNs) / 1e9, is_dir: true });
        if (depth >= 64) continue;
        let sub: fsp.FileHandle;
        try {
          sub = await fsp.open(atRaw(dir.fd, raw), DIR_FLAGS);
        } catch {
          continue;
        }
        try {
          await this.walk(sub, [...prefix, name], opts, mimeOf, out, depth + 1);
        } finally {
          await sub.close();
        }
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
