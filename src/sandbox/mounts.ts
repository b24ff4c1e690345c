/**
 * Host mounts the server makes for sessions: a size-capped tmpfs per box (its disk
 * quota). Needs root with CAP_SYS_ADMIN; canMountTmpfs() tells at start-up.
 */
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export async function mountTmpfs(dir: string, sizeMb: number, mode = '0711'): Promise<void> {
  // One inode per 4 KiB of quota: millions of empty files cannot exhaust memory or the
  // server's listings.
  await execFileP('/usr/bin/mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m,nr_inodes=${Math.max(1024, sizeMb * 256)},mode=${mode},nosuid,nodev`, 'sbx-workspace', dir]);
}

/** Lazy unmount: succeeds even while a dying process still holds a file open. */
export async function unmountLazy(dir: string): Promise<void> {
  await execFileP('/usr/bin/umount', ['-l', dir]).catch(() => {});
}

export async function canMountTmpfs(root: string): Promise<boolean> {
  const dir = `${root}/probe_mount_${randomBytes(4).toString('hex')}`;
  await fsp.mkdir(dir);
  try {
    await mountTmpfs(dir, 1);
    await execFileP('/usr/bin/umount', [dir]);
    return true;
  } catch {
    return false;
  } finally {
    await fsp.rmdir(dir).catch(() => {});
  }
}
