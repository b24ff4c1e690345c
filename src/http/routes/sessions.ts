import Type from 'typebox';
import type { App, AppDeps } from '../app.js';
import { CreateSessionBody, ErrorBody, SessionHandle, SessionParams } from '../schemas.js';

export function registerSessionRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/sessions',
    {
      schema: {
        summary: 'Create a session',
        body: Type.Optional(CreateSessionBody),
        response: { 201: SessionHandle, 422: ErrorBody, 503: ErrorBody },
      },
    },
    async (req, reply) => {
      const body = (req.body ?? {}) as { idle_timeout_seconds?: number | null; max_lifetime_seconds?: number | null };
      const session = await deps.sessions.create({
        idleTimeoutSeconds: body.idle_timeout_seconds ?? undefined,
        maxLifetimeSeconds: body.max_lifetime_seconds ?? undefined,
      });
      return reply.code(201).send(session.handle());
    },
  );

  app.get('/sessions/:id', { schema: { summary: 'Get a session', params: SessionParams, response: { 200: SessionHandle, 404: ErrorBody } } }, async (req) =>
    deps.sessions.get(req.params.id).handle(),
  );

  app.delete('/sessions/:id', { schema: { summary: 'Delete a session (idempotent)', params: SessionParams } }, async (req, reply) => {
    await deps.sessions.destroy(req.params.id);
    return reply.code(204).send();
  });
}
