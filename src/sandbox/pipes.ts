/**
 * Pipes for the stdio and the control channel of bubblewrap launches.
 *
 * Node gives a child Unix socket pairs for 'pipe' stdio, and a socket belongs to the
 * network namespace it was made in: the server's. Inherited into a sandbox, such a socket
 * lets code read the host's network interfaces (SIOCGIF* ioctls) and take abstract socket
 * names in the host's namespace (bind() on it), whatever namespace the sandbox has. Pipes
 * are not sockets. Node has no pipe(), so each launch takes fresh FIFOs, made ahead in
 * batches by mkfifo in a folder of the server's own (0700), opens both ends and unlinks
 * them at once: from then on they are anonymous pipes that nothing else can open.
 *
 * The end a sandbox gets is opened blocking (programs expect that); the server's end is
 * non-blocking and wrapped in a net.Socket, which libuv drives as a pipe. Opens and unlinks
 * are synchronous calls on the server's own folder, where nothing waits (each end's
 * counterpart is open before it): a start never queues behind libuv's thread pool, which
 * a session's file work can hold (docs/threat-model.md, rule 3).
 */
import { constants, promises as fsp, close, closeSync, openSync, unlinkSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const { O_RDONLY, O_WRONLY, O_NONBLOCK } = constants;

/** A pipe the sandbox writes (`childFd`, its write end) and the server reads (`server`). */
export interface OutPipe {
  childFd: number;
  server: Socket;
}

/** A FIFO still on disk, for another process to open its write end by `path`; until
 * `release()` (idempotent: unlinks it) the server holds a write end too, so its read
 * end sees no end of file before that process has opened its own. */
export interface NamedOutPipe {
  path: string;
  server: Socket;
  release(): void;
}

/** A pipe the server writes (`server`) and the sandbox reads (`childFd`). */
export interface InPipe {
  childFd: number;
  server: Socket;
}

export class Pipes {
  private stock: string[] = [];
  private making: Promise<void> | null = null;
  private made = 0;
  private readonly prefix = randomBytes(4).toString('hex');

  private constructor(
    private readonly dir: string,
    /** FIFOs made per mkfifo run. A run is a fork of the server, which holds its event
     * loop for milliseconds (4 ms per run in a profile of bash commands, with a heap of
     * ~100 MB): 256 FIFOs a run are one such stall per 128 bash commands. */
    private readonly batch: number,
  ) {}

  /** `dir` is the server's own: emptied and made 0700 here. */
  static async create(dir: string, batch = 256): Promise<Pipes> {
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { mode: 0o700 });
    const p = new Pipes(dir, batch);
    await p.refill();
    return p;
  }

  private refill(): Promise<void> {
    if (!this.making) {
      const names = Array.from({ length: this.batch }, () => `${this.dir}/${this.prefix}-${this.made++}`);
      // 0666: code in the sandbox reopens its own stdout by /dev/stdout (/proc/self/fd/1),
      // which checks the FIFO's mode. Nobody else can reach one: the folder is ours (0700)
      // until it is unlinked, and after that only the /proc fd links of the session's own
      // processes lead to it.
      this.making = execFileP('/usr/bin/mkfifo', ['-m', '666', '--', ...names], { env: { PATH: '/usr/bin:/bin' } })
        .then(
          () => {
            this.stock.push(...names);
          },
          async (e: unknown) => {
            // (mkfifo stops at the first failure: what it made before is removed, not stranded)
            await Promise.all(names.map((n) => fsp.unlink(n).catch(() => {})));
            throw e;
          },
        )
        .finally(() => {
          this.making = null;
        });
    }
    return this.making;
  }

  private async take(): Promise<string> {
    for (;;) {
      const path = this.stock.pop();
      if (this.stock.length < this.batch / 4) void this.refill().catch(() => {});
      if (path !== undefined) return path;
      await this.refill();
    }
  }

  /** Removes the folder and the FIFOs not used (at shutdown). */
  async close(): Promise<void> {
    const spare = this.spare;
    this.spare = null;
    this.closed = true;
    for (const p of (await spare?.catch(() => null)) ?? []) discardNamed(p);
    await this.making?.catch(() => {});
    this.stock = [];
    await fsp.rm(this.dir, { recursive: true, force: true }).catch(() => {});
  }

  /** The sandbox writes, the server reads. (Synchronous calls, as outNamed.) */
  async out(): Promise<OutPipe> {
    const path = await this.take();
    try {
      const serverFd = openSync(path, O_RDONLY | O_NONBLOCK);
      try {
        const childFd = openSync(path, O_WRONLY); // a reader exists: does not block
        return { childFd, server: new Socket({ fd: serverFd, readable: true, writable: false }) };
      } catch (e) {
        closeSync(serverFd);
        throw e;
      }
    } finally {
      unlinkQuietly(path);
    }
  }

  /** The stdout and stderr of a command, opened ahead: each call takes the pair opened
   * after the previous one (four opens less on a command's way; a pair waiting for its
   * command holds four descriptors and two FIFOs of the folder). */
  outNamedPair(): Promise<[NamedOutPipe, NamedOutPipe]> {
    const pair = this.spare ?? this.openNamedPair();
    this.spare = this.closed ? null : this.openNamedPair();
    // (a pair that could not be opened is not kept: the next call tries anew)
    const spare = this.spare;
    spare?.catch(() => {
      if (this.spare === spare) this.spare = null;
    });
    return pair;
  }

  private spare: Promise<[NamedOutPipe, NamedOutPipe]> | null = null;
  private closed = false;

  private async openNamedPair(): Promise<[NamedOutPipe, NamedOutPipe]> {
    const first = await this.outNamed();
    try {
      return [first, await this.outNamed()];
    } catch (e) {
      discardNamed(first);
      throw e;
    }
  }

  /** Another process (the command zygote) opens the write end by its path. Opened and
   * unlinked with synchronous calls: a FIFO of the server's own folder, non-blocking, so
   * they never wait (a few microseconds each), and a bash command's start never waits for
   * libuv's thread pool, which a session's file work can hold (threat model, rule 3). */
  async outNamed(): Promise<NamedOutPipe> {
    const path = await this.take();
    let serverFd = -1;
    let holdFd = -1;
    try {
      serverFd = openSync(path, O_RDONLY | O_NONBLOCK);
      holdFd = openSync(path, O_WRONLY | O_NONBLOCK); // a reader exists: does not block
    } catch (e) {
      if (serverFd >= 0) closeSync(serverFd);
      unlinkQuietly(path);
      throw e;
    }
    let held = true;
    return {
      path,
      server: new Socket({ fd: serverFd, readable: true, writable: false }),
      release: () => {
        if (!held) return;
        held = false;
        closeSync(holdFd);
        unlinkQuietly(path);
      },
    };
  }

  /** The server writes, the sandbox reads. */
  async in(): Promise<InPipe> {
    const path = await this.take();
    // A reader first (a write end cannot be opened without one), then the write end, then
    // the sandbox's blocking read end (a writer exists: does not block).
    // (Synchronous calls, as outNamed.)
    try {
      const opener = openSync(path, O_RDONLY | O_NONBLOCK);
      try {
        const serverFd = openSync(path, O_WRONLY | O_NONBLOCK);
        let childFd: number;
        try {
          childFd = openSync(path, O_RDONLY);
        } catch (e) {
          closeSync(serverFd);
          throw e;
        }
        return { childFd, server: new Socket({ fd: serverFd, readable: false, writable: true }) };
      } finally {
        closeSync(opener);
      }
    } finally {
      unlinkQuietly(path);
    }
  }
}

/** A named pipe no process will use: closed, unlinked. */
function discardNamed(p: NamedOutPipe): void {
  p.release();
  p.server.destroy();
}

/** Closes descriptors the child has its own copies of. */
export function closeChildFds(fds: number[]): void {
  for (const fd of fds) close(fd, () => {});
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* gone already */
  }
}
