import Type from 'typebox';
import { parseTokens, type Config } from '../../config.js';
import type { MemoryBudget } from '../../budget.js';
import type { LoopStats } from '../../loop-monitor.js';
import type { IsolationInfo, RoutePlugin, SessionStore } from '../types.js';

export interface HealthRoutesOptions {
  sessions: Pick<SessionStore, 'count' | 'cleaning' | 'poolState' | 'replica'>;
  config: Pick<Config, 'maxSessions' | 'apiToken'>;
  version: string;
  isolation: IsolationInfo;
  budget: Pick<MemoryBudget, 'usedBytes' | 'totalBytes'>;
  loopStats?: () => LoopStats;
}

export const healthRoutes: RoutePlugin<HealthRoutesOptions> = (app, deps, done) => {
  app.get(
    '/health',
    {
      schema: {
        summary: 'Liveness and state',
        // Open even when SANDBOX_API_TOKEN is set (probes carry no token).
        security: [],
        response: {
          200: Type.Object(
            {
              status: Type.String(),
              session_count: Type.Integer(),
              max_sessions: Type.Integer(),
              version: Type.String(),
              isolation: Type.Unknown(),
              warm_pool: Type.Unknown(),
              sessions_cleaning: Type.Optional(Type.Integer()),
              event_loop: Type.Optional(Type.Unknown()),
              memory_budget: Type.Unknown(),
              auth: Type.Optional(Type.String()),
              replica: Type.Optional(Type.String()),
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
      // Extensions: deleted sessions whose mounts, folder and cgroup are still being
      // removed (they count against max_sessions until done); how long the server blocked
      // its own event loop; the memory that large operations hold right now
      // (SANDBOX_SERVER_MEMORY_BUDGET_MB).
      sessions_cleaning: deps.sessions.cleaning,
      event_loop: deps.loopStats?.(),
      memory_budget: { used_bytes: deps.budget.usedBytes, total_bytes: deps.budget.totalBytes },
      // Whether the API needs a bearer token (SANDBOX_API_TOKEN); never the token.
      // The name in this server's session ids, by which a proxy routes to it.
      replica: deps.sessions.replica,
      auth: parseTokens(deps.config.apiToken).tokens.length > 0 ? 'bearer' : 'none',
    }),
  );
  done();
};
