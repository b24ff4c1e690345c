/**
 * One error family for everything the server itself could not do. A program's failure,
 * timeout or limit hit is a result, never one of these. Each code maps to exactly one
 * HTTP status here; the HTTP error handler is the only place that turns them into
 * responses. Tell errors apart by `code`, never by `instanceof`.
 */

export const ERROR_STATUS = {
  SBX_BAD_REQUEST: 400,
  SBX_UNKNOWN_TOOL: 400,
  SBX_NOT_A_FILE: 400,
  SBX_UNAUTHORIZED: 401,
  SBX_HOST_NOT_ALLOWED: 403,
  SBX_PATH_OUTSIDE_WORKSPACE: 403,
  SBX_SESSION_NOT_FOUND: 404,
  SBX_FILE_NOT_FOUND: 404,
  SBX_NOT_FOUND: 404,
  SBX_STREAM_NOT_FOUND: 404,
  SBX_STREAM_EVENTS_GONE: 410,
  SBX_SESSION_BUSY: 429,
  SBX_FILE_TOO_LARGE: 413,
  SBX_BODY_TOO_LARGE: 413,
  SBX_VALIDATION: 422,
  SBX_AT_CAPACITY: 503,
  SBX_SHUTTING_DOWN: 503,
  SBX_SERVER_BUSY: 503,
  SBX_SANDBOX_FAILED: 500,
  SBX_INTERNAL: 500,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class SandboxError extends Error {
  readonly code: ErrorCode;
  /** FastAPI-style detail: a string, or a list of validation problems. */
  readonly detail: string | unknown[];
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, detail: string | unknown[], options?: { cause?: unknown; headers?: Record<string, string> }) {
    super(typeof detail === 'string' ? detail : code, { cause: options?.cause });
    this.name = 'SandboxError';
    this.code = code;
    this.detail = detail;
    this.headers = options?.headers ?? {};
  }

  get status(): number {
    return ERROR_STATUS[this.code];
  }
}

export function isSandboxError(e: unknown): e is SandboxError {
  return (
    typeof e === 'object' &&
    e !== null &&
    (e as { name?: unknown }).name === 'SandboxError' &&
    typeof (e as { code?: unknown }).code === 'string' &&
    (e as { code: string }).code in ERROR_STATUS
  );
}
