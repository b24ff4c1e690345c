/**
 * Shapes a tool run into the contract v1 response. The outer `content` is one object
 * whose type is always `code_execution_result`; the inner `content` lists produced
 * files. Extension fields (limit_exceeded, interpreter_restarted, *_dropped_bytes) sit
 * at the top level, next to result_block, so v1 readers ignore them.
 */
import type { LimitKind } from '../limits.js';

export interface ToolRun {
  stdout: string;
  stderr: string;
  returnCode: number;
  /** Extra fields inside `content` (text-editor details). */
  details?: Record<string, unknown>;
  files?: { type: string; file_id: string; filename: string }[];
  limit: LimitKind | null;
  interpreterRestarted: boolean;
  stdoutDroppedBytes: number;
  stderrDroppedBytes: number;
}

export interface ExecResponse {
  tool_use_id: string;
  result_block: {
    type: string;
    tool_use_id: string;
    content: {
      type: 'code_execution_result';
      stdout: string;
      stderr: string;
      return_code: number;
      content: { type: string; file_id: string; filename: string }[];
      [detail: string]: unknown;
    };
  };
  execution_time_ms: number;
  limit_exceeded: LimitKind | null;
  interpreter_restarted: boolean;
  stdout_dropped_bytes: number;
  stderr_dropped_bytes: number;
}

export function buildResponse(resultBlockType: string, toolUseId: string, run: ToolRun, executionTimeMs: number): ExecResponse {
  return {
    tool_use_id: toolUseId,
    result_block: {
      type: resultBlockType,
      tool_use_id: toolUseId,
      content: {
        type: 'code_execution_result',
        stdout: run.stdout,
        stderr: run.stderr,
        return_code: run.returnCode,
        content: run.files ?? [],
        ...run.details,
      },
    },
    execution_time_ms: Math.max(0, Math.trunc(executionTimeMs)),
    limit_exceeded: run.limit,
    interpreter_restarted: run.interpreterRestarted,
    stdout_dropped_bytes: run.stdoutDroppedBytes,
    stderr_dropped_bytes: run.stderrDroppedBytes,
  };
}

/** The reference's truncation marker, put where bytes were left out (between a stream's
 * head and tail; at the end of an editor view); `where` says where the whole output is. */
export function truncationMarker(droppedBytes: number, where?: string): string {
  return `\n... [output truncated by sandbox: ${droppedBytes} bytes elided${where ? `; ${where}` : ''}]`;
}

/** Adds the server's plain-English lines (which limit fired, state kept or lost) to stderr. */
export function appendNotes(stderr: string, notes: string[]): string {
  if (notes.length === 0) return stderr;
  const sep = stderr === '' || stderr.endsWith('\n') ? '' : '\n';
  return `${stderr}${sep}${notes.map((n) => `${n}\n`).join('')}`;
}

export function stripOneNewline(s: string): string {
  return s.endsWith('\n') ? s.slice(0, -1) : s;
}
