/**
 * What the server prepares once for the overlays of every sandbox (spec.ts `overlay`): a
 * folder with the layers SYSTEM_LAYERS names: links to the host's /usr and to the driver's
 * folder, copies of the allow-listed /etc entries with the sandbox's own passwd and group
 * (the sandbox's /etc), and an empty folder (the last lower layer of each overlay: without
 * an upper layer the kernel wants two). In `<sessions root>/.system`, made afresh at each
 * start and removed at a clean stop. The overlays name their layers relative to this
 * folder: a sandbox's mount table shows an overlay's layers as they were given, and host
 * paths (the sessions root, the install folder) are not for it to see.
 *
 * Why overlays and not binds: a bind shows the host's own inodes, and a lock (flock or
 * fcntl) on one of them is seen by the host and every other session, and a long list of
 * them slows every close of that file on the host (red team A, 2026-12-02: 20,000 read
 * locks on libc made each close of it 1.2 ms for every process). An overlay mounted in
 * each sandbox has inodes of its own; reads and mappings still reach the host's page
 * cache. The copies of /etc are taken at start: a change to the host's /etc (a new
 * certificate) reaches sandboxes at the server's next start.
 *
 * Overlays in a user namespace need Linux 5.11 or later (and no security module that
 * refuses them): overlaysWork() tries one the way the sandboxes will, and where it fails
 * the server binds the host's files as before (and says so in /health).
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import { SANDBOX_ETC_FILES, SYSTEM_LAYERS, type SystemTree } from './spec.js';

const execFileP = promisify(execFile);

export async function prepareSystemTree(root: string, etc: readonly string[], driverDir: string): Promise<SystemTree> {
  const tree: SystemTree = { dir: `${root}/.system` };
  await removeSystemTree(root);
  const etcDir = `${tree.dir}/${SYSTEM_LAYERS.etc}`;
  for (const d of [tree.dir, etcDir, `${tree.dir}/${SYSTEM_LAYERS.empty}`]) {
    await fsp.mkdir(d);
    await fsp.chmod(d, 0o755);
  }
  await fsp.symlink('/usr', `${tree.dir}/${SYSTEM_LAYERS.usr}`);
  await fsp.symlink(driverDir, `${tree.dir}/${SYSTEM_LAYERS.driver}`);
  for (const p of etc) {
    const dest = `${etcDir}${p.slice('/etc'.length)}`;
    await makeParents(etcDir, dest);
    // symbolic links stay links (most lead into /usr, which the sandbox has)
    await fsp.cp(p, dest, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  }
  for (const [p, content] of Object.entries(SANDBOX_ETC_FILES)) {
    const dest = `${etcDir}${p.slice('/etc'.length)}`;
    await fsp.writeFile(dest, content);
    await fsp.chmod(dest, 0o644);
  }
  return tree;
}

async function makeParents(top: string, path: string): Promise<void> {
  const parts = path
    .slice(top.length + 1)
    .split('/')
    .slice(0, -1);
  let at = top;
  for (const part of parts) {
    at = `${at}/${part}`;
    await fsp.mkdir(at).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    await fsp.chmod(at, 0o755);
  }
}

export async function removeSystemTree(root: string): Promise<void> {
  await fsp.rm(`${root}/.system`, { recursive: true, force: true });
}

/**
 * Whether a read-only overlay of the tree's layers can be mounted in a new user and mount
 * namespace here (as the sandboxes' builders will); the reason when it cannot.
 */
export async function overlaysWork(tree: SystemTree): Promise<{ ok: true } | { ok: false; reason: string }> {
  try {
    // (in a namespace of its own: the mount goes with the command)
    const lowers = `${SYSTEM_LAYERS.usr}:${SYSTEM_LAYERS.empty}`;
    await execFileP(
      '/usr/bin/unshare',
      ['--user', '--map-root-user', '--mount', '/usr/bin/mount', '-t', 'overlay', '-o', `ro,nosuid,nodev,lowerdir=${lowers}`, 'sbx-usr', SYSTEM_LAYERS.etc],
      {
        cwd: tree.dir,
        env: { PATH: '/usr/bin:/bin' },
        timeout: 30_000,
      },
    );
    return { ok: true };
  } catch (e) {
    const err = e as { stderr?: string; message?: string };
    return {
      ok: false,
      reason: String(err.stderr || err.message || e)
        .trim()
        .slice(0, 500),
    };
  }
}

/** The server's own copy of the interpreter the template runs (prepareProgramCopies). */
export interface ProgramCopies {
  /** /proc/self/exe of every forked interpreter. */
  python: string;
}

/**
 * A copy of the Python interpreter in `<root>/.bin`, made afresh at each start and removed
 * at a clean stop. A process's /proc/self/exe reaches the file it was started from whatever
 * the mount namespace: for an interpreter forked from the template, the template's
 * /usr/bin/python3.11, the host's inode, where a lock was seen host-wide and slowed every
 * close of it for every python3 on the host (red team of 2026-12-03: 23 ms per close at
 * 36,000 locks). The copy is the server's own inode, shared by its interpreters.
 */
export async function prepareProgramCopies(root: string, programs: { python: string }): Promise<ProgramCopies> {
  const dir = `${root}/.bin`;
  await removeProgramCopies(root);
  await fsp.mkdir(dir);
  await fsp.chmod(dir, 0o711);
  const copies: ProgramCopies = { python: `${dir}/python3` };
  await fsp.copyFile(await fsp.realpath(programs.python), copies.python);
  await fsp.chmod(copies.python, 0o755);
  return copies;
}

export async function removeProgramCopies(root: string): Promise<void> {
  await fsp.rm(`${root}/.bin`, { recursive: true, force: true });
}
