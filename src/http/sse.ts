/**
 * Server-sent events on a raw Node response: the wire format, and a writer that respects
 * backpressure and keeps idle streams alive.
 *
 * Wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html): each event
 * is `id: <n>\nevent: <name>\ndata: <one line>\n\n`. The data of every event this server
 * sends is one line of JSON (JSON text never holds a raw line break), so a client reads it
 * whole from one `data:` field. A comment line `: ping\n\n` is sent every heartbeat
 * interval: proxies that close connections idle for a while see traffic, and clients
 * ignore it.
 *
 * Backpressure: `write` returns false once the socket's buffer is full; the writer then
 * writes nothing more (heartbeats included) until 'drain'. A client that stops reading
 * altogether is cut after `stallMs` without a drain, so it never holds the connection or
 * what is queued for it forever.
 */
import type { ServerResponse } from 'node:http';

export interface SseEvent {
  id: number;
  event: string;
  /** One line of JSON. */
  data: string | Buffer;
}

/** The bytes of one event on the wire (`data` must not hold a line break). */
export function encodeEvent(e: SseEvent): [string, string | Buffer, string] {
  return [`id: ${e.id}\nevent: ${e.event}\ndata: `, e.data, '\n\n'];
}

/** Bytes an event takes on the wire (for the replay buffer's bound). */
export function eventBytes(e: SseEvent): number {
  return 32 + e.event.length + (typeof e.data === 'string' ? Buffer.byteLength(e.data) : e.data.length);
}

export const HEARTBEAT = ': ping\n\n';

export interface SseWriterOptions {
  heartbeatMs: number;
  /** A client that reads nothing for this long while the writer waits for it is cut. */
  stallMs: number;
  /** Called when the writer can take more (after a drain). */
  onWritable: () => void;
  /** Called once when the response is over (ended, cut, or closed by the client). */
  onClose: () => void;
}

/** One client's event stream: headers sent at construction. */
export class SseWriter {
  private waiting = false;
  private stall: NodeJS.Timeout | null = null;
  private readonly heartbeat: NodeJS.Timeout;
  private closed = false;

  constructor(
    readonly res: ServerResponse,
    headers: Record<string, string>,
    private readonly opts: SseWriterOptions,
  ) {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      'x-accel-buffering': 'no', // nginx: pass events on as they come
      ...headers,
    });
    res.flushHeaders();
    this.heartbeat = setInterval(() => {
      if (!this.waiting) this.raw(HEARTBEAT);
    }, opts.heartbeatMs);
    this.heartbeat.unref();
    res.on('drain', () => {
      if (!this.waiting) return;
      this.waiting = false;
      if (this.stall) clearTimeout(this.stall);
      this.stall = null;
      this.opts.onWritable();
    });
    res.once('close', () => this.onClosed());
  }

  /** False while the client has not taken what was written (wait for onWritable). */
  get writable(): boolean {
    return !this.waiting && !this.closed && !this.res.destroyed;
  }

  /** Writes one event; returns whether more may be written now. */
  send(e: SseEvent): boolean {
    const parts = encodeEvent(e);
    let ok = true;
    for (const p of parts) ok = this.raw(p) && ok;
    return ok;
  }

  /** Ends the response cleanly (the client sees the stream end, not a reset). */
  end(): void {
    if (this.closed) return;
    this.stopTimers();
    if (!this.res.destroyed && !this.res.writableEnded) this.res.end();
  }

  /** Cuts the connection (a client that stopped reading). */
  destroy(): void {
    this.stopTimers();
    this.res.destroy();
  }

  private raw(chunk: string | Buffer): boolean {
    if (this.closed || this.res.destroyed || this.res.writableEnded) return false;
    if (this.res.write(chunk)) return true;
    if (!this.waiting) {
      this.waiting = true;
      this.stall = setTimeout(() => this.destroy(), this.opts.stallMs);
      this.stall.unref();
    }
    return false;
  }

  private stopTimers(): void {
    clearInterval(this.heartbeat);
    if (this.stall) clearTimeout(this.stall);
    this.stall = null;
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopTimers();
    this.opts.onClose();
  }
}
