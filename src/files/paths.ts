/**
 * The one workspace path resolver, pure (no file system). A request path is either
 * relative to the workspace or absolute under /workspace/ (the path sandboxed code
 * sees). It is normalised lexically: `.` and empty segments vanish, `..` pops a
 * segment, and popping past the root is an escape. Symbolic links are not resolved
 * here on purpose: the file system layer refuses to cross any (workspace-fs.ts), so
 * a lexical answer is the final answer.
 */
import { SandboxError } from '../errors.js';
import { SANDBOX_PATHS } from '../sandbox/spec.js';

export const WORKSPACE_MOUNT = SANDBOX_PATHS.workspace;
export const MAX_PATH_CHARS = 4096;
const MAX_SEGMENT_BYTES = 255;

export interface ResolvedPath {
  /** Segments below the workspace root; empty for the root itself. */
  segments: string[];
  /** The normalised path relative to the root ('.' for the root). */
  rel: string;
}

export function resolveInside(input: string): ResolvedPath {
  if (input.includes('\0')) throw new SandboxError('SBX_BAD_REQUEST', 'path contains a NUL byte');
  if (input.length > MAX_PATH_CHARS) throw new SandboxError('SBX_BAD_REQUEST', `path longer than ${MAX_PATH_CHARS} characters`);
  let rest = input;
  if (rest.startsWith('/')) {
    if (rest !== WORKSPACE_MOUNT && !rest.startsWith(`${WORKSPACE_MOUNT}/`)) {
      throw new SandboxError('SBX_PATH_OUTSIDE_WORKSPACE', `path escapes workspace: ${input}`);
    }
    rest = rest.slice(WORKSPACE_MOUNT.length);
  }
  const segments: string[] = [];
  for (const seg of rest.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (segments.length === 0) throw new SandboxError('SBX_PATH_OUTSIDE_WORKSPACE', `path escapes workspace: ${input}`);
      segments.pop();
      continue;
    }
    if (Buffer.byteLength(seg) > MAX_SEGMENT_BYTES) throw new SandboxError('SBX_BAD_REQUEST', `path segment longer than ${MAX_SEGMENT_BYTES} bytes`);
    segments.push(seg);
  }
  return { segments, rel: segments.length === 0 ? '.' : segments.join('/') };
}
