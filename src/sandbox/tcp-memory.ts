/**
 * TCP buffer memory is host-wide: `net.ipv4.tcp_mem` (min, pressure, max; in pages) bounds
 * every TCP socket of the host together, whatever network namespace it is in (a session's
 * loopback included). Past `pressure` the kernel shrinks every socket's buffers; past
 * `max` it refuses them, and connections of other sessions and of the host stall or are
 * reset. A session's own bound must therefore be a share of it, not its memory limit
 * (first red team of issue 10: one session's filled loopback sockets, allowed 2.6 GiB
 * against a host `max` of 2.2 GiB, reset another session's loopback transfer).
 *
 * cgroup v1 (`memory.kmem.tcp.limit_in_bytes`, which cgroups.ts sets on each leaf and,
 * times the sessions, on the server's parent): a session gets the smaller of its memory
 * limit, SESSION_TCP_WANT_BYTES and an equal part of the server's part of `pressure`
 * (host-tasks.ts `serverBudget`: all servers on the host together hold at most half of
 * it), never below
 * MIN_SESSION_TCP_BYTES, so all sessions of all servers together stay below the pressure
 * point. cgroup
 * v2 has no TCP limit of its own: socket buffers are charged to `memory.max`, and what
 * keeps all sessions below `tcp_mem` is only their memory limits together; this module
 * says whether they do (`hostExhaustible`), and /health and the start-up log repeat it.
 */
import { readFileSync } from 'node:fs';
import { serverBudget } from './host-tasks.js';

const MiB = 1024 * 1024;
/** The lowest per-session TCP limit (enough for loopback work: buffers shrink, transfers go on). */
export const MIN_SESSION_TCP_BYTES = MiB;
/** The most a session's TCP buffers may want: a sandbox has no network but its own
 * loopback, where a few MiB of buffers move data at full speed (#K9 moves 16 MiB through
 * one MiB). A server's need of the host's TCP memory is this times its sessions. */
export const SESSION_TCP_WANT_BYTES = 16 * MiB;

/** A session's TCP want: SESSION_TCP_WANT_BYTES, or its memory limit if smaller. */
export function sessionTcpWant(memoryBytes: number): number {
  return Math.min(memoryBytes, SESSION_TCP_WANT_BYTES);
}

/** tcp_mem in bytes. */
export interface TcpMem {
  min: number;
  pressure: number;
  max: number;
}

export interface TcpMemoryBound {
  /** The per-session TCP limit (cgroup v1's kmem.tcp), bytes. */
  perSessionBytes: number;
  /** True when it is below the session's memory limit. */
  lowered: boolean;
  /** True when all sessions at their bound could pass tcp_mem's pressure threshold (v1) or its max (v2). */
  hostExhaustible: boolean;
  /** The /health text (after the cgroup's own wording). */
  text: string;
}

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

/** `memoryBytes`: a session's memory cgroup limit; `perSessionLimit`: whether the kernel
 * has a TCP limit per session (cgroup v1's kmem.tcp) or only the memory limit (v2). */
export function tcpMemoryBound(opts: {
  memoryBytes: number;
  maxSessions: number;
  tcpMem: TcpMem | null;
  perSessionLimit: boolean;
  /** The TCP needs of the live servers on the host older than this one, oldest first. */
  olderNeeds: readonly number[];
}): TcpMemoryBound {
  const { memoryBytes, maxSessions, tcpMem } = opts;
  if (tcpMem === null) {
    return { perSessionBytes: memoryBytes, lowered: false, hostExhaustible: true, text: "the host's net.ipv4.tcp_mem is unreadable" };
  }
  const host = `net.ipv4.tcp_mem: pressure ${mib(tcpMem.pressure)}, max ${mib(tcpMem.max)}, host-wide`;
  if (!opts.perSessionLimit) {
    const total = memoryBytes * maxSessions;
    const hostExhaustible = total > tcpMem.max;
    return {
      perSessionBytes: memoryBytes,
      lowered: false,
      hostExhaustible,
      text: hostExhaustible
        ? `a session's TCP buffers are bounded by its memory limit only (${mib(memoryBytes)}); ${maxSessions} sessions together could pass the host's TCP memory (${host}) and stall other connections: lower SANDBOX_MAX_SESSIONS or the memory settings`
        : `a session's TCP buffers are bounded by its memory limit (${mib(memoryBytes)}); ${maxSessions} sessions together stay below the host's TCP memory (${host})`,
    };
  }
  const page = 4096;
  const want = sessionTcpWant(memoryBytes);
  const budget = serverBudget(tcpMem.pressure, opts.olderNeeds, want * maxSessions);
  const share = Math.floor(budget / maxSessions / page) * page;
  const others = opts.olderNeeds.length;
  const part = `this server's part (${mib(budget)}${others > 0 ? `, after ${others} older server${others > 1 ? 's' : ''} on the host` : ''}) of the host's TCP pressure threshold`;
  const perSessionBytes = Math.min(want, Math.max(share, MIN_SESSION_TCP_BYTES));
  const lowered = perSessionBytes < memoryBytes;
  const total = perSessionBytes * maxSessions;
  const hostExhaustible = total > budget;
  const why = perSessionBytes < want ? `a 1/${maxSessions} part of ${part}` : perSessionBytes < memoryBytes ? 'what a session may want' : "the session's memory limit";
  const whole = hostExhaustible
    ? `${maxSessions} sessions together could still hold ${mib(total)}, past ${part} (${host}): lower SANDBOX_MAX_SESSIONS`
    : `${maxSessions} sessions together at most ${mib(total)}, within ${part} (${host})`;
  return { perSessionBytes, lowered, hostExhaustible, text: `TCP buffers capped at ${mib(perSessionBytes)} per session (${why}); ${whole}` };
}

/** net.ipv4.tcp_mem in bytes (pages times the page size), or null. */
export function hostTcpMem(): TcpMem | null {
  try {
    const pages = readFileSync('/proc/sys/net/ipv4/tcp_mem', 'utf8').trim().split(/\s+/).map(Number);
    if (pages.length !== 3 || pages.some((n) => !Number.isFinite(n) || n <= 0)) return null;
    const page = pageBytes();
    return { min: pages[0]! * page, pressure: pages[1]! * page, max: pages[2]! * page };
  } catch {
    return null;
  }
}

/** The kernel's page size (tcp_mem's unit), from this process's first mapping; else 4 KiB. */
function pageBytes(): number {
  try {
    const m = /^KernelPageSize:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/smaps', 'utf8'));
    return m ? Number(m[1]) * 1024 : 4096;
  } catch {
    return 4096;
  }
}
