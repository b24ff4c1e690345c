/**
 * Open files: the kernel has no per-cgroup count of them, only the host-wide
 * `fs.file-max`. A session's share is bounded by RLIMIT_NOFILE per process times its
 * processes (the pids cgroup counts every task of the session; without one, only each
 * sandbox's RLIMIT_NPROC bounds them, and a session has several sandboxes). This says
 * what that bound is and whether all sessions together could reach `fs.file-max`.
 */
import { readFileSync } from 'node:fs';

export interface OpenFilesBound {
  /** Files one session can hold open at most; null: no session-wide bound (no pids cgroup). */
  perSession: number | null;
  /** The host's fs.file-max (null: unreadable). */
  fileMax: number | null;
  /** True when SANDBOX_MAX_SESSIONS sessions at their bound could reach fs.file-max. */
  hostExhaustible: boolean;
  /** The /health text. */
  text: string;
}

export function openFilesBound(opts: { nofile: number; sessionPidsMax: number; pidsCgroup: boolean; maxSessions: number; fileMax: number | null }): OpenFilesBound {
  const perSession = opts.pidsCgroup ? opts.nofile * opts.sessionPidsMax : null;
  const total = perSession === null ? Infinity : perSession * opts.maxSessions;
  const hostExhaustible = opts.fileMax === null || total >= opts.fileMax;
  const each =
    perSession === null
      ? `RLIMIT_NOFILE ${opts.nofile} per process, no total per session (no pids cgroup)`
      : `at most ${perSession} per session (RLIMIT_NOFILE ${opts.nofile} x SANDBOX_SESSION_PIDS_MAX ${opts.sessionPidsMax})`;
  const host =
    opts.fileMax === null
      ? "the host's fs.file-max is unreadable"
      : hostExhaustible
        ? `${opts.maxSessions} sessions could reach the host's fs.file-max (${opts.fileMax}): lower SANDBOX_RUNNER_NOFILE, SANDBOX_SESSION_PIDS_MAX or SANDBOX_MAX_SESSIONS, or raise fs.file-max`
        : `${opts.maxSessions} sessions stay below the host's fs.file-max (${opts.fileMax})`;
  return { perSession, fileMax: opts.fileMax, hostExhaustible, text: `${each}; ${host}` };
}

/** The host's fs.file-max, or null. */
export function hostFileMax(): number | null {
  try {
    // Some kernels say LONG_MAX (no limit): a float that large still compares right.
    const n = Number(readFileSync('/proc/sys/fs/file-max', 'utf8').trim());
    return Number.isFinite(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}
