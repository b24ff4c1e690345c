/**
 * A typed client of the sandbox server's HTTP API, for Node 20+ (global fetch):
 *
 *   import { SandboxClient } from 'otari-sandbox-container/client';
 *   const sbx = new SandboxClient({ baseUrl: 'http://127.0.0.1:8080', token: process.env.SANDBOX_API_TOKEN });
 *   const { session_id } = await sbx.createSession();
 *   const r = await sbx.runPython(session_id, 'print(6 * 7)');
 *
 * Its request and answer types are the server's own schemas (src/http/schemas.ts and the
 * routes), imported as types only: the client carries no server code. Every non-2xx answer
 * becomes a SandboxApiError whose `code` is one of the server's stable SBX_* codes.
 */
import type { Static } from 'typebox';
import type { CreateSessionBody, ExecBody, FileListResponse, SessionHandle } from '../http/schemas.js';
import type { ExecResponse as V1Answer } from '../tools/result.js';
import type { AnthropicExecResponse } from '../tools/anthropic-format.js';
import type { RegisterBody } from '../http/routes/tools.js';
import type { ErrorCode } from '../errors.js';

export type SessionHandleT = Static<typeof SessionHandle>;
export type CreateSessionOptions = Static<typeof CreateSessionBody>;
export type ExecRequest = Static<typeof ExecBody>;
/** A call's answer in contract v1 (the default). */
export type ExecAnswer = V1Answer;
/** A call's answer with `resultFormat: 'anthropic'`: result_block in Anthropic's shapes. */
export type AnthropicExecAnswer = AnthropicExecResponse;
export type FileList = Static<typeof FileListResponse>;
export type ToolRegistration = Static<typeof RegisterBody>;
export type ToolName = 'code_execution' | 'bash_code_execution' | 'text_editor_code_execution';

/** What the text editor takes (Anthropic's text_editor_code_execution input). */
export type EditorInput =
  | { command: 'view'; path: string; view_range?: [number, number] }
  | { command: 'create'; path: string; file_text: string }
  | { command: 'str_replace'; path: string; old_str: string; new_str?: string }
  | { command: 'insert'; path: string; insert_line: number; new_str: string }
  | { command: 'undo_edit'; path: string };

export interface CallOptions {
  timeoutSeconds?: number;
  /** 'anthropic': result_block in Anthropic's code_execution_20250825 shapes (README). */
  resultFormat?: 'v1' | 'anthropic';
  toolUseId?: string;
  signal?: AbortSignal;
}

/** A non-2xx answer: the HTTP status, the server's stable code, and its detail. */
export class SandboxApiError extends Error {
  constructor(
    readonly status: number,
    /** An SBX_* code of the server's error table, or SBX_HTTP_<status> for an answer that
     * is not the server's error body (a proxy's, say). */
    readonly code: ErrorCode | `SBX_HTTP_${number}`,
    readonly detail: string | unknown[],
    /** Seconds, from Retry-After (429 and 503 answers). */
    readonly retryAfterSeconds: number | null,
  ) {
    super(`${status} ${code}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
    this.name = 'SandboxApiError';
  }
}

export interface SandboxClientOptions {
  /** e.g. http://127.0.0.1:8080 (no trailing path). */
  baseUrl: string;
  /** SANDBOX_API_TOKEN, sent as a bearer token. */
  token?: string;
  /** A fetch to use instead of the global one (tests, proxies). */
  fetch?: typeof fetch;
}

export class SandboxClient {
  private readonly base: string;
  private readonly headers: Record<string, string>;
  private readonly fetchFn: typeof fetch;

  constructor(opts: SandboxClientOptions) {
    this.base = opts.baseUrl.replace(/\/+$/, '');
    this.headers = opts.token ? { authorization: `Bearer ${opts.token}` } : {};
    this.fetchFn = opts.fetch ?? fetch;
  }

  /** GET /health (no token needed). Answers while draining too (status "draining"). */
  async health(): Promise<Record<string, unknown> & { status: string; session_count: number; max_sessions: number; version: string; replica?: string }> {
    const res = await this.fetchFn(`${this.base}/health`, { headers: this.headers });
    if (res.status !== 200 && res.status !== 503) throw await apiError(res);
    return (await res.json()) as never;
  }

  createSession(opts: CreateSessionOptions = {}, signal?: AbortSignal): Promise<SessionHandleT> {
    return this.json('POST', '/sessions', opts, signal);
  }

  getSession(id: string, signal?: AbortSignal): Promise<SessionHandleT> {
    return this.json('GET', `/sessions/${enc(id)}`, undefined, signal);
  }

  /** Idempotent: deleting a session that is gone is not an error. */
  async deleteSession(id: string, signal?: AbortSignal): Promise<void> {
    const res = await this.send('DELETE', `/sessions/${enc(id)}`, undefined, signal);
    if (res.status !== 204 && res.status !== 404) throw await apiError(res);
    await res.arrayBuffer();
  }

  /** POST /sessions/{id}/exec: one call of a tool; a program's failure is a result, not an error. */
  exec(id: string, tool: ToolName, input: Record<string, unknown>, opts?: CallOptions & { resultFormat?: 'v1' }): Promise<ExecAnswer>;
  exec(id: string, tool: ToolName, input: Record<string, unknown>, opts: CallOptions & { resultFormat: 'anthropic' }): Promise<AnthropicExecAnswer>;
  exec(id: string, tool: ToolName, input: Record<string, unknown>, opts: CallOptions = {}): Promise<ExecAnswer | AnthropicExecAnswer> {
    const body: ExecRequest = {
      tool,
      input,
      ...(opts.timeoutSeconds !== undefined ? { timeout_seconds: opts.timeoutSeconds } : {}),
      ...(opts.toolUseId ? { tool_use_id: opts.toolUseId } : {}),
      ...(opts.resultFormat ? { result_format: opts.resultFormat } : {}),
    };
    return this.json('POST', `/sessions/${enc(id)}/exec`, body, opts.signal);
  }

  runPython(id: string, code: string, opts?: CallOptions & { resultFormat?: 'v1' }): Promise<ExecAnswer> {
    return this.exec(id, 'code_execution', { code }, opts);
  }

  runBash(id: string, command: string, opts?: CallOptions & { resultFormat?: 'v1' }): Promise<ExecAnswer> {
    return this.exec(id, 'bash_code_execution', { command }, opts);
  }

  edit(id: string, input: EditorInput, opts?: CallOptions & { resultFormat?: 'v1' }): Promise<ExecAnswer> {
    return this.exec(id, 'text_editor_code_execution', input, opts);
  }

  /** POST /sessions/{id}/files (multipart). `path` defaults to the file name, in /workspace. */
  async uploadFile(id: string, content: Uint8Array | string, opts: { path?: string; filename?: string; signal?: AbortSignal } = {}): Promise<{ path: string; size_bytes: number }> {
    const form = new FormData();
    if (opts.path !== undefined) form.append('path', opts.path);
    const bytes = typeof content === 'string' ? new TextEncoder().encode(content) : content;
    form.append('file', new Blob([new Uint8Array(bytes)]), opts.filename ?? opts.path?.split('/').pop() ?? 'upload.bin');
    const res = await this.fetchFn(`${this.base}/sessions/${enc(id)}/files`, { method: 'POST', body: form, headers: this.headers, signal: opts.signal });
    if (res.status !== 201) throw await apiError(res);
    return (await res.json()) as never;
  }

  /** GET /sessions/{id}/files?path=: the file's bytes. */
  async downloadFile(id: string, path: string, signal?: AbortSignal): Promise<Uint8Array> {
    const res = await this.send('GET', `/sessions/${enc(id)}/files?path=${encodeURIComponent(path)}`, undefined, signal);
    if (res.status !== 200) throw await apiError(res);
    return new Uint8Array(await res.arrayBuffer());
  }

  /** GET /sessions/{id}/artifacts/{file_id}: a file a call produced, as that call left it. */
  async downloadArtifact(id: string, fileId: string, signal?: AbortSignal): Promise<Uint8Array> {
    const res = await this.send('GET', `/sessions/${enc(id)}/artifacts/${enc(fileId)}`, undefined, signal);
    if (res.status !== 200) throw await apiError(res);
    return new Uint8Array(await res.arrayBuffer());
  }

  /**
   * POST /sessions/{id}/exec with `Accept: text/event-stream`: the call's events as they
   * come (`stream`, `stdout`, `stderr`, then `result` or `error`; README "Streaming"). A
   * call refused before it starts throws a SandboxApiError, as exec() does; so does a
   * native-format refusal answered as plain JSON (its answer is the error's detail).
   * `resume` (a stream id and the last event id had) reads the rest of an interrupted stream
   * from GET /sessions/{id}/exec/streams/{stream_id} instead.
   */
  async *execStream(
    id: string,
    tool: ToolName,
    input: Record<string, unknown>,
    opts: CallOptions & { resume?: { streamId: string; lastEventId: number } } = {},
  ): AsyncGenerator<StreamEvent, void, undefined> {
    const headers: Record<string, string> = { ...this.headers, accept: 'text/event-stream' };
    let res: Response;
    if (opts.resume) {
      res = await this.fetchFn(`${this.base}/sessions/${enc(id)}/exec/streams/${enc(opts.resume.streamId)}`, {
        headers: { ...headers, 'last-event-id': String(opts.resume.lastEventId) },
        signal: opts.signal,
      });
    } else {
      const body: ExecRequest = {
        tool,
        input,
        ...(opts.timeoutSeconds !== undefined ? { timeout_seconds: opts.timeoutSeconds } : {}),
        ...(opts.toolUseId ? { tool_use_id: opts.toolUseId } : {}),
        ...(opts.resultFormat ? { result_format: opts.resultFormat } : {}),
      };
      res = await this.fetchFn(`${this.base}/sessions/${enc(id)}/exec`, {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: opts.signal,
      });
    }
    if (res.status !== 200) throw await apiError(res);
    if (!/^text\/event-stream/.test(res.headers.get('content-type') ?? '')) {
      // Answered without a stream (a native-format refusal block): one result event.
      yield { id: null, event: 'result', data: (await res.json()) as ExecAnswer };
      return;
    }
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const e = parseEvent(block);
        if (e) yield e;
      }
    }
  }

  /** GET /sessions/{id}/files/list. */
  listFiles(id: string, opts: { path?: string; recursive?: boolean; signal?: AbortSignal } = {}): Promise<FileList> {
    const q = new URLSearchParams({ path: opts.path ?? '.', recursive: String(opts.recursive ?? false) });
    return this.json('GET', `/sessions/${enc(id)}/files/list?${q}`, undefined, opts.signal);
  }

  /** POST /sessions/{id}/programmatic-tools/register. */
  registerTools(
    id: string,
    registration: Partial<ToolRegistration> & Pick<ToolRegistration, 'callback_url' | 'token'>,
    signal?: AbortSignal,
  ): Promise<{ stub_path: string; tool_count: number }> {
    return this.json('POST', `/sessions/${enc(id)}/programmatic-tools/register`, registration, signal);
  }

  /** GET /metrics: Prometheus text. */
  async metrics(signal?: AbortSignal): Promise<string> {
    const res = await this.send('GET', '/metrics', undefined, signal);
    if (res.status !== 200) throw await apiError(res);
    return res.text();
  }

  private send(method: string, path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
    return this.fetchFn(`${this.base}${path}`, {
      method,
      headers: body === undefined ? this.headers : { ...this.headers, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  }

  private async json<T>(method: string, path: string, body: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.send(method, path, body, signal);
    if (res.status < 200 || res.status > 299) throw await apiError(res);
    return (await res.json()) as T;
  }
}

const enc = encodeURIComponent;

/** One server-sent event of a streamed call; `data` is its JSON, parsed. */
export type StreamEvent =
  | { id: number | null; event: 'stream'; data: { stream_id: string; tool_use_id: string; resume_url: string } }
  | { id: number | null; event: 'stdout' | 'stderr'; data: { text: string } }
  | { id: number | null; event: 'result'; data: ExecAnswer | AnthropicExecAnswer }
  | { id: number | null; event: 'error'; data: { detail: string | unknown[]; code: string } };

function parseEvent(block: string): StreamEvent | null {
  let id: number | null = null;
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue; // a heartbeat comment
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
    if (field === 'id') id = Number(value);
    else if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return null;
  return { id, event, data: JSON.parse(data.join('\n')) } as StreamEvent;
}

async function apiError(res: Response): Promise<SandboxApiError> {
  const text = await res.text().catch(() => '');
  let code: SandboxApiError['code'] = `SBX_HTTP_${res.status}`;
  let detail: string | unknown[] = text.slice(0, 2000);
  try {
    const body = JSON.parse(text) as { code?: unknown; detail?: unknown };
    if (typeof body.code === 'string' && body.code.startsWith('SBX_')) code = body.code as ErrorCode;
    if (typeof body.detail === 'string' || Array.isArray(body.detail)) detail = body.detail;
  } catch {
    /* not the server's error body */
  }
  const retry = Number(res.headers.get('retry-after'));
  return new SandboxApiError(res.status, code, detail, Number.isFinite(retry) && res.headers.has('retry-after') ? retry : null);
}
