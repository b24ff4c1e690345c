/**
 * What app.ts and the route plugins share: the app's Fastify type, the plugin type, and
 * what the HTTP layer uses of the rest of the server. The routes import this module,
 * never app.ts, so types point one way: app.ts -> routes -> types.ts.
 *
 * The services are narrow views (`Pick`s) of the real classes: main.ts hands in the
 * real ones, a unit test hands in fakes with only these members.
 */
import type { FastifyInstance, FastifyPluginCallback, FastifyPluginOptions, RawServerDefault } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { MemoryBudget } from '../budget.js';
import type { LoopStats } from '../loop-monitor.js';
import type { SessionManager } from '../sessions/manager.js';
import type { ExecService } from '../sessions/exec.js';
import type { ExecStreams } from './exec-streams.js';
import type { ServerMetrics } from './metrics.js';

/** What the HTTP layer uses of the session manager. */
export type SessionStore = Pick<SessionManager, 'count' | 'cleaning' | 'poolState' | 'replica' | 'has' | 'get' | 'create' | 'destroy'>;

/** What the HTTP layer uses of the exec service. */
export type Executor = Pick<ExecService, 'exec'>;

/** How the sessions are isolated, as /health reports it (built by main.ts). */
export interface IsolationInfo {
  /** `root`: a host uid per session (and a disk quota and memory cgroup where the host
   * allows, see the fields below); `rootless`: the server's own uid, the same sandbox. */
  mode: 'root' | 'rootless';
  /** How session interpreters start: forked from the template, or each in bubblewrap. */
  interpreters: string;
  /** How bash commands start: in the sandbox of the session's template interpreter (a pid
   * namespace of their own), or each in bubblewrap. */
  commands: string;
  protections: string[];
  uid_per_session: boolean;
  /** The host uids this server's sessions run as (root only), claimed for its lifetime. */
  uid_range?: string;
  disk_quota: string;
  memory_limit: string;
  /** A session's bound on processes and threads (SANDBOX_SESSION_PIDS_MAX, lowered where all
   * sessions together would pass the server's share of the host's pid_max or threads-max). */
  processes?: string;
  /** A session's bound on open files, and whether all sessions could reach fs.file-max. */
  open_files?: string;
  /** Whether a session's socket buffers count against a limit of its own. */
  socket_memory: string;
  /** A session's share of the host-wide TCP buffer memory (net.ipv4.tcp_mem), and whether
   * all sessions together stay below it. */
  tcp_memory?: string;
  /** Whether memory the kernel holds for a session's objects counts against its limit. */
  kernel_memory: string;
  /** The bound on all of this server's sessions together (its parent cgroup). */
  sessions_total: string;
  /** The ptys a sandbox may hold, and whether all sessions together fit the host's. */
  ptys: string;
  /** Whether the sandbox's system files (/usr, /etc, the driver) are overlays of its own or
   * the host's inodes (a lock on those is seen host-wide). */
  system_files: string;
  /** Whether a sandbox's /dev nodes are its session's own or the host's. */
  device_nodes: string;
}

export interface AppDeps {
  config: Config;
  log: Logger;
  sessions: SessionStore;
  exec: Executor;
  isolation: IsolationInfo;
  version: string;
  budget: MemoryBudget;
  /** Prometheus metrics (GET /metrics); none in unit tests that do not ask. */
  metrics?: ServerMetrics;
  /** The event loop's blocking figures (loop-monitor.ts), shown in /health. */
  loopStats?: () => LoopStats;
  /** Whether the server is draining after SIGTERM (/health answers 503 then). */
  draining?: () => boolean;
  /** Streamed exec calls (exec-streams.ts); main.ts makes it, to end them before it cuts
   * the last connections at shutdown. Made by buildApp when absent. */
  streams?: ExecStreams;
  /** Whether requests get access-log lines now (main.ts: not during the start-up warm-up,
   * whose requests are not clients'); always when absent. */
  logRequests?: () => boolean;
}

export type App = FastifyInstance<any, any, any, Logger, TypeBoxTypeProvider>;

/** A route group: an encapsulated Fastify plugin handed exactly what it needs as options.
 * Registered after app.ts's hooks, parsers and error handler, it inherits them. */
export type RoutePlugin<Options extends FastifyPluginOptions> = FastifyPluginCallback<Options, RawServerDefault, TypeBoxTypeProvider, Logger>;
