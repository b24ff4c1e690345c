import Type from 'typebox';
import { parseTokens, type Config } from '../../config.js';
import type { MemoryBudget } from '../../budget.js';
import { scanPool } from '../../files/scan-pool.js';
import type { LoopStats } from '../../loop-monitor.js';
import type { IsolationInfo, RoutePlugin, SessionStore } from '../types.js';

export interface HealthRoutesOptions {
  sessions: Pick<SessionStore, 'count' | 'cleaning' | 'poolState' | 'replica'>;
  config: Pick<Config, 'maxSessions' | 'apiToken'>;
  version: string;
  isolation: IsolationInfo;
  budget: Pick<MemoryBudget, 'usedBytes' | 'totalBytes'>;
  loopStats?: () => LoopStats;
  draining?: () => boolean;
  /** Whether a request may see the full view (a valid bearer token, or no token set). */
  authorized?: (authorization: string | undefined) => boolean;
}

/** The same body while serving (200) and while draining after SIGTERM (503). */
const HealthBody = Type.Object(
  {
    status: Type.String(),
    session_count: Type.Integer(),
    max_sessions: Type.Integer(),
    version: Type.String(),
    isolation: Type.Optional(Type.Unknown()),
    warm_pool: Type.Optional(Type.Unknown()),
    sessions_cleaning: Type.Optional(Type.Integer()),
    event_loop: Type.Optional(Type.Unknown()),
    memory_budget: Type.Optional(Type.Unknown()),
    workspace_threads: Type.Optional(Type.Integer()),
    auth: Type.Optional(Type.String()),
    replica: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
);

export const healthRoutes: RoutePlugin<HealthRoutesOptions> = (app, deps, done) => {
  app.get(
    '/health',
    {
      schema: {
        summary: 'Liveness and state',
        description:
          'Open even when SANDBOX_API_TOKEN is set (probes carry no token); without a valid token it shows only status, session counts, version, replica and auth, not the isolation details (host uid range, cgroup paths), pool, event-loop and memory figures.',
        // Open even when SANDBOX_API_TOKEN is set (probes carry no token).
        security: [],
        response: {
          200: HealthBody,
          503: HealthBody,
        },
      },
    },
    async (req, reply) => {
      // Draining after SIGTERM: 503, so a readiness probe takes this replica out while its
      // calls finish; the body is the same.
      const draining = deps.draining?.() === true;
      if (draining) void reply.code(503).header('retry-after', '5');
      const full = deps.authorized?.(req.headers.authorization) ?? true;
      return full ? health(draining) : publicHealth(draining);
    },
  );
  // What anyone who can reach the port sees when the API has a token: enough for probes
  // and a router, nothing about the host (uid range, cgroup paths, host limits).
  const publicHealth = (draining: boolean) => ({
    status: draining ? 'draining' : 'ok',
    session_count: deps.sessions.count,
    max_sessions: deps.config.maxSessions,
    version: deps.version,
    replica: deps.sessions.replica,
    auth: 'bearer',
  });
  const health = (draining: boolean) => ({
    status: draining ? 'draining' : 'ok',
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
    // The threads that look at workspaces off the event loop (scan-pool.ts), now.
    workspace_threads: scanPool().size,
    // The name in this server's session ids, by which a proxy routes to it.
    replica: deps.sessions.replica,
    // Whether the API needs a bearer token (SANDBOX_API_TOKEN); never the token.
    auth: parseTokens(deps.config.apiToken).tokens.length > 0 ? 'bearer' : 'none',
  });
  done();
};
