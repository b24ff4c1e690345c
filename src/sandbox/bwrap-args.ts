/**
 * The sandbox description (spec.ts) rendered as a bubblewrap command line. Pure: builds
 * argv, starts nothing. Each spec field maps to the flags below; a field with no flag
 * here would be a field bubblewrap launches do not carry out, which the unit test of
 * this file and the start-up probe both catch.
 *
 * File descriptors bwrap itself reads (consumed by bwrap, not passed on):
 *   FD.args (the options, NUL-separated, so /proc/1/cmdline shows none of them),
 *   FD.seccomp (cBPF), FD.status (json status), FD.block (bwrap waits for a byte on it
 *   once the sandbox is built, before the seccomp filter and the program: the server caps
 *   the devpts meanwhile, devpts-cap.ts), then one descriptor per `data` mount (its
 *   content), from FD.firstData up.
 * fds 3 and 4 are left for the sandboxed program (the interpreter's control channel).
 *
 * `dev` is --dev, whose devpts has DEVPTS_OPTIONS and no max=: the spec's `ptysMax` is
 * returned as `devpts` for the launcher to apply before the block descriptor is written,
 * with the spec's `network` (lo's MTU and GSO, sysctls), which the same helper sets up.
 *
 * `overlay` has no option in this bubblewrap (0.8: overlays came with 0.9, and those are
 * not made in the sandbox's own user namespace's name): bwrap makes the folder where the
 * overlay goes, and the same helper mounts the overlay there from inside the sandbox's
 * namespaces while bwrap waits (`devpts.overlays`); no program of the sandbox sees the
 * folder bare. (Not a bind of the first layer: the mount table would show its host path.)
 */
import type { Rlimit } from '../limits.js';
import { DEVICE_NODES, DEVPTS_OPTIONS, type SandboxIpc, type SandboxNetwork, type SandboxSpec } from './spec.js';

export const FD = { args: 5, seccomp: 6, status: 7, block: 8, firstData: 9 } as const;

export interface BwrapCommand {
  /** What bwrap reads from FD.args. */
  options: string[];
  /** Content for each extra descriptor (the `data` mounts). */
  dataFds: { fd: number; content: string }[];
  /** prlimit … --, run inside the user namespace, before the program. */
  prefix: string[];
  /** The cap the launcher puts on the devpts of `dev` while bwrap waits on FD.block
   * (null: no `dev`, nothing to wait for), with the network namespace's set-up (spec
   * `network`, which bwrap has no option for) made just before. */
  devpts: { max: number; options: string; network: SandboxNetwork; ipc: SandboxIpc; overlays: SandboxOverlay[]; selfBinds: string[]; covers: string[] } | null;
}

/** An overlay the helper mounts over the bind of its first layer (spec `overlay`). */
export interface SandboxOverlay {
  dir: string;
  lowers: readonly string[];
  dest: string;
}

export function renderBwrap(spec: SandboxSpec): BwrapCommand {
  const o: string[] = [];
  const dataFds: { fd: number; content: string }[] = [];
  let devpts: BwrapCommand['devpts'] = null;
  const overlays: SandboxOverlay[] = [];
  const selfBinds: string[] = [];
  const covers: string[] = [];
  // identity and namespaces: non-root inside (mapped to the unprivileged host uid bwrap
  // runs as), no nested user namespaces, and a namespace of every kind.
  o.push('--unshare-user', '--uid', String(spec.user.uid), '--gid', String(spec.user.gid));
  if (spec.disableUserns) o.push('--disable-userns');
  const flagOf: Record<string, string> = { pid: '--unshare-pid', ipc: '--unshare-ipc', uts: '--unshare-uts', net: '--unshare-net', cgroup: '--unshare-cgroup-try' };
  for (const ns of spec.namespaces) if (flagOf[ns]) o.push(flagOf[ns]);
  o.push('--hostname', spec.hostname);
  // lifecycle: setsid() so there is no controlling terminal (no TIOCSTI injection);
  // die with the server as a backup to the explicit kill of the pid-namespace init.
  if (spec.newSession) o.push('--new-session');
  o.push('--die-with-parent');
  if (spec.capabilities === 'none') o.push('--cap-drop', 'ALL');
  o.push('--json-status-fd', String(FD.status));
  // environment: cleared, then only what the spec lists.
  o.push('--clearenv');
  for (const [k, v] of Object.entries(spec.env)) o.push('--setenv', k, v);
  for (const m of spec.mounts) {
    switch (m.op) {
      case 'bind':
        o.push(`${m.readonly ? '--ro-bind' : '--bind'}${m.optional ? '-try' : ''}`, m.source, m.dest);
        break;
      case 'overlay':
        o.push('--perms', '0755', '--dir', m.dest);
        overlays.push({ dir: m.dir, lowers: m.lowers, dest: m.dest });
        break;
      case 'data': {
        const fd = FD.firstData + dataFds.length;
        dataFds.push({ fd, content: m.content });
        o.push('--ro-bind-data', String(fd), m.dest);
        break;
      }
      case 'symlink':
        o.push('--symlink', m.target, m.dest);
        break;
      case 'proc':
        // (bwrap covers sys only where the folder itself is writable: the helper binds it
        // over itself, read-only, while bwrap waits; and bwrap's init, pid 1, is dumpable
        // and the sandbox's uid: the helper hides its folder; spec.ts MountOp)
        o.push('--proc', m.dest);
        selfBinds.push(`${m.dest}/sys`);
        covers.push(`${m.dest}/1`);
        break;
      case 'dev':
        o.push('--dev', m.dest);
        // (bwrap's --dev binds the host's nodes: the box's own go over them)
        if (m.nodes !== null) for (const node of DEVICE_NODES) o.push('--dev-bind', `${m.nodes}/${node}`, `${m.dest}/${node}`);
        devpts = { max: m.ptysMax, options: DEVPTS_OPTIONS, network: spec.network, ipc: spec.ipc, overlays, selfBinds, covers };
        break;
      case 'tmpfs':
        o.push('--perms', m.mode.toString(8).padStart(4, '0'), '--size', String(m.sizeBytes), '--tmpfs', m.dest);
        break;
      case 'remount-ro':
        o.push('--remount-ro', m.dest);
        break;
      default: {
        const never: never = m;
        throw new Error(`unknown mount op ${JSON.stringify(never)}`);
      }
    }
  }
  o.push('--chdir', spec.cwd);
  if (devpts) o.push('--block-fd', String(FD.block));
  // seccomp last: it also applies to bwrap's init; bwrap sets no_new_privs with it
  o.push('--seccomp', String(FD.seccomp));
  return { options: o, dataFds, prefix: prlimitPrefix(spec.rlimits), devpts };
}

/** prlimit argv prefix (RLIMIT_NPROC counts per user namespace and uid, so it is set inside). */
export function prlimitPrefix(rlimits: readonly Rlimit[]): string[] {
  const v = (n: number) => (n < 0 ? 'unlimited' : String(n));
  return ['/usr/bin/prlimit', ...rlimits.map((r) => `--${r.resource}=${v(r.soft)}:${v(r.hard)}`), '--'];
}
