/**
 * Host mounts the server makes for sessions: a size-capped tmpfs per box (its disk
 * quota), and in it the box's own device nodes (`devices/`: null, zero, full, random,
 * urandom, tty, in a tiny read-only tmpfs without nodev; spec.ts `dev`). Needs root with
 * CAP_SYS_ADMIN (and CAP_MKNOD for the nodes); canMountTmpfs() and canMakeDevices() tell
 * at start-up.
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

  /** `devices`: its own device nodes too (makeDevices), in the same request: a box deleted
   * while it is made is unmounted after both, never between (the helper only). */
  async mountTmpfs(dir: string, sizeMb: number, mode = '0711', devices = false): Promise<void> {
    if (this.helper) {
      await this.helper.request({ op: 'mount', dir, size_mb: sizeMb, nr_inodes: inodesFor(sizeMb), mode, devices });
      return;
    }
    if (devices) throw new Error('device nodes of its own need the mount helper');
    await execFileP('/usr/bin/mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m,nr_inodes=${inodesFor(sizeMb)},mode=${mode},nosuid,nodev`, 'sbx-workspace', dir]);
  }

  /** The box folder `dir`'s own device nodes, in `dir`/devices (the mount helper only). */
  async makeDevices(dir: string): Promise<void> {
    if (!this.helper) throw new Error('device nodes of its own need the mount helper');
    await this.helper.request({ op: 'devices', dir });
  }

  /** Lazy unmount of `dir` (and of its devices): succeeds even while a dying process still
   * holds a file open; never throws (a folder that is not mounted is fine). */
  async unmountLazy(dir: string): Promise<void> {
    if (this.helper) {
      await this.helper.request({ op: 'umount', dir }).catch(() => this.unmountWithProgram(dir));
      return;
    }
    await this.unmountWithProgram(dir);
  }

  private async unmountWithProgram(dir: string): Promise<void> {
    // (no devices without the helper)
    await execFileP('/usr/bin/umount', ['-l', dir]).catch(() => {});
  }

  /** Whether device nodes of a box's own can be made under `root` (and removed again). */
  async canMakeDevices(root: string): Promise<boolean> {
    if (!this.helper) return false;
    const dir = `${root}/probe_devices_${randomBytes(4).toString('hex')}`;
    await fsp.mkdir(dir);
    try {
      await this.makeDevices(dir);
      const st = await fsp.stat(`${dir}/devices/null`);
      return st.isCharacterDevice() && st.rdev === (await fsp.stat('/dev/null')).rdev;
    } catch {
      return false;
    } finally {
      await this.unmountLazy(dir);
      await fsp.rm(dir, { recursive: true, force: true }).catch(() => {});
    }
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
