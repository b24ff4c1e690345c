/**
 * The server side of sandbox-host/devpts-cap.py: sets up the network namespace of each
 * bubblewrap sandbox as the spec's `network` says (lo's MTU and GSO, per-namespace TCP
 * sysctls; bwrap has no option for them), and caps the private devpts of each
 * bubblewrap sandbox at the spec's `ptysMax` (bwrap's --dev mounts it without max=, so
 * one sandbox could otherwise open ptys up to the host's kernel.pty.max, for every other
 * sandbox and the host to find none left). The template builds its devpts with max= itself.
 *
 * How a launch uses it (launcher.ts): bwrap gets --block-fd, builds the whole sandbox and
 * waits on that descriptor before it loads the seccomp filter and runs the program; once
 * bwrap reports its child's pid, cap() asks the helper to reconfigure that sandbox's
 * devpts (from inside the sandbox's own user and mount namespaces, so nothing else can be
 * changed); only when it answers is the block descriptor written. A cap that fails kills
 * the sandbox before any of its code ran.
 *
 * Wire: JSON lines on the helper's stdin and stdout (see the script). One helper per
 * server, started at start-up (a helper that cannot start stops the start: bubblewrap's
 * sandbox would differ from its description); restarted at the next cap() if it dies,
 * which fails the requests it held. Requests in flight are bounded by the launches in
 * flight; a line from the helper is at most 64 KiB.
 */
import type { Logger } from '../log.js';
import { HostHelper } from './host-helper.js';
import type { SandboxIpc, SandboxNetwork } from './spec.js';
import type { SandboxOverlay } from './bwrap-args.js';

export interface DevptsCapRequest {
  /** bwrap's child (its "child-pid"), whose mount namespace holds the devpts. */
  pid: number;
  /** The outer bwrap, the server's own child: the helper checks it is `pid`'s parent. */
  parent: number;
  max: number;
  /** The options the devpts was mounted with, which a reconfiguration must repeat. */
  options: string;
  /** Set up in the sandbox's network namespace first (lo, sysctls: spec.ts). */
  network: SandboxNetwork;
  /** Set in the sandbox's ipc namespace first (its limits: spec.ts). */
  ipc: SandboxIpc;
  /** Mounted on the bare folders bwrap made, from inside the sandbox (spec.ts
   * `overlay`; bwrap-args.ts). */
  overlays: readonly SandboxOverlay[];
  /** Folders bound over themselves, read-only, once the tree is built (spec `proc`'s sys). */
  selfBinds: readonly string[];
  /** Folders covered by an empty read-only tmpfs once the tree is built (bwrap's init's
   * /proc/1: spec `proc`). */
  covers: readonly string[];
}

export class DevptsCap {
  private constructor(private readonly helper: HostHelper) {}

  /** Starts the helper; rejects if it does not run. */
  static async start(python: string, script: string, log?: Pick<Logger, 'warn'>): Promise<DevptsCap> {
    return new DevptsCap(await HostHelper.start('devpts', python, script, [], log));
  }

  /** Resolves once the devpts of `req.pid`'s sandbox holds at most `req.max` ptys;
   * rejects if it cannot be capped, or on `signal` (the sandbox ended first). */
  cap(req: DevptsCapRequest, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new Error('the sandbox ended'));
    return this.helper
      .request({ ...req }, signal, (id) => ({ id, cancel: true }))
      .catch((e: unknown) => {
        throw signal.aborted ? new Error('the sandbox ended') : e;
      });
  }

  /** At shutdown, after every sandbox is gone. */
  close(): Promise<void> {
    return this.helper.close();
  }
}
