import type { Config } from '../../config.js';
import type { MemoryBudget, Reservation } from '../../budget.js';
import type { ExecBody as ExecBodyInput, ExecHooks } from '../../sessions/exec.js';
import { streamExec, wantsEventStream, type ExecStreams } from '../exec-streams.js';
import type { Executor, RoutePlugin } from '../types.js';
import { sessionOf } from '../scoped-session.js';
import { ErrorBody, ExecBody, ExecResponse, SessionParams } from '../schemas.js';
import { leanAnthropicAnswer, type AnthropicExecResponse, type ExecAnswer } from '../../tools/anthropic-format.js';
import type { ExecResponse as V1Answer } from '../../tools/result.js';
import { releaseWithResponse, SMALL_BYTES } from '../hold.js';
import { stringifySliced } from '../json-slices.js';
import type { ServerMetrics } from '../metrics.js';

/** Characters of each stream kept in an answer the memory budget has no room for. */
const LEAN_STREAM_CHARS = 16 * 1024;

export interface ExecRoutesOptions {
  exec: Executor;
  /** Streamed calls (`Accept: text/event-stream`, exec-streams.ts). */
  streams: ExecStreams;
  budget: Pick<MemoryBudget, 'reserve'>;
  config: Pick<Config, 'maxCodeChars'>;
  metrics?: Pick<ServerMetrics, 'execAnswered'>;
}

/** Registered inside the /sessions/:id scope (session.ts). The session is resolved there
 * but not touched: the exec service takes the id, looks the session up again and touches
 * it once it knows the tool (an unknown tool is not activity). */
export const execRoutes: RoutePlugin<ExecRoutesOptions> = (app, deps, done) => {
  app.post(
    '/sessions/:id/exec',
    {
      bodyLimit: execBodyLimit(deps.config.maxCodeChars),
      schema: {
        summary: 'Run Python, bash or the text editor in the session',
        description:
          'With `Accept: text/event-stream` the call is streamed as server-sent events (`stream`, `stdout`, `stderr`, then `result` with this 200 body); see the README.',
        params: SessionParams,
        body: ExecBody,
        response: { 200: ExecResponse, 400: ErrorBody, 404: ErrorBody, 422: ErrorBody, 429: ErrorBody, 503: ErrorBody },
      },
    },
    async (req, reply) => {
      if (wantsEventStream(req)) {
        const run = async (signal: AbortSignal, hooks: ExecHooks) => {
          const answer = await deps.exec.exec(sessionOf(req), req.body as ExecBodyInput, signal, hooks);
          deps.metrics?.execAnswered((req.body as ExecBodyInput).tool, answer);
          return answer;
        };
        return streamExec(deps.streams, req, reply, req.params.id, run, (a) => shapeAnswer(a, deps.budget));
      }
      // A client that goes away before its answer cancels the call: a waiting call leaves
      // the queue, a running one is interrupted as at a timeout (its slot is freed).
      const gone = new AbortController();
      const onClose = () => {
        if (!reply.raw.writableEnded) gone.abort();
      };
      reply.raw.once('close', onClose);
      let answer: ExecAnswer;
      try {
        answer = await deps.exec.exec(sessionOf(req), req.body as ExecBodyInput, gone.signal);
      } finally {
        reply.raw.off('close', onClose);
      }
      deps.metrics?.execAnswered((req.body as ExecBodyInput).tool, answer);
      const shaped = await shapeAnswer(answer, deps.budget);
      if (shaped.held) releaseWithResponse(reply.raw, shaped.held);
      if (shaped.text === null) return shaped.answer;
      // Already serialised: sent as it is (the 200 schema above documents its shape).
      return reply.header('content-type', 'application/json; charset=utf-8').send(shaped.text as never);
    },
  );
  done();
};

/** An answer as it is sent: small answers as they are (`text` null: the route hands the
 * object to the schema's serializer; JSON.stringify gives the same text), large ones
 * serialised, holding their share of the memory budget (`held`, released by whoever sends
 * them once sent). The non-streaming route and the streams' `result` event both send what
 * this returns, so the two always carry the same answer. */
export interface ShapedAnswer {
  answer: ExecAnswer;
  text: Buffer | string | null;
  held: Reservation | null;
}

export async function shapeAnswer(answer: ExecAnswer, budget: Pick<MemoryBudget, 'reserve'>): Promise<ShapedAnswer> {
  // A large answer holds its size of the memory budget until it is sent, so clients
  // that never read cannot make the server hold many. The call has run, so its answer
  // is never refused: without room, it goes out with its output cut short and says so.
  // (Most answers are small: they take the schema's serializer, as any route.)
  const chars = textChars(answer);
  if (chars * 6 <= SMALL_BYTES) return { answer, text: null, held: null };
  // Reserved before it is serialised, at what that may take: the JSON text (six
  // characters per character at most, escapes, two bytes each), its UTF-8 bytes (six
  // per character at most) and the decoded streams. Without room the full answer is
  // never built. Once built, it is charged at what it holds until sent: its bytes and
  // the decoded streams (until the collector frees them).
  let upper;
  try {
    upper = budget.reserve(20 * chars, 'the answer');
  } catch {
    upper = null;
  }
  if (upper) {
    // In slices, the event loop free between them (json-slices.ts): a few MiB of
    // escape-heavy output is tens of milliseconds of serialising.
    let payload: Buffer;
    try {
      payload = await stringifySliced(answer);
    } finally {
      upper.release();
    }
    // (within what was just released, in the same turn: room is there)
    try {
      return { answer, text: payload, held: budget.reserve(payload.length + 2 * stringChars(answer), 'the answer') };
    } catch {
      /* below: the lean answer */
    }
  }
  const lean = leanAnswer(answer);
  return { answer: lean, text: JSON.stringify(lean), held: null };
}

/** Characters of text an answer carries (its streams, the viewed text, the editor's detail
 * lines): its JSON is at most 6 times that (escapes) plus a few hundred bytes. */
function textChars(a: ExecAnswer): number {
  return stringChars(a) + 2 * a.tool_use_id.length + 512;
}

/** Characters of the strings in the answer's result content, v1 or native: a list entry
 * counts its characters plus 8, an object entry (an artifact) the characters of its string
 * fields plus 64 (its names are bounded, artifacts.ts ANSWER_NAME_CHARS, but counted: they
 * are as much of the answer as its output). */
function stringChars(a: ExecAnswer): number {
  let n = 0;
  for (const v of Object.values(a.result_block.content)) {
    if (typeof v === 'string') n += v.length;
    else if (Array.isArray(v)) for (const l of v as unknown[]) n += typeof l === 'string' ? l.length + 8 : objectChars(l) + 64;
  }
  return n;
}

function objectChars(o: unknown): number {
  let n = 0;
  if (typeof o === 'object' && o !== null) for (const v of Object.values(o)) if (typeof v === 'string') n += v.length;
  return n;
}

const LEAN_NOTE = 'server: this answer was cut to fit the memory the server has free for answers (SANDBOX_SERVER_MEMORY_BUDGET_MB); the call itself ran in full\n';

/** The answer with each stream cut to LEAN_STREAM_CHARS and the text editor's details
 * dropped, with a line that says why (native blocks: anthropic-format.ts). */
function leanAnswer(a: ExecAnswer): ExecAnswer {
  if (a.result_block.content.type !== 'code_execution_result') return leanAnthropicAnswer(a as AnthropicExecResponse, LEAN_STREAM_CHARS, LEAN_NOTE);
  const v1 = a as V1Answer;
  const c = v1.result_block.content;
  const cut = (s: string) => (s.length > LEAN_STREAM_CHARS ? `${s.slice(0, LEAN_STREAM_CHARS)}\n... [output cut: the server is short of memory for answers]` : s);
  return {
    ...v1,
    result_block: {
      ...v1.result_block,
      content: {
        type: c.type,
        stdout: cut(c.stdout),
        stderr: `${cut(c.stderr)}${c.stderr.endsWith('\n') || c.stderr === '' ? '' : '\n'}${LEAN_NOTE}`,
        return_code: c.return_code,
        content: c.content,
      },
    },
    limit_exceeded: a.limit_exceeded ?? 'output_bytes',
  };
}

/** Code or a command of maxCodeChars characters, JSON-escaped, plus room for the other
 * fields; at least 1 MiB (the text editor's file_text travels here too). */
export function execBodyLimit(maxCodeChars: number): number {
  return Math.max(1024 * 1024, maxCodeChars * 8 + 64 * 1024);
}
