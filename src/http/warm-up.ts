/**
 * The start-up warm-up (SANDBOX_WARMUP): before the server listens, one session goes
 * through the request path, so the first client's calls do not pay for V8 compiling and
 * optimising the hot paths (body parsing and validation, the routes, the interpreter
 * channel, result shaping) or for modules loaded on first use.
 *
 * The connection is a real HTTP/1.1 keep-alive one: a listener on an abstract Unix socket
 * (a random name and no file: nothing to clean up; reachable from the host's network
 * namespace only, never from a sandbox, and only while the warm-up runs) hands each of its
 * connections to the app's HTTP server (its 'connection' event, which Node documents for
 * injecting connections). So the requests cross Node's HTTP parser and socket writes as a
 * client's do; fastify.inject() would skip those.
 *
 * The calls, in order: GET /health; POST /sessions; `rounds` of print(1), with an editor
 * create and view and a GET of the session every EDITOR_EVERY rounds and a bash echo, a
 * listing and a download every BASH_EVERY rounds; an upload; a 404 and a 422; DELETE. Most
 * are print(1) because that path is the hottest and V8 optimises a function only after
 * many runs. Each answer is checked (status, and stdout where there is one).
 *
 * What it leaves: nothing but one log line (main.ts). The session is deleted before this
 * resolves and main.ts waits for its box's cleanup, mutes the access log until it
 * listens, and has the session manager forget the create (it is no pool demand).
 *
 * Bounded: `rounds` calls at most, none started after `budgetMs`, each request cut after
 * REQUEST_TIMEOUT_MS. A failure ends the warm-up early (the session is still deleted) and
 * is returned, never thrown: the server then starts cold, as without a warm-up.
 */
import { createServer, type Server } from 'node:net';
import { Agent, request } from 'node:http';
import { randomBytes } from 'node:crypto';
import type { App } from './types.js';

/** How many print(1) rounds by default, and how long they may take. */
export const WARM_UP_ROUNDS = 1000;
export const WARM_UP_BUDGET_MS = 5000;
const EDITOR_EVERY = 25;
const BASH_EVERY = 250;
/** The create may wait for the pool's first box on a loaded host. */
const REQUEST_TIMEOUT_MS = 60_000;

export interface WarmUpOptions {
  rounds?: number;
  budgetMs?: number;
  /** Sent with every request: the bearer token and a Host the allow-list takes, when set. */
  headers?: Record<string, string>;
}

export interface WarmUpReport {
  durationMs: number;
  /** Requests answered as expected. */
  requests: number;
  /** The session it made: deleted unless the DELETE failed (main.ts destroys it then). */
  sessionId?: string;
  /** Why the warm-up ended early, if it did. */
  error?: string;
}

interface Answer {
  status: number;
  body: any;
}

export async function warmUp(app: App, opts: WarmUpOptions = {}): Promise<WarmUpReport> {
  const rounds = opts.rounds ?? WARM_UP_ROUNDS;
  const budgetMs = opts.budgetMs ?? WARM_UP_BUDGET_MS;
  const started = performance.now();
  let requests = 0;
  await app.ready();
  const socketPath = `\0otari-warm-up-${randomBytes(12).toString('hex')}`;
  const listener: Server = createServer((socket) => app.server.emit('connection', socket));
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(socketPath, resolve);
  });
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });

  const send = (method: string, path: string, body?: Buffer, contentType?: string): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { ...opts.headers };
      if (body) Object.assign(headers, { 'content-type': contentType ?? 'application/json', 'content-length': body.length });
      const req = request({ socketPath, agent, method, path, headers, timeout: REQUEST_TIMEOUT_MS }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          try {
            const json = /^application\/json/.test(String(res.headers['content-type'] ?? ''));
            resolve({ status: res.statusCode ?? 0, body: json ? JSON.parse(text) : text });
          } catch (e) {
            reject(e as Error);
          }
        });
      });
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within ${REQUEST_TIMEOUT_MS} ms`)));
      req.on('error', reject);
      req.end(body);
    });
  const call = async (method: string, path: string, expectStatus: number, body?: unknown): Promise<Answer> => {
    const answer = await send(method, path, body === undefined ? undefined : Buffer.from(JSON.stringify(body)));
    if (answer.status !== expectStatus) throw new Error(`${method} ${path}: ${answer.status} (expected ${expectStatus}): ${JSON.stringify(answer.body).slice(0, 300)}`);
    requests++;
    return answer;
  };
  const exec = async (id: string, tool: string, input: Record<string, unknown>, expectStdout?: string): Promise<Answer> => {
    const answer = await call('POST', `/sessions/${id}/exec`, 200, { tool, input });
    const content = answer.body?.result_block?.content;
    if (expectStdout !== undefined && content?.stdout !== expectStdout) throw new Error(`${tool}: unexpected output ${JSON.stringify(content).slice(0, 300)}`);
    return answer;
  };

  let id: string | undefined;
  let error: string | undefined;
  try {
    await call('GET', '/health', 200);
    id = String((await call('POST', '/sessions', 201, {})).body.session_id);
    const base = `/sessions/${id}`;
    for (let i = 0; i < rounds && performance.now() - started < budgetMs; i++) {
      await exec(id, 'code_execution', { code: 'print(1)' }, '1');
      if (i % EDITOR_EVERY === 0) {
        const path = `warm-up/note-${i}.txt`;
        await exec(id, 'text_editor_code_execution', { command: 'create', path, file_text: 'one\ntwo\n' });
        await exec(id, 'text_editor_code_execution', { command: 'view', path });
        await call('GET', base, 200);
      }
      if (i % BASH_EVERY === 0) {
        await exec(id, 'bash_code_execution', { command: 'echo warm' }, 'warm\n');
        await call('GET', `${base}/files/list?path=warm-up`, 200);
        await call('GET', `${base}/files?path=warm-up/note-0.txt`, 200);
      }
    }
    const boundary = `warm-up-${randomBytes(8).toString('hex')}`;
    const form = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\nwarm-up/upload.txt\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload.txt"\r\nContent-Type: text/plain\r\n\r\nwarm\n\r\n--${boundary}--\r\n`,
    );
    const uploaded = await send('POST', `${base}/files`, form, `multipart/form-data; boundary=${boundary}`);
    if (uploaded.status !== 201) throw new Error(`upload: ${uploaded.status} ${JSON.stringify(uploaded.body).slice(0, 300)}`);
    requests++;
    // The error paths a client meets first: an unknown session, a body that fails validation.
    await call('GET', `/sessions/sbx_${'0'.repeat(24)}`, 404);
    await call('POST', `${base}/exec`, 422, { tool: 'code_execution', input: {} });
  } catch (e) {
    error = String((e as Error)?.message ?? e);
  } finally {
    if (id !== undefined) {
      try {
        await call('DELETE', `/sessions/${id}`, 204);
      } catch (e) {
        error ??= String((e as Error)?.message ?? e);
      }
    }
    agent.destroy();
    listener.close(); // no new connection; the one used ends with the agent's socket
  }
  return { durationMs: performance.now() - started, requests, ...(id !== undefined ? { sessionId: id } : {}), ...(error !== undefined ? { error } : {}) };
}
