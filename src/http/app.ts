/**
 * buildApp(deps): the Fastify instance with every route, the one error handler, the
 * access log and the OpenAPI document. It never listens (main.ts does), so tests can
 * use it directly.
 *
 * Error bodies: {"detail": <string | list>, "code": <stable SBX_* code>}; no stack
 * traces, host paths or secrets. Schema validation failures are 422 with a FastAPI-style
 * detail list, as the reference answers.
 */
import { createServer } from 'node:http';
import Fastify, { LogController, type FastifyError } from 'fastify';
import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { isSandboxError, SandboxError } from '../errors.js';
import { jsonTokens, MAX_JSON_TOKENS } from '../json-bounds.js';
import { holdParsed, meterBody, parsedBodyBytes, SMALL_BYTES, trackBody } from './hold.js';
import { finished } from 'node:stream';
import type { App, AppDeps } from './types.js';
import { allowedHosts, bearerCheck, hostName } from './auth.js';
import { parseTokens } from '../config.js';
import { healthRoutes } from './routes/health.js';
import { sessionRoutes } from './routes/sessions.js';
import { sessionScope } from './routes/session.js';
import { ExecStreams } from './exec-streams.js';

const MiB = 1024 * 1024;
const DEFAULT_BODY_LIMIT = 64 * 1024;

export async function buildApp(deps: AppDeps): Promise<App> {
  const app = Fastify({
    loggerInstance: deps.log,
    logController: new LogController({ disableRequestLogging: true }),
    // Routes that take more (exec, register) say so themselves.
    bodyLimit: DEFAULT_BODY_LIMIT,
    requestTimeout: deps.config.httpRequestTimeoutSeconds * 1000,
    keepAliveTimeout: deps.config.httpKeepAliveTimeoutSeconds * 1000,
    serverFactory: (handler) =>
      createServer(
        {
          // Slow or stalled requests are found within a second, not the default 30 s.
          connectionsCheckingInterval: 1000,
          headersTimeout: Math.min(deps.config.httpHeadersTimeoutSeconds, deps.config.httpRequestTimeoutSeconds) * 1000,
          requestTimeout: deps.config.httpRequestTimeoutSeconds * 1000,
          keepAliveTimeout: deps.config.httpKeepAliveTimeoutSeconds * 1000,
        },
        handler,
      ),
    routerOptions: { maxParamLength: 200 },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Scalars are coerced from strings ("30" -> 30, as the reference accepts), never from arrays.
    // The first problem only: collecting every error of a hostile body (800k wrong items)
    // is unbounded work and an unbounded answer.
    ajv: { customOptions: { coerceTypes: true, removeAdditional: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  // Past this many open connections new ones are closed at once, before they can hold a
  // descriptor each until the process runs out.
  app.server.maxConnections = deps.config.httpMaxConnections;

  // Who may call: the Host header first (DNS rebinding), then the bearer token on every
  // route but /health; before any body is read (auth.ts).
  const hosts = allowedHosts(deps.config.allowedHosts, deps.config.host);
  const bearer = bearerCheck(parseTokens(deps.config.apiToken).tokens);
  if (hosts !== null || bearer !== null) {
    app.addHook('onRequest', (req, _reply, done) => {
      if (hosts !== null && !hosts.allows(hostName(req.headers.host)))
        return done(new SandboxError('SBX_HOST_NOT_ALLOWED', 'Host header not allowed (SANDBOX_ALLOWED_HOSTS)') as unknown as Error);
      const open = req.routeOptions.url === '/health' || (req.routeOptions.url === '/metrics' && deps.config.metricsPublic);
      if (bearer !== null && !open && !bearer(req.headers.authorization))
        return done(new SandboxError('SBX_UNAUTHORIZED', 'missing or invalid bearer token', { headers: { 'www-authenticate': 'Bearer' } }) as unknown as Error);
      done();
    });
  }

  // A JSON body is held whole while it arrives, and its parsed value until the response
  // ends (a call waits in its session's queue with it): what has arrived of it, then what
  // its parsed value may hold, is charged to the memory budget (hold.ts), so many clients
  // sending big bodies, slowly or to full queues, get 503s, not the heap. (Multipart
  // uploads stream to disk.)
  // (Callback-style hooks: no promise per request on the exec path.)
  app.addHook('preParsing', (req, reply, payload, done) => {
    if (!/^application\/json/i.test(req.headers['content-type'] ?? '')) return done(null, payload);
    // A body for a session that does not exist is not worth reading.
    const id = (req.params as { id?: unknown } | undefined)?.id;
    if (req.method === 'POST' && typeof id === 'string' && !deps.sessions.has(id))
      return done(new SandboxError('SBX_SESSION_NOT_FOUND', `session not found: ${id}`) as unknown as Error);
    trackBody(req, reply.raw);
    // A body that announces at most SMALL_BYTES cannot hold more (HTTP framing): the hot
    // path is not metered.
    const declared = Number(req.headers['content-length']);
    if (req.headers['content-length'] !== undefined && declared <= SMALL_BYTES) return done(null, payload);
    done(null, meterBody(req, payload, deps.budget));
  });

  // An empty JSON body is an empty object (the reference accepts POST /sessions with none).
  // Bodies too complex to parse cheaply (json-bounds.ts) are refused before JSON.parse.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    const bytes = body as Buffer;
    const tokens = jsonTokens(bytes);
    if (tokens > MAX_JSON_TOKENS) {
      done(new SandboxError('SBX_BODY_TOO_LARGE', `request body too complex: more than ${MAX_JSON_TOKENS} JSON values`) as unknown as Error, undefined);
      return;
    }
    // From here to the end of the response, the body holds what its parsed value may (the
    // raw bytes are not kept past this call).
    try {
      holdParsed(req, parsedBodyBytes(bytes.length, tokens), deps.budget);
    } catch (e) {
      done(e as Error, undefined);
      return;
    }
    const text = bytes.toString('utf8');
    if (text.trim() === '') return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch (e) {
      const err = new SandboxError('SBX_VALIDATION', [{ type: 'json_invalid', loc: ['body'], msg: 'JSON decode error', input: {}, ctx: { error: (e as Error).message } }]);
      done(err as unknown as Error, undefined);
    }
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'otari-sandbox-container',
        version: deps.version,
        description: 'Code-execution sandbox server: a conforming backend of the Otari code-execution contract v1, with per-session isolation.',
      },
      // Every route but /health needs it when SANDBOX_API_TOKEN is set.
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'SANDBOX_API_TOKEN (when set)' } } },
      security: [{ bearer: [] }],
    },
  });
  // The API's page (GET /docs): Swagger UI served from its npm package, no CDN.
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true, uiConfig: { deepLinking: true, docExpansion: 'list' } });
  await app.register(multipart, {
    // The reference keeps the client's filename as sent, folders included.
    preservePath: true,
    limits: { fileSize: deps.config.maxUploadBytes, files: 1, fields: 16, fieldSize: 64 * 1024, parts: 20, headerPairs: 200 },
  });

  // A client that stops reading an answer (a big listing, a download) would keep its
  // memory reservation and descriptor forever: once the answer is being sent, a stall of
  // SANDBOX_HTTP_SEND_TIMEOUT_SECONDS without progress cuts the connection. (The socket's
  // inactivity timer; after the answer, Node sets it back to the keep-alive timeout.)
  // An answer must also keep a minimum pace: a client that reads a little now and then
  // would otherwise hold a large answer (and its share of the memory budget) for hours.
  // Past SANDBOX_HTTP_SEND_TIMEOUT_SECONDS plus its size at
  // SANDBOX_HTTP_MIN_SEND_BYTES_PER_SECOND, an answer still being sent is cut.
  const sendTimeoutMs = deps.config.httpSendTimeoutSeconds * 1000;
  const minRate = deps.config.httpMinSendBytesPerSecond;
  // Small answers go to the kernel at once (and Node stops reading pipelined requests while
  // answers back up), so only large answers and streams are watched.
  app.addHook('onSend', (_req, reply, payload, done) => {
    const whole = typeof payload === 'string' || Buffer.isBuffer(payload);
    if ((whole && payload.length <= SMALL_BYTES) || payload === null || payload === undefined) return done(null, payload);
    const res = reply.raw;
    res.setTimeout(sendTimeoutMs, () => res.destroy());
    const declared = Number(reply.getHeader('content-length'));
    const bytes = whole ? payload.length : Number.isFinite(declared) ? declared : deps.config.maxListBytes;
    const deadline = setTimeout(() => res.destroy(), sendTimeoutMs + (bytes / minRate) * 1000);
    deadline.unref();
    finished(res, () => clearTimeout(deadline));
    done(null, payload);
  });

  app.addHook('onResponse', async (req, reply) => {
    if (deps.logRequests?.() === false) return;
    const params = req.params as { id?: string } | undefined;
    req.log.info(
      {
        method: req.method,
        path: req.routeOptions.url ?? req.url.split('?')[0],
        url: req.url.length > 512 ? `${req.url.slice(0, 512)}…` : req.url,
        status: reply.statusCode,
        duration_ms: Math.round(reply.elapsedTime * 100) / 100,
        session_id: params?.id,
      },
      'request',
    );
  });

  app.setNotFoundHandler((_req, reply) => {
    void reply.code(404).send({ detail: 'Not Found', code: 'SBX_NOT_FOUND' });
  });

  app.setErrorHandler((error: FastifyError | SandboxError, req, reply) => {
    // (a download that failed before its first byte has its file's headers set already)
    for (const h of ['content-type', 'content-length', 'content-disposition']) reply.removeHeader(h);
    if (deps.metrics) deps.metrics.refused(errorCode(error), req.routeOptions.url === '/sessions/:id/exec' ? (req.body as { tool?: unknown } | undefined)?.tool : undefined);
    if (isSandboxError(error)) {
      for (const [k, v] of Object.entries(error.headers)) void reply.header(k, v);
      if (error.status === 500) {
        // Server-side failures may carry host details (paths, bwrap messages): log them,
        // answer with the stable code and a generic sentence.
        req.log.error({ err: { code: error.code, detail: error.detail } }, 'server-side failure');
        return reply.code(error.status).send({ detail: GENERIC_5XX[error.code] ?? 'Internal Server Error', code: error.code });
      }
      return reply.code(error.status).send({ detail: error.detail, code: error.code });
    }
    const fe = error as FastifyError & { validation?: { keyword: string; instancePath: string; message?: string; params: Record<string, unknown> }[]; validationContext?: string };
    if (fe.validation) {
      const where = fe.validationContext === 'querystring' ? 'query' : fe.validationContext === 'params' ? 'path' : (fe.validationContext ?? 'body');
      const detail = fe.validation.slice(0, 20).map((v) => {
        const missing = v.keyword === 'required' ? String(v.params.missingProperty ?? '') : null;
        const loc = [where, ...v.instancePath.split('/').filter(Boolean), ...(missing ? [missing] : [])];
        return { type: missing !== null ? 'missing' : v.keyword, loc, msg: missing !== null ? 'Field required' : (v.message ?? 'invalid'), input: null };
      });
      return reply.code(422).send({ detail, code: 'SBX_VALIDATION' });
    }
    if (fe.code === 'FST_REQ_FILE_TOO_LARGE' || fe.code === 'FST_FILES_LIMIT' || fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return reply.code(413).send({
        detail:
          fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
            ? 'request body too large'
            : fe.code === 'FST_FILES_LIMIT'
              ? 'one file per upload: the request has more than one file part'
              : uploadTooLarge(deps.config.maxUploadBytes),
        code: 'SBX_FILE_TOO_LARGE',
      });
    }
    const status = typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500 ? fe.statusCode : 500;
    if (status === 500) {
      req.log.error({ err: { message: fe.message, code: fe.code, stack: fe.stack } }, 'unhandled error');
      return reply.code(500).send({ detail: 'Internal Server Error', code: 'SBX_INTERNAL' });
    }
    return reply.code(status).send({ detail: fe.message, code: fe.code ?? 'SBX_BAD_REQUEST' });
  });

  // Each route group is an encapsulated plugin given what it needs. Registered after the
  // hooks, parsers and handlers above, it inherits them.
  const { config, sessions, exec, budget } = deps;
  // Streamed exec calls end cleanly at shutdown: their results are sent, then they end.
  const streams = deps.streams ?? new ExecStreams(config);
  app.addHook('preClose', async () => {
    await streams.close();
  });
  await app.register(healthRoutes, {
    sessions,
    config,
    budget,
    version: deps.version,
    isolation: deps.isolation,
    loopStats: deps.loopStats,
    draining: deps.draining,
    authorized: bearer ?? undefined,
  });
  await app.register(sessionRoutes, { sessions });
  await app.register(sessionScope, { sessions, exec, streams, budget, config, metrics: deps.metrics });

  if (deps.metrics) {
    const metrics = deps.metrics;
    app.get('/metrics', { schema: { summary: 'Prometheus metrics (text format)', produces: ['text/plain'] } }, async (_req, reply) =>
      reply.header('content-type', metrics.contentType).send(await metrics.text()),
    );
  }
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}

/** The SBX_* code an error is answered with (the handler above), for /metrics. */
function errorCode(error: FastifyError | SandboxError): string {
  if (isSandboxError(error)) return error.code;
  const fe = error as FastifyError & { validation?: unknown };
  if (fe.validation) return 'SBX_VALIDATION';
  if (fe.code === 'FST_REQ_FILE_TOO_LARGE' || fe.code === 'FST_FILES_LIMIT' || fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return 'SBX_FILE_TOO_LARGE';
  return typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500 ? 'SBX_BAD_REQUEST' : 'SBX_INTERNAL';
}

const GENERIC_5XX: Partial<Record<string, string>> = {
  SBX_SANDBOX_FAILED: "the session's sandbox could not be started; see the server log",
};

export function uploadTooLarge(maxUploadBytes: number): string {
  return maxUploadBytes % MiB === 0 ? `file exceeds ${maxUploadBytes / MiB} MB limit` : `file exceeds ${maxUploadBytes} byte limit`;
}
