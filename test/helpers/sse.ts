/**
 * A small server-sent-events client over node:http for the streaming tests: it keeps
 * every event and comment as they arrive, lets a test wait for one (events, not clocks),
 * and can cut its connection on purpose.
 */
import { request, type IncomingMessage, type ClientRequest } from 'node:http';
import { notHung } from './server.js';

export interface SseMessage {
  id: number | null;
  event: string;
  data: string;
}

export class SseClient {
  readonly events: SseMessage[] = [];
  readonly comments: string[] = [];
  /** The body, when the answer is not an event stream (an error). */
  body = '';
  /** Resolves when the response has ended: `clean` if it ended normally, not cut. */
  readonly ended: Promise<{ clean: boolean }>;
  private waiters: (() => void)[] = [];
  private buf = '';

  private constructor(
    readonly req: ClientRequest,
    readonly res: IncomingMessage,
  ) {
    const stream = /^text\/event-stream/.test(String(res.headers['content-type'] ?? ''));
    res.setEncoding('utf8');
    this.ended = new Promise((resolve) => {
      res.on('end', () => resolve({ clean: true }));
      res.on('error', () => resolve({ clean: false }));
      res.on('aborted', () => resolve({ clean: false }));
      res.on('close', () => resolve({ clean: res.complete }));
    });
    res.on('data', (chunk: string) => {
      if (!stream) {
        this.body += chunk;
        return;
      }
      this.buf += chunk;
      let i: number;
      while ((i = this.buf.indexOf('\n\n')) >= 0) {
        const block = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        this.parse(block);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    void this.ended.then(() => {
      for (const w of this.waiters.splice(0)) w();
    });
  }

  get status(): number {
    return this.res.statusCode ?? 0;
  }

  json(): any {
    return JSON.parse(this.body);
  }

  private parse(block: string): void {
    const msg: SseMessage = { id: null, event: 'message', data: '' };
    let any = false;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) {
        this.comments.push(line.slice(1).trim());
        continue;
      }
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
      any = true;
      if (field === 'id') msg.id = Number(value);
      else if (field === 'event') msg.event = value;
      else if (field === 'data') msg.data = msg.data === '' ? value : `${msg.data}\n${value}`;
    }
    if (any) this.events.push(msg);
  }

  /** The first event (from the start) that matches; fails if the stream ends without it. */
  async waitFor(pred: (e: SseMessage) => boolean, what: string): Promise<SseMessage> {
    return notHung(
      (async () => {
        for (;;) {
          const hit = this.events.find(pred);
          if (hit) return hit;
          if (this.res.readableEnded || this.res.destroyed) throw new Error(`stream ended without ${what}; events: ${JSON.stringify(this.events).slice(0, 2000)}`);
          await new Promise<void>((r) => this.waiters.push(r));
        }
      })(),
      what,
    );
  }

  async waitForComment(count: number, what: string): Promise<void> {
    await notHung(
      (async () => {
        while (this.comments.length < count) {
          if (this.res.readableEnded || this.res.destroyed) throw new Error(`stream ended without ${what}`);
          await new Promise<void>((r) => this.waiters.push(r));
        }
      })(),
      what,
    );
  }

  /** Waits for the response to end; every event it sent. */
  async done(what = 'the end of the stream'): Promise<{ clean: boolean }> {
    return notHung(this.ended, what);
  }

  /** Cuts the connection (a client that went away). */
  cut(): void {
    this.req.destroy();
    this.res.destroy();
  }

  /** Text of every `kind` event, joined. */
  text(kind: 'stdout' | 'stderr'): string {
    return this.events
      .filter((e) => e.event === kind)
      .map((e) => (JSON.parse(e.data) as { text: string }).text)
      .join('');
  }

  static open(url: string, opts: { method?: string; headers?: Record<string, string>; body?: unknown } = {}): Promise<SseClient> {
    const body = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    return notHung(
      new Promise<SseClient>((resolve, reject) => {
        const req = request(
          url,
          {
            method: opts.method ?? 'GET',
            headers: { accept: 'text/event-stream', ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...opts.headers },
          },
          (res) => resolve(new SseClient(req, res)),
        );
        req.on('error', reject);
        req.end(body);
      }),
      `response headers of ${url}`,
    );
  }

  /** POST /sessions/{id}/exec as a stream. */
  static exec(server: { url: string }, sessionId: string, tool: string, input: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<SseClient> {
    return SseClient.open(`${server.url}/sessions/${sessionId}/exec`, { method: 'POST', body: { tool, input, ...extra } });
  }

  /** The stream event's data. */
  streamInfo(): { stream_id: string; tool_use_id: string; resume_url: string } {
    const e = this.events.find((x) => x.event === 'stream');
    if (!e) throw new Error('no stream event yet');
    return JSON.parse(e.data);
  }

  result(): any {
    const e = this.events.find((x) => x.event === 'result');
    return e ? JSON.parse(e.data) : undefined;
  }
}
