/**
 * Host mounts the server makes for sessions: a size-capped tmpfs per box (its disk
 * quota). Needs root with CAP_SYS_ADMIN; canMountTmpfs() tells at start-up.
 *
 * A root server makes them through one helper process (sandbox-host/mounter.py: a mount
 * or umount system call per request, for folders directly under the sessions root only),
 * not by running /usr/bin/mount and /usr/bin/umount per box: each of those is a fork of
 * the server and libmount reading the host's mount table, 5-50 ms of CPU per create and
 * per delete (measured on the 2-core machine), against well under a millisecond. Without
 * the helper (it could not start) the programs are used.
 */
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { HostHelper } from './host-helper.js';

const execFileP = promisify(execFile);

/** One inode per 4 KiB of quota: millions of empty files cannot exhaust memory or the
 * server's listings. */
const inodesFor = (sizeMb: number) => Math.max(1024, sizeMb * 256);

export class Mounts {
  /** `helper`: sandbox-host/mounter.py for this sessions root; null: the mount programs. */
  constructor(private readonly helper: HostHelper | null) {}

  async mountTmpfs(dir: string, sizeMb: number, mode = '0711'): Promise<void> {
    if (this.helper) {
      await this.helper.request({ op: 'mount', dir, size_mb: sizeMb, nr_inodes: inodesFor(sizeMb), mode });
      return;
    }
    await execFileP('/usr/bin/mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m,nr_inodes=${inodesFor(sizeMb)},mode=${mode},nosuid,nodev`, 'sbx-workspace', dir]);
  }

  /** Lazy unmount: succeeds even while a dying process still holds a file open; never
   * throws (a folder that is not mounted is fine). */
  async unmountLazy(dir: string): Promise<void> {
    if (this.helper) {
      await this.helper.request({ op: 'umount', dir }).catch(() => this.unmountWithProgram(dir));
      return;
    }
    await this.unmountWithProgram(dir);
  }

  private async unmountWithProgram(dir: string): Promise<void> {
    await execFileP('/usr/bin/umount', ['-l', dir]).catch(() => {});
  }

  /** Whether a tmpfs can be mounted under `root` (and unmounted again). */
  async canMountTmpfs(root: string): Promise<boolean> {
    const dir = `${root}/probe_mount_${randomBytes(4).toString('hex')}`;
    await fsp.mkdir(dir);
    try {
      await this.mountTmpfs(dir, 1);
      // (a new file system: a device of its own)
      const mounted = (await fsp.stat(dir)).dev !== (await fsp.stat(root)).dev;
      await this.unmountLazy(dir);
      return mounted;
    } catch {
      return false;
    } finally {
      await fsp.rmdir(dir).catch(() => {});
    }
  }
}
