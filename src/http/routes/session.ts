/**
 * One session: every route under /sessions/:id that works on a live session, as one
 * encapsulated plugin. Its preHandler resolves the session once (404
 * SBX_SESSION_NOT_FOUND for an id that is not one), counts the request as activity when
 * the route says so (`config: { touchSession: true }`), and hands it to the handler:
 * `sessionOf(req)`. Handlers never look the session up again (the exec service, which
 * takes an id, still does: routes/exec.ts).
 *
 * The lookup runs after validation (a preHandler), where each handler used to do it: a
 * request with both a bad body and an unknown session is still answered 422. A JSON POST
 * to an unknown session is refused earlier still, before its body is read (app.ts's
 * preParsing hook).
 *
 * DELETE /sessions/:id is not here: it is idempotent (routes/sessions.ts).
 */
import type { Config } from '../../config.js';
import type { MemoryBudget } from '../../budget.js';
import type { Session } from '../../sessions/session.js';
import type { Executor, RoutePlugin, SessionStore } from '../types.js';
import { ErrorBody, SessionHandle, SessionParams } from '../schemas.js';
import { attachSession, sessionOf, SESSION_DECORATOR } from '../scoped-session.js';
import { execRoutes } from './exec.js';
import type { ServerMetrics } from '../metrics.js';
import { fileRoutes } from './files.js';
import { toolRoutes } from './tools.js';
import { streamRoutes } from './streams.js';
import type { ExecStreams } from '../exec-streams.js';

export interface SessionScopeOptions {
  sessions: Pick<SessionStore, 'get'>;
  exec: Executor;
  streams: ExecStreams;
  budget: Pick<MemoryBudget, 'reserve'>;
  config: Pick<Config, 'maxCodeChars' | 'maxDownloadBytes' | 'maxListEntries' | 'maxListBytes'>;
  metrics?: Pick<ServerMetrics, 'execAnswered'>;
}

export const sessionScope: RoutePlugin<SessionScopeOptions> = (scope, deps, done) => {
  scope.decorateRequest(SESSION_DECORATOR, null);
  // (Callback style: no promise per request on the exec path.)
  scope.addHook('preHandler', (req, _reply, next) => {
    let session: Session;
    try {
      session = deps.sessions.get((req.params as { id: string }).id);
    } catch (e) {
      return next(e as Error);
    }
    if (req.routeOptions.config.touchSession) session.touch();
    attachSession(req, session);
    next();
  });

  // Reading a session's handle is not activity.
  scope.get('/sessions/:id', { schema: { summary: 'Get a session', params: SessionParams, response: { 200: SessionHandle, 404: ErrorBody } } }, async (req) =>
    sessionOf(req).handle(),
  );

  void scope.register(execRoutes, { exec: deps.exec, streams: deps.streams, budget: deps.budget, config: deps.config, metrics: deps.metrics });
  void scope.register(streamRoutes, { streams: deps.streams });
  void scope.register(fileRoutes, { budget: deps.budget, config: deps.config });
  void scope.register(toolRoutes, {});
  done();
};
