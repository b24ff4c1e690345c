/**
 * Processes and threads: the host counts them all together against `kernel.pid_max` (every
 * task takes a pid of the host's pid namespace, whatever namespaces it sits in) and
 * `kernel.threads-max`. When they run out, every fork on the host fails with EAGAIN: the
 * server's own spawns, other sessions' and the host's. SANDBOX_SESSION_PIDS_MAX times
 * SANDBOX_MAX_SESSIONS (1,024 x 256 = 262,144 by default) can be far more than a host has
 * (pid_max is 32,768 on many), so the per-session limit in force is lowered until all
 * sessions together stay within a share of the smaller of the two (serverShare; the
 * rest is the host's, the server's own and other servers'), and the start-up log and
 * /health say so.
 *
 * Several servers on one host share the same pids (and the same TCP memory,
 * tcp-memory.ts): all of them together keep their sessions within ALL_SERVERS_SHARE of
 * each host-wide budget. Each server states what it would take at most (its need: its
 * sessions times their limit) in its uid claim (uid-claims.ts), and takes the smaller of
 * its need and half of what the live servers older than it leave (`serverBudget`, which
 * works the older servers' parts out from their needs, oldest first). A small server
 * (a test's, a few sessions) takes only its need and leaves the rest; a large one never
 * takes more than half of what is left. Each server's part is at most half of what the
 * older ones leave, worked out from needs that give each older server at least what it
 * took itself (a server that stopped since only leaves more), so the parts of any set of
 * live servers add up to ALL_SERVERS_SHARE at most.
 *
 * Limits: a session needs a few processes to work at all (its sandbox's init, the
 * interpreter and its threads, a bash command's init and bash), so the per-session
 * limit is never lowered below MIN_SESSION_TASKS; where even that does not fit, the
 * report says the host can still run out, and which settings to change.
 */
import { readFileSync } from 'node:fs';

/** The share of a host-wide budget (tasks, TCP memory) the sessions of all servers on the
 * host may hold together. */
export const ALL_SERVERS_SHARE = 0.5;

/** What one server's sessions may hold together of a host-wide budget `host` (tasks, or
 * TCP bytes): the smaller of `need` and half of what the older servers leave, their parts
 * worked out the same way from their needs (`olderNeeds`, oldest first). */
export function serverBudget(host: number, olderNeeds: readonly number[], need: number, share: number = ALL_SERVERS_SHARE, take = 0.5): number {
  let left = host * share;
  for (const n of olderNeeds) left -= Math.min(Math.max(0, n), left * take);
  return Math.max(0, Math.min(need, Math.floor(left * take)));
}

/** Memory (the host's MemTotal): all servers' sessions together keep within this share of
 * it, each server taking at most MEMORY_TAKE of what the older ones leave (a server alone:
 * 56 %). Sessions' own limits add up to far more (256 x 2.6 GiB by default): the server's
 * parent memory cgroup holds them to this part, so a host never runs out of memory for
 * them; what is past it is the OOM killer's in the parent, never the host's. */
export const ALL_SERVERS_MEMORY_SHARE = 0.75;
export const MEMORY_TAKE = 0.75;

/** The host's MemTotal in bytes, or null. */
export function hostMemoryBytes(): number | null {
  try {
    const m = /^MemTotal:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** The lowest per-session limit the server lowers to (SANDBOX_SESSION_PIDS_MAX's minimum). */
export const MIN_SESSION_TASKS = 16;

export interface HostTasksBound {
  /** The per-session limit in force (SANDBOX_SESSION_PIDS_MAX, or lower). */
  perSession: number;
  /** True when perSession is below the configured SANDBOX_SESSION_PIDS_MAX. */
  lowered: boolean;
  /** min(kernel.pid_max, kernel.threads-max); null: neither readable. */
  hostTasks: number | null;
  /** True when all sessions at perSession could still pass the share of hostTasks. */
  hostExhaustible: boolean;
  /** The /health text. */
  text: string;
}

export function hostTasksBound(opts: {
  sessionPidsMax: number;
  maxSessions: number;
  pidMax: number | null;
  threadsMax: number | null;
  /** The task needs of the live servers on the host older than this one, oldest first. */
  olderNeeds: readonly number[];
}): HostTasksBound {
  const known = [opts.pidMax, opts.threadsMax].filter((n): n is number => n !== null && Number.isFinite(n) && n > 0);
  const hostTasks = known.length > 0 ? Math.min(...known) : null;
  if (hostTasks === null) {
    return {
      perSession: opts.sessionPidsMax,
      lowered: false,
      hostTasks,
      hostExhaustible: true,
      text: `at most ${opts.sessionPidsMax} per session (SANDBOX_SESSION_PIDS_MAX); the host's kernel.pid_max and kernel.threads-max are unreadable`,
    };
  }
  const share = serverBudget(hostTasks, opts.olderNeeds, opts.sessionPidsMax * opts.maxSessions);
  const others = opts.olderNeeds.length;
  const part = `this server's part (${share}${others > 0 ? `, after ${others} older server${others > 1 ? 's' : ''} on the host` : ''})`;
  const fair = Math.floor(share / opts.maxSessions);
  const perSession = Math.min(opts.sessionPidsMax, Math.max(fair, MIN_SESSION_TASKS));
  const lowered = perSession < opts.sessionPidsMax;
  const total = perSession * opts.maxSessions;
  const hostExhaustible = total > share;
  const host = `the host's ${hostTasks} tasks (the smaller of kernel.pid_max ${opts.pidMax ?? 'unreadable'} and kernel.threads-max ${opts.threadsMax ?? 'unreadable'})`;
  const each = lowered
    ? `at most ${perSession} per session (SANDBOX_SESSION_PIDS_MAX ${opts.sessionPidsMax}, lowered for ${opts.maxSessions} sessions to stay within ${part} of ${host})`
    : `at most ${perSession} per session (SANDBOX_SESSION_PIDS_MAX)`;
  const whole = hostExhaustible
    ? `${opts.maxSessions} sessions could still hold ${total}, past ${part} of ${host}: lower SANDBOX_MAX_SESSIONS or raise kernel.pid_max`
    : lowered
      ? `${total} for all sessions together`
      : `${total} for all sessions together, within ${part} of ${host}`;
  return { perSession, lowered, hostTasks, hostExhaustible, text: `${each}; ${whole}` };
}

/** kernel.pid_max and kernel.threads-max, each null when unreadable. */
export function hostTaskLimits(): { pidMax: number | null; threadsMax: number | null } {
  const read = (name: string) => {
    try {
      const n = Number(readFileSync(`/proc/sys/kernel/${name}`, 'utf8').trim());
      return Number.isFinite(n) && n > 0 ? n : null;
    } catch {
      return null;
    }
  };
  return { pidMax: read('pid_max'), threadsMax: read('threads-max') };
}

/** Whether a failure to start a sandbox came from a fork or clone the kernel refused for
 * want of tasks (EAGAIN: a pids cgroup, RLIMIT_NPROC, kernel.pid_max or threads-max), as
 * the starters word it: Node's spawn error, Python's BlockingIOError, bwrap's perror. */
export function isOutOfTasks(text: string): boolean {
  return /\bEAGAIN\b|Resource temporarily unavailable|\[Errno 11\]/.test(text);
}

/** Whether a failure to start a sandbox came from the kernel refusing memory (ENOMEM: a
 * fork, or a cgroup move whose kernel objects are charged to the memory cgroup the starter
 * has joined, when the session's or the sessions' memory is full), as the starters word it. */
export function isOutOfMemory(text: string): boolean {
  return /\bENOMEM\b|Cannot allocate memory|\[Errno 12\]/.test(text);
}
