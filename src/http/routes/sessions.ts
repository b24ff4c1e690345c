/**
 * The session collection: create, and delete by id. DELETE is idempotent (204 for an id
 * that is not, or no longer, a session), so it stays out of the /sessions/:id scope
 * (session.ts), whose routes all answer 404 for such an id.
 */
import Type from 'typebox';
import type { RoutePlugin, SessionStore } from '../types.js';
import { CreateSessionBody, ErrorBody, SessionHandle, SessionParams } from '../schemas.js';

export interface SessionRoutesOptions {
  sessions: Pick<SessionStore, 'create' | 'destroy'>;
}

export const sessionRoutes: RoutePlugin<SessionRoutesOptions> = (app, deps, done) => {
  app.post(
    '/sessions',
    {
      schema: {
        summary: 'Create a session',
        body: Type.Optional(CreateSessionBody),
        response: { 201: SessionHandle, 422: ErrorBody, 503: ErrorBody },
      },
      // null means "not given" (as in the reference); removing it before validation keeps
      // coercion from ever turning 0 or "" into null.
      preValidation: async (req) => {
        if (req.body === null || req.body === undefined) (req as { body: unknown }).body = {};
        const body = req.body as Record<string, unknown> | undefined;
        if (body && typeof body === 'object') for (const k of ['idle_timeout_seconds', 'max_lifetime_seconds']) if (body[k] === null) delete body[k];
      },
    },
    async (req, reply) => {
      const body = req.body ?? {};
      const session = await deps.sessions.create({ idleTimeoutSeconds: body.idle_timeout_seconds, maxLifetimeSeconds: body.max_lifetime_seconds });
      return reply.code(201).send(session.handle());
    },
  );

  app.delete('/sessions/:id', { schema: { summary: 'Delete a session (idempotent)', params: SessionParams } }, async (req, reply) => {
    await deps.sessions.destroy(req.params.id);
    return reply.code(204).send();
  });
  done();
};
