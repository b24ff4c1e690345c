/**
 * GET /metrics: Prometheus text format from prom-client, on a registry of this app's own
 * (never prom-client's global one: two apps in one process, as in tests, never mix).
 *
 * Labels are bounded by construction: tool names (three, or `other`), outcomes (a fixed
 * list plus the SBX_* codes of errors.ts), limit kinds (the verdict names), error codes.
 * Never a session id, path or client value.
 *
 * Counts the session manager already keeps (created, deleted, reaped, pool hits and
 * misses) and states (sessions, pool, queued calls, cleanup backlog, memory budget) are
 * read at scrape time; nothing on the request path but the exec counters.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ERROR_STATUS } from '../errors.js';
import { LIMIT_KINDS } from '../limits.js';
import type { ExecAnswer } from '../tools/anthropic-format.js';
import type { SessionManager } from '../sessions/manager.js';
import type { MemoryBudget } from '../budget.js';

const TOOLS = new Set(['code_execution', 'bash_code_execution', 'text_editor_code_execution']);
const LIMITS: ReadonlySet<string> = new Set(LIMIT_KINDS);

export type MetricsSource = Pick<SessionManager, 'count' | 'cleaning' | 'poolState' | 'stats' | 'queuedCalls'>;

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly execs: Counter<'tool' | 'outcome'>;
  private readonly execSeconds: Histogram<'tool'>;
  private readonly limits: Counter<'kind'>;
  private readonly restarts: Counter;
  private readonly rejections: Counter<'code'>;

  constructor(sessions: MetricsSource, budget: Pick<MemoryBudget, 'usedBytes' | 'totalBytes'>, config: { maxSessions: number }) {
    const registers = [this.registry];
    const p = 'sandbox_';
    collectDefaultMetrics({ register: this.registry });
    this.execs = new Counter({
      name: `${p}execs_total`,
      help: 'Calls answered, by tool and outcome (ok, error: non-zero exit, a limit kind, or the SBX_* code the call was refused with)',
      labelNames: ['tool', 'outcome'],
      registers,
    });
    this.execSeconds = new Histogram({
      name: `${p}exec_duration_seconds`,
      help: 'Time from a call reaching its session to its result, by tool (queue wait included)',
      labelNames: ['tool'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    });
    this.limits = new Counter({ name: `${p}limits_exceeded_total`, help: 'Calls ended or cut by a limit, by kind', labelNames: ['kind'], registers });
    this.restarts = new Counter({ name: `${p}interpreter_restarts_total`, help: 'Calls after which the session interpreter was restarted', registers });
    this.rejections = new Counter({
      name: `${p}rejections_total`,
      help: 'Requests refused with a 401, 403, 429 or 503 (busy session, at capacity, memory budget, shutting down, auth), by SBX_* code',
      labelNames: ['code'],
      registers,
    });
    const counterFrom = (name: string, help: string, read: () => number) =>
      new Counter({
        name: `${p}${name}`,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    counterFrom('sessions_created_total', 'Sessions created', () => sessions.stats.created);
    counterFrom('sessions_deleted_total', 'Sessions deleted by a client (or at shutdown)', () => sessions.stats.deleted);
    counterFrom('sessions_reaped_total', 'Sessions reaped after their idle timeout or lifetime', () => sessions.stats.reaped);
    counterFrom('warm_pool_hits_total', 'Creates served from the warm pool', () => sessions.stats.poolHits);
    counterFrom('warm_pool_misses_total', 'Creates that made their sandbox themselves', () => sessions.stats.poolMisses);
    const gaugeFrom = (name: string, help: string, read: () => number) =>
      new Gauge({
        name: `${p}${name}`,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    gaugeFrom('sessions_active', 'Live sessions', () => sessions.count);
    gaugeFrom('sessions_max', 'SANDBOX_MAX_SESSIONS', () => config.maxSessions);
    gaugeFrom('warm_pool_ready', 'Sandboxes ready in the warm pool', () => sessions.poolState().ready);
    gaugeFrom('warm_pool_target', 'Sandboxes the warm pool aims to hold now', () => sessions.poolState().target);
    gaugeFrom('queued_calls', 'Calls waiting behind a running call in their session', () => sessions.queuedCalls);
    gaugeFrom('cleanup_backlog', 'Deleted sessions whose folders, mounts and cgroups are still being removed', () => sessions.cleaning);
    gaugeFrom('memory_budget_used_bytes', 'Server memory held by large transient work (SANDBOX_SERVER_MEMORY_BUDGET_MB)', () => budget.usedBytes);
    gaugeFrom('memory_budget_bytes', 'SANDBOX_SERVER_MEMORY_BUDGET_MB, bytes', () => budget.totalBytes);
  }

  /** A call that produced a result. */
  execAnswered(tool: unknown, answer: ExecAnswer): void {
    const t = toolLabel(tool);
    const limit = answer.limit_exceeded;
    // (an Anthropic-native error block has no return code: an error)
    const rc = (answer.result_block.content as { return_code?: unknown }).return_code;
    const outcome = limit ? limitLabel(limit) : rc === 0 ? 'ok' : 'error';
    this.execs.inc({ tool: t, outcome });
    this.execSeconds.observe({ tool: t }, answer.execution_time_ms / 1000);
    if (limit) this.limits.inc({ kind: limitLabel(limit) });
    if (answer.interpreter_restarted) this.restarts.inc();
  }

  /** A request answered with an SBX_* error (any route); exec calls count by tool too. */
  refused(code: string, execTool?: unknown): void {
    const c = code in ERROR_STATUS ? code : 'other';
    if (execTool !== undefined) this.execs.inc({ tool: toolLabel(execTool), outcome: c });
    const status = ERROR_STATUS[c as keyof typeof ERROR_STATUS];
    if (status === 401 || status === 403 || status === 429 || status === 503) this.rejections.inc({ code: c });
  }

  /** Forgets the counts so far (the start-up warm-up's requests are not clients'). */
  reset(): void {
    this.registry.resetMetrics();
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

const toolLabel = (tool: unknown): string => (typeof tool === 'string' && TOOLS.has(tool) ? tool : 'other');
const limitLabel = (kind: string): string => (LIMITS.has(kind) ? kind : 'other');
