/**
 * Streamed exec calls: `POST /sessions/{id}/exec` with `Accept: text/event-stream`, and
 * their resumption at `GET /sessions/{id}/exec/streams/{stream_id}` (routes/streams.ts).
 *
 * Events, in order, with ids 1, 2, 3, ... (sse.ts gives the wire format):
 *  - `stream`: `{stream_id, tool_use_id, resume_url}`, once, when the call leaves the
 *    session's queue and starts (the response's headers go out then too, with
 *    `X-Stream-Id`). Until then the request is answered as any exec call: a 4xx for a bad
 *    call, a full queue or too many streams, and a client that leaves while the call waits
 *    takes it out of the queue.
 *  - `stdout` / `stderr`: `{text}`, output as the program writes it, what one turn of the
 *    event loop brings merged into one event (at most CHUNK_CHARS characters each). Only
 *    what the output cap keeps is sent; the text is as written (the result's stdout of a
 *    Python call loses one trailing newline, as in contract v1). The text editor has none.
 *  - `result`: exactly the JSON body the same call answers without streaming
 *    (routes/exec.ts shapeAnswer builds both); or `error`: `{detail, code}` when the
 *    server could not finish the call (the session was deleted, the server stopped).
 * Then the response ends.
 *
 * Once started, the call runs to its own end whatever its clients do: a client that
 * disconnects does not interrupt it (unlike a non-streamed call). A client that comes
 * back at the resume URL with `Last-Event-ID: n` gets every event after n that is still
 * kept, then the rest as it comes. A stream stays resumable while its call runs and for
 * SANDBOX_STREAM_RESUME_SECONDS after it ended with no client reading it; a stream whose
 * last event was written to a client is forgotten at once. A second client of one stream
 * takes over from the first (whose response ends).
 *
 * Bounds: a stream keeps output events up to SANDBOX_STREAM_REPLAY_BYTES, dropping the
 * oldest past it (a resume from before what is kept is answered 410, naming the id to
 * resume from instead); events the client reading now has not had yet are kept until it
 * has them (backpressure), up to twice SANDBOX_STREAM_REPLAY_BYTES: a client further behind
 * is cut (it may resume from what is kept), as is one that takes nothing for
 * SANDBOX_HTTP_SEND_TIMEOUT_SECONDS (sse.ts); its result
 * event is charged to the memory budget as a non-streamed answer is. At
 * most SANDBOX_STREAM_MAX streams are open or resumable at once: past it the oldest ended
 * unread stream is forgotten, and with none a new stream is refused with 503.
 *
 * Shutdown (close(), from the app's preClose hook and from main.ts before it cuts the
 * remaining connections): no new streams; running calls get until the sessions' shutdown
 * grace to end (their results are sent), then the rest get an `error` event; every open
 * response is ended, not reset.
 */
import { StringDecoder } from 'node:string_decoder';
import type { ServerResponse } from 'node:http';
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config.js';
import type { Reservation } from '../budget.js';
import type { ExecHooks } from '../sessions/exec.js';
import type { ExecAnswer as ExecResponse } from '../tools/anthropic-format.js';
import { isSandboxError, SandboxError } from '../errors.js';
import { randomHex } from '../ids.js';
import { eventBytes, SseWriter, type SseEvent } from './sse.js';
import { releaseWithResponse } from './hold.js';

export type StreamsConfig = Pick<Config, 'streamResumeSeconds' | 'streamReplayBytes' | 'streamHeartbeatSeconds' | 'streamMax' | 'httpSendTimeoutSeconds' | 'shutdownGraceSeconds'>;

/** Characters of output in one event at most. */
export const CHUNK_CHARS = 16 * 1024;
/** After the calls have ended at shutdown, how long clients get to take their last events. */
const SHUTDOWN_FLUSH_MS = 5000;

const SHUTDOWN_ERROR = { detail: 'the server is shutting down: the call was stopped before it finished', code: 'SBX_SHUTTING_DOWN' };

/** What the route hands over of a finished answer (routes/exec.ts ShapedAnswer). */
export interface SentAnswer {
  answer: ExecResponse;
  text: Buffer | string | null;
  held: Reservation | null;
}

type Kind = 'stdout' | 'stderr';

interface Client {
  writer: SseWriter;
  /** Id of the last event written to it. */
  cursor: number;
}

export class ExecStream {
  readonly id = `str_${randomHex(12)}`;
  started = false;
  done = false;
  private events: SseEvent[] = [];
  /** Bytes of the kept events, the result event aside (the memory budget holds that). */
  private bytes = 0;
  private nextId = 1;
  private client: Client | null = null;
  private held: Reservation | null = null;
  private expiry: NodeJS.Timeout | null = null;
  private disposed = false;
  /** Output of this turn not yet made an event: one kind at a time, so order is kept. */
  private pendingKind: Kind = 'stdout';
  private pending = '';
  private flushQueued = false;
  private readonly decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
  private settle!: () => void;
  /** Resolves when the call has ended (its result or error event is kept). */
  readonly settled = new Promise<void>((resolve) => (this.settle = resolve));
  private noClient: (() => void) | null = null;

  constructor(
    readonly sessionId: string,
    private readonly owner: ExecStreams,
  ) {}

  get lastId(): number {
    return this.nextId - 1;
  }

  get oldestId(): number {
    return this.events[0]?.id ?? this.nextId;
  }

  get hasClient(): boolean {
    return this.client !== null;
  }

  get resumeUrl(): string {
    return `/sessions/${this.sessionId}/exec/streams/${this.id}`;
  }

  /** The call started: the first event. */
  begin(toolUseId: string): void {
    this.started = true;
    this.push('stream', JSON.stringify({ stream_id: this.id, tool_use_id: toolUseId, resume_url: this.resumeUrl }), true);
  }

  /** A piece of kept output (a view of a read buffer: decoded here, before returning). */
  output(kind: Kind, chunk: Buffer): void {
    if (this.done) return;
    const text = this.decoders[kind].write(chunk);
    if (text === '') return;
    this.add(kind, text);
  }

  private add(kind: Kind, text: string): void {
    if (kind !== this.pendingKind) this.flush();
    this.pendingKind = kind;
    this.pending += text;
    if (this.pending.length >= CHUNK_CHARS) this.flush();
    else if (!this.flushQueued) {
      this.flushQueued = true;
      setImmediate(() => {
        this.flushQueued = false;
        this.flush();
      });
    }
  }

  private flush(): void {
    let text = this.pending;
    this.pending = '';
    while (text.length > 0) {
      let n = Math.min(CHUNK_CHARS, text.length);
      // Never split a surrogate pair between two events.
      if (n < text.length && /[\ud800-\udbff]/.test(text.charAt(n - 1))) n--;
      this.push(this.pendingKind, JSON.stringify({ text: text.slice(0, n) }), true);
      text = text.slice(n);
    }
  }

  /** The call ended with an answer. */
  finish(sent: SentAnswer): void {
    if (this.done || this.disposed) {
      sent.held?.release();
      return;
    }
    this.end();
    this.held = sent.held;
    this.push('result', sent.text ?? JSON.stringify(sent.answer), false);
    this.ended();
  }

  /** The call could not be finished: an error event in place of the result. */
  fail(body: { detail: string | unknown[]; code: string }): void {
    if (this.done || this.disposed) return;
    this.end();
    this.push('error', JSON.stringify(body), false);
    this.ended();
  }

  private end(): void {
    for (const kind of ['stdout', 'stderr'] as const) {
      const rest = this.decoders[kind].end();
      if (rest !== '') this.add(kind, rest);
    }
    this.flush();
    this.done = true;
  }

  private ended(): void {
    this.settle();
    if (this.client) this.pump();
    else this.startExpiry();
  }

  private push(event: string, data: string | Buffer, counted: boolean): void {
    const e: SseEvent = { id: this.nextId++, event, data };
    this.events.push(e);
    if (counted) this.bytes += eventBytes(e);
    if (this.client) this.pump();
    this.trim();
  }

  /** Drops the oldest output past the replay bound, but never an event the client reading
   * now has not had yet (those are at most the call's output, which its cap bounds) nor
   * the newest event. */
  private trim(): void {
    // A client more than a replay buffer behind (it reads slowly, or not at all) is cut:
    // what it has not had never grows past twice SANDBOX_STREAM_REPLAY_BYTES, however much
    // escape-heavy output the call writes. It may resume from what is still kept.
    if (this.client && this.bytes > 2 * this.owner.config.streamReplayBytes) {
      const behind = this.client;
      this.client = null;
      behind.writer.destroy();
      if (this.done) this.startExpiry();
    }
    const sent = this.client?.cursor ?? Infinity;
    while (this.bytes > this.owner.config.streamReplayBytes && this.events.length > 1 && this.events[0]!.id <= sent) {
      this.bytes -= eventBytes(this.events.shift()!);
    }
  }

  /** Why a resume after `afterId` cannot be served, if it cannot. */
  checkResume(afterId: number): void {
    if (afterId > this.lastId) {
      throw new SandboxError('SBX_BAD_REQUEST', `Last-Event-ID ${afterId} is past the last event of stream ${this.id} (${this.lastId})`);
    }
    if (afterId + 1 < this.oldestId) {
      throw new SandboxError(
        'SBX_STREAM_EVENTS_GONE',
        `events ${afterId + 1} to ${this.oldestId - 1} of stream ${this.id} are no longer kept (SANDBOX_STREAM_REPLAY_BYTES); resume with Last-Event-ID: ${this.oldestId - 1} to get the events from ${this.oldestId} on, the result included`,
      );
    }
  }

  /** A client reads the stream from the event after `afterId` (a former one is ended). */
  attach(res: ServerResponse, afterId: number, log?: FastifyBaseLogger): void {
    const old = this.client;
    this.client = null;
    old?.writer.end();
    if (this.expiry) clearTimeout(this.expiry);
    this.expiry = null;
    let sent = 0;
    const client: Client = {
      cursor: afterId,
      writer: new SseWriter(
        res,
        { 'x-stream-id': this.id },
        {
          heartbeatMs: this.owner.config.streamHeartbeatSeconds * 1000,
          stallMs: this.owner.config.httpSendTimeoutSeconds * 1000,
          onWritable: () => this.pump(),
          onClose: () => {
            log?.debug({ stream_id: this.id, session_id: this.sessionId, from_event: afterId + 1, to_event: client.cursor, events: sent }, 'event stream closed');
            if (this.client !== client) return;
            this.client = null;
            this.trim();
            this.noClient?.();
            // Delivered: the result was written and the response flushed to the client.
            if (this.done && client.cursor >= this.lastId && res.writableFinished) this.owner.drop(this);
            else if (this.done) this.startExpiry();
          },
        },
      ),
    };
    this.client = client;
    this.pump = () => {
      if (this.client !== client) return;
      while (client.writer.writable) {
        const next = client.cursor + 1;
        if (next > this.lastId) {
          if (this.done) client.writer.end();
          return;
        }
        // (Not while it reads: trim keeps what it has not had. Kept as a guard: a gap ends
        // the response, and a resume is told which ids are gone, checkResume.)
        if (next < this.oldestId) return client.writer.end();
        const e = this.events[next - this.oldestId]!;
        client.cursor = e.id;
        sent++;
        const more = client.writer.send(e);
        this.trim();
        if (!more) return;
      }
    };
    if (res.destroyed) return client.writer.destroy();
    this.pump();
  }

  /** Writes what the attached client has not had yet, as far as it takes it. */
  private pump: () => void = () => {};

  /** Resolves once no client reads the stream. */
  clientGone(): Promise<void> {
    if (!this.client) return Promise.resolve();
    return new Promise((resolve) => (this.noClient = resolve));
  }

  private startExpiry(): void {
    if (this.expiry || this.disposed) return;
    this.expiry = setTimeout(() => this.owner.drop(this), this.owner.config.streamResumeSeconds * 1000);
    this.expiry.unref();
  }

  /** Forgets the stream: its memory is released, a client still reading is ended. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.expiry) clearTimeout(this.expiry);
    this.held?.release();
    this.held = null;
    this.events = [];
    this.bytes = 0;
    const c = this.client;
    this.client = null;
    c?.writer.end();
  }
}

export class ExecStreams {
  private readonly streams = new Map<string, ExecStream>();
  private closed: Promise<void> | null = null;

  constructor(readonly config: StreamsConfig) {}

  get size(): number {
    return this.streams.size;
  }

  /** A new stream for a call in session `sessionId` (not resumable until it begins). */
  open(sessionId: string): ExecStream {
    if (this.closed) throw new SandboxError('SBX_SHUTTING_DOWN', 'server is shutting down', { headers: { 'retry-after': '5' } });
    if (this.streams.size >= this.config.streamMax) {
      // Room is made by forgetting the oldest stream that has ended and that no one reads.
      const victim = [...this.streams.values()].find((s) => s.done && !s.hasClient);
      if (!victim) {
        throw new SandboxError('SBX_SERVER_BUSY', `${this.streams.size} event streams are open (SANDBOX_STREAM_MAX=${this.config.streamMax}); retry when one ends`, {
          headers: { 'retry-after': '1' },
        });
      }
      this.drop(victim);
    }
    const s = new ExecStream(sessionId, this);
    this.streams.set(s.id, s);
    return s;
  }

  /** The started stream `streamId` of session `sessionId`. */
  find(sessionId: string, streamId: string): ExecStream {
    if (this.closed) throw new SandboxError('SBX_SHUTTING_DOWN', 'server is shutting down', { headers: { 'retry-after': '5' } });
    const s = this.streams.get(streamId);
    if (!s || !s.started || s.sessionId !== sessionId) {
      throw new SandboxError(
        'SBX_STREAM_NOT_FOUND',
        `stream not found: ${streamId} (a stream is forgotten once its last event was sent, or SANDBOX_STREAM_RESUME_SECONDS after its call ended)`,
      );
    }
    return s;
  }

  drop(s: ExecStream): void {
    if (this.streams.get(s.id) === s) this.streams.delete(s.id);
    s.dispose();
  }

  /** Ends every stream (see the top of this file); the same promise on every call. */
  close(): Promise<void> {
    return (this.closed ??= this.shutdown());
  }

  /** The server is shutting down (SIGTERM): calls cut from now on end their streams with
   * SBX_SHUTTING_DOWN, whatever cut them (their session destroyed at the deadline). */
  beginShutdown(): void {
    this.shuttingDown = true;
  }
  private shuttingDown = false;

  /** Whether the server is shutting down or close() was called. */
  get closing(): boolean {
    return this.shuttingDown || this.closed !== null;
  }

  private async shutdown(): Promise<void> {
    const all = () => [...this.streams.values()];
    const running = all().filter((s) => s.started && !s.done);
    await bounded(Promise.all(running.map((s) => s.settled)), this.config.shutdownGraceSeconds * 1000 + 10_000);
    for (const s of all()) if (s.started) s.fail(SHUTDOWN_ERROR);
    await bounded(Promise.all(all().map((s) => s.clientGone())), SHUTDOWN_FLUSH_MS);
    for (const s of all()) this.drop(s);
  }
}

function bounded(p: Promise<unknown>, ms: number): Promise<unknown> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise((r) => (t = setTimeout(r, ms)))]).finally(() => clearTimeout(t));
}

/** Whether a request asks for the event stream. */
export function wantsEventStream(req: FastifyRequest): boolean {
  return /\btext\/event-stream\b/i.test(req.headers.accept ?? '');
}

/**
 * Runs an exec call as a stream (see the top of this file). `run` starts the call with
 * the hooks that feed the stream; `shape` is the non-streamed route's own shaping of an
 * answer. Errors before the call starts are thrown: the app's error handler answers them.
 */
export async function streamExec(
  streams: ExecStreams,
  req: FastifyRequest,
  reply: FastifyReply,
  sessionId: string,
  run: (signal: AbortSignal, hooks: ExecHooks) => Promise<ExecResponse>,
  shape: (answer: ExecResponse) => Promise<SentAnswer>,
): Promise<FastifyReply> {
  // The stream (a slot of SANDBOX_STREAM_MAX) is taken when the call starts, not while it
  // waits in its session's queue: one session's queued calls never hold slots others need.
  // Past the bound the call is refused then, before it runs, with the usual JSON 503.
  let stream: ExecStream | null = null;
  // Until the call starts, a client that leaves takes it out of the queue; after, the
  // call runs to its end (the signal is never aborted then).
  const gone = new AbortController();
  let started = false;
  const onClose = () => {
    if (!started && !reply.raw.writableEnded) gone.abort();
  };
  reply.raw.once('close', onClose);
  let answer: ExecResponse;
  try {
    answer = await run(gone.signal, {
      onStart: (toolUseId) => {
        stream = streams.open(sessionId);
        started = true;
        reply.raw.off('close', onClose);
        void reply.hijack();
        stream.begin(toolUseId);
        stream.attach(reply.raw, 0, req.log);
      },
      onOutput: (kind, chunk) => stream?.output(kind, chunk),
    });
  } catch (e) {
    reply.raw.off('close', onClose);
    if (!started || stream === null) throw e;
    (stream as ExecStream).fail(streams.closing ? SHUTDOWN_ERROR : errorBody(e, req.log));
    return reply;
  }
  reply.raw.off('close', onClose);
  if (!started || stream === null) {
    // Answered without running (result_format "anthropic" turns a refusal into an error
    // block): no stream began, so the answer goes as plain JSON, as a refusal would.
    const sent = await shape(answer);
    if (sent.held) releaseWithResponse(reply.raw, sent.held);
    return reply.header('content-type', 'application/json; charset=utf-8').send((sent.text ?? JSON.stringify(sent.answer)) as never);
  }
  (stream as ExecStream).finish(await shape(answer));
  return reply;
}

/** The body the app's error handler would answer `e` with. */
function errorBody(e: unknown, log: FastifyBaseLogger): { detail: string | unknown[]; code: string } {
  if (isSandboxError(e) && e.status < 500) return { detail: e.detail, code: e.code };
  log.error({ err: isSandboxError(e) ? { code: e.code, detail: e.detail } : { message: String((e as Error)?.message ?? e) } }, 'a streamed call failed');
  return { detail: 'Internal Server Error', code: isSandboxError(e) ? e.code : 'SBX_INTERNAL' };
}
