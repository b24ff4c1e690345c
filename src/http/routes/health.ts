import type { App, AppDeps } from '../app.js';
import Type from 'typebox';

export interface IsolationInfo {
  mode: string;
  protections: string[];
  uid_per_session: boolean;
  disk_quota: string;
  memory_limit: string;
}

export function registerHealthRoutes(app: App, deps: AppDeps): void {
  app.get(
    '/health',
    {
      schema: {
        summary: 'Liveness and state',
        response: {
          200: Type.Object(
            {
              status: Type.String(),
              session_count: Type.Integer(),
              max_sessions: Type.Integer(),
              version: Type.String(),
              isolation: Type.Unknown(),
              warm_pool: Type.Unknown(),
              event_loop: Type.Optional(Type.Unknown()),
              memory_budget: Type.Unknown(),
            },
            { additionalProperties: true },
          ),
        },
      },
    },
    async () => ({
      status: 'ok',
      session_count: deps.sessions.count,
      max_sessions: deps.config.maxSessions,
      version: deps.version,
      isolation: deps.isolation,
      warm_pool: deps.sessions.poolState(),
      // Extensions: how long the server blocked its own event loop, and the memory that
      // large operations hold right now (SANDBOX_SERVER_MEMORY_BUDGET_MB).
      event_loop: deps.loopStats?.(),
      memory_budget: { used_bytes: deps.budget.usedBytes, total_bytes: deps.budget.totalBytes },
    }),
  );
}
