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

/** Which limit a finished program ran into, from its exit status and stderr. */
export function detectLimit(exitCode: number, stderr: string): LimitKind | null {
  if (exitCode === 128 + 25 || /File too large|File size limit exceeded|\[Errno 27\]/.test(stderr)) return 'file_size';
  if (exitCode === 128 + 24) return 'cpu';
  if (/No space left on device|\[Errno 28\]|Disk quota exceeded/.test(stderr)) return 'disk';
  if (/fork: (retry: )?Resource temporarily unavailable|BlockingIOError: \[Errno 11\]|can't start new thread/.test(stderr)) return 'processes';
  if (/MemoryError|Cannot allocate memory|std::bad_alloc/.test(stderr)) return 'memory';
  return null;
}

export function describeLimit(limit: LimitKind, c: Config): string {
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
      return `a limit was reached: output (${c.maxOutputBytes} bytes per stream, SANDBOX_RUNNER_MAX_OUTPUT_BYTES)`;
    case 'wall_clock':
      return 'a limit was reached: wall-clock time';
    default: {
      const never: never = limit;
      return String(never);
    }
  }
}
