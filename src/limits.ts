/**
 * The limits a call can run into, named once. The response's `limit_exceeded` values, their
 * schema in the OpenAPI document, the type the code passes around and the plain-English
 * line that says which limit fired and its setting all come from this table.
 */
import Type, { type Static } from 'typebox';
import type { Config } from './config.js';

/** The table itself: each kind once, as the schema that validates and documents it. */
export const LimitKindSchema = Type.Union(
  [
    Type.Literal('wall_clock'),
    Type.Literal('memory'),
    Type.Literal('cpu'),
    Type.Literal('output_bytes'),
    Type.Literal('file_size'),
    Type.Literal('processes'),
    Type.Literal('disk'),
  ],
  { description: 'extension: which limit fired' },
);

export type LimitKind = Static<typeof LimitKindSchema>;

export const LIMIT_KINDS: readonly LimitKind[] = LimitKindSchema.anyOf.map((s) => s.const);

/** The per-process limits of a sandbox, from the settings (or the probe's own values). */
export interface ResourceLimits {
  /** Address space per process, bytes (0: unlimited, when a cgroup limits memory). */
  addressSpaceBytes: number;
  cpuSeconds: number;
  fileSizeBytes: number;
  openFiles: number;
  processes: number;
}

/** Kernel rlimits, named as prlimit's options and Python's resource.RLIMIT_* (upper case). */
export const RLIMIT_NAMES = ['as', 'cpu', 'fsize', 'nofile', 'nproc', 'core', 'memlock'] as const;
export type RlimitName = (typeof RLIMIT_NAMES)[number];

/** One rlimit every sandboxed process gets; -1 is unlimited. */
export interface Rlimit {
  resource: RlimitName;
  soft: number;
  hard: number;
}

/** The rlimit behind each limit kind the kernel enforces per process. */
export const RLIMIT_OF_KIND: Partial<Record<LimitKind, RlimitName>> = { memory: 'as', cpu: 'cpu', file_size: 'fsize', processes: 'nproc' };

/** The rlimits of a sandbox: the only list of them (bwrap-args.ts renders it as a prlimit
 * prefix, the template applies it in a loop, the probe checks it). Every other rlimit is
 * the server's own, inherited. */
export function sandboxRlimits(l: ResourceLimits): Rlimit[] {
  const as = l.addressSpaceBytes > 0 ? l.addressSpaceBytes : -1;
  return [
    { resource: 'as', soft: as, hard: as },
    // soft < hard: SIGXCPU (reported as the cpu limit) at the soft limit, SIGKILL a second later
    { resource: 'cpu', soft: l.cpuSeconds, hard: l.cpuSeconds + 1 },
    { resource: 'fsize', soft: l.fileSizeBytes, hard: l.fileSizeBytes },
    { resource: 'nofile', soft: l.openFiles, hard: l.openFiles },
    // counted per user namespace and uid, inside the sandbox's own user namespace
    { resource: 'nproc', soft: l.processes, hard: l.processes },
    { resource: 'core', soft: 0, hard: 0 },
    { resource: 'memlock', soft: 65536, hard: 65536 },
  ];
}

/** Which limit a finished program ran into, from its exit status and stderr. */
export function detectLimit(exitCode: number, stderr: string): LimitKind | null {
  if (exitCode === 128 + 25 || /File too large|File size limit exceeded|\[Errno 27\]/.test(stderr)) return 'file_size';
  if (exitCode === 128 + 24) return 'cpu';
  if (/No space left on device|\[Errno 28\]|Disk quota exceeded/.test(stderr)) return 'disk';
  if (/fork: (retry: )?Resource temporarily unavailable|BlockingIOError: \[Errno 11\]|can't start new thread/.test(stderr)) return 'processes';
  if (/MemoryError|Cannot allocate memory|std::bad_alloc/.test(stderr)) return 'memory';
  return null;
}

/** The settings a verdict names. */
export type LimitSettings = Pick<Config, 'fileSizeMb' | 'cpuSeconds' | 'workspaceMb' | 'maxProcesses' | 'memoryMb' | 'maxOutputBytes'>;

/** The output verdict on its own (the text editor knows only this setting). */
export function outputLimitText(maxOutputBytes: number): string {
  return `a limit was reached: output (${maxOutputBytes} bytes per stream, SANDBOX_RUNNER_MAX_OUTPUT_BYTES)`;
}

/** Which limit fired and its setting, in plain English: the only place these lines are written. */
export function describeLimit(limit: LimitKind, c: LimitSettings): string {
  switch (limit) {
    case 'file_size':
      return `a limit was reached: file size (${c.fileSizeMb} MiB per file, SANDBOX_RUNNER_FSIZE_MB)`;
    case 'cpu':
      return `a limit was reached: CPU time (${c.cpuSeconds} CPU seconds per process, SANDBOX_RUNNER_CPU_SECONDS)`;
    case 'disk':
      return `a limit was reached: disk space (${c.workspaceMb} MiB for the workspace and /tmp together, SANDBOX_WORKSPACE_MB)`;
    case 'processes':
      return `a limit was reached: processes (${c.maxProcesses} per sandbox, SANDBOX_RUNNER_NPROC)`;
    case 'memory':
      return `a limit was reached: memory (${c.memoryMb} MiB, SANDBOX_RUNNER_MEMORY_MB)`;
    case 'output_bytes':
      return outputLimitText(c.maxOutputBytes);
    case 'wall_clock':
      return 'a limit was reached: wall-clock time';
    default: {
      const never: never = limit;
      return String(never);
    }
  }
}
