/**
 * The session a request under /sessions/:id was resolved to. The scope plugin
 * (routes/session.ts) decorates its requests with SESSION_DECORATOR and attaches the
 * session in its preHandler; handlers read it with sessionOf(). A module of its own so
 * that the route plugins and the scope that registers them do not import each other.
 */
import type { FastifyRequest } from 'fastify';
import type { Session } from '../sessions/session.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Under /sessions/:id: the request counts as the session's activity (its idle timer
     * starts again) once the session is resolved. */
    touchSession?: boolean;
  }
}

/** The request property the scope declares (null until its preHandler has run). */
export const SESSION_DECORATOR = 'sandboxSession';

interface ScopedRequest {
  [SESSION_DECORATOR]: Session | null;
}

export function attachSession(req: FastifyRequest, session: Session): void {
  (req as unknown as ScopedRequest)[SESSION_DECORATOR] = session;
}

/** The request's session; throws for a route outside the /sessions/:id scope (a bug). */
export function sessionOf(req: FastifyRequest): Session {
  const session = (req as unknown as ScopedRequest)[SESSION_DECORATOR];
  if (!session) throw new Error(`no session resolved for ${req.method} ${req.url}: the route is outside the /sessions/:id scope`);
  return session;
}
