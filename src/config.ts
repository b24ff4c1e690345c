/**
 * Every setting of the server in one schema: bounds, default, description, unit in the
 * name. `loadConfig(env)` is the only reader of the environment's values; it validates
 * everything at once and reports every problem, then freezes the result.
 *
 * The `SANDBOX_*` names and meanings that the Python reference image already uses are
 * kept as they are, so existing deployments carry over unchanged.
 */
import Type, { type Static } from 'typebox';
import Value from 'typebox/value';

const MiB = 1024 * 1024;

const int = (env: string, def: number, min: number, max: number, description: string) => ({
  env,
  schema: Type.Integer({ default: def, minimum: min, maximum: max, description: `${description} (${env})` }),
});
const bool = (env: string, def: boolean, description: string) => ({
  env,
  schema: Type.Boolean({ default: def, description: `${description} (${env})` }),
});
/** How a boolean setting may be written. */
const BOOLEAN_WORDS = new Map<string, boolean>([
  ['true', true],
  ['1', true],
  ['yes', true],
  ['on', true],
  ['false', false],
  ['0', false],
  ['no', false],
  ['off', false],
]);
const str = (env: string, def: string, description: string) => ({
  env,
  schema: Type.String({ default: def, minLength: 1, description: `${description} (${env})` }),
});

/** Setting key -> environment variable and schema. */
const SETTINGS = {
  port: int('PORT', 8080, 0, 65535, 'TCP port to listen on'),
  host: str('HOST', '0.0.0.0', 'Address to listen on'),
  apiToken: {
    env: 'SANDBOX_API_TOKEN',
    schema: Type.String({
      default: '',
      description: `Bearer token every route but /health requires (several comma-separated, for rotation; at least 16 characters each); empty: no authentication (SANDBOX_API_TOKEN)`,
    }),
  },
  allowedHosts: str(
    'SANDBOX_ALLOWED_HOSTS',
    'auto',
    "Host names a request's Host header may carry, comma-separated (against DNS rebinding); auto: localhost and IP addresses when HOST is a loopback address, any otherwise; *: any",
  ),
  metricsPublic: bool('SANDBOX_METRICS_PUBLIC', false, 'Serve GET /metrics without the bearer token (SANDBOX_API_TOKEN), e.g. to a scraper on a private port'),
  replicaId: {
    env: 'SANDBOX_REPLICA_ID',
    schema: Type.String({
      default: '',
      pattern: '^(|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$',
      description:
        "This server's name in its session ids (sbx_<name>_<random>), by which a proxy routes a session's calls to it; a DNS label; empty: the host name (a Kubernetes pod's name) (SANDBOX_REPLICA_ID)",
    }),
  },
  sessionsRoot: str('SANDBOX_SESSIONS_ROOT', '/var/sandbox/sessions', 'Folder holding one private folder per session'),
  idleTimeoutSeconds: int('SANDBOX_SESSION_IDLE_TIMEOUT', 900, 1, 30 * 24 * 3600, 'Ceiling and default of a session idle timeout, seconds'),
  maxLifetimeSeconds: int('SANDBOX_SESSION_MAX_LIFETIME', 7200, 1, 30 * 24 * 3600, 'Ceiling and default of a session lifetime, seconds'),
  gcIntervalSeconds: int('SANDBOX_SESSION_GC_INTERVAL', 30, 1, 3600, 'How often expired sessions are reaped, seconds'),
  maxSessions: int('SANDBOX_MAX_SESSIONS', 256, 1, 10000, 'Live sessions at most (warm-pool members count too)'),
  memoryMb: int('SANDBOX_RUNNER_MEMORY_MB', 1536, 64, 1024 * 1024, 'Memory per session, MiB'),
  cpuSeconds: int('SANDBOX_RUNNER_CPU_SECONDS', 120, 1, 1_000_000, 'CPU time per process, seconds'),
  fileSizeMb: int('SANDBOX_RUNNER_FSIZE_MB', 256, 1, 1024 * 1024, 'Largest file a program may write, MiB'),
  maxOpenFiles: int('SANDBOX_RUNNER_NOFILE', 256, 16, 1 << 20, 'Open files per process'),
  maxOutputBytes: int('SANDBOX_RUNNER_MAX_OUTPUT_BYTES', MiB, 1024, 64 * MiB, 'Output kept per stream per call, bytes'),
  bashOutputReadMaxMb: int(
    'SANDBOX_BASH_OUTPUT_READ_MAX_MB',
    256,
    1,
    64 * 1024,
    'Output a bash command may write in all (stdout and stderr), MiB: past it the command is killed (limit output_bytes). The server reads every byte a command writes (it keeps the head, the tail and the spill file), so this bounds the server CPU one call can cost',
  ),
  outputSpillMaxBytes: int(
    'SANDBOX_OUTPUT_SPILL_MAX_BYTES',
    16 * MiB,
    0,
    1024 * MiB,
    'A stream past SANDBOX_RUNNER_MAX_OUTPUT_BYTES is saved whole, up to this size, in /workspace/.output/ and returned as an artifact (0, or not above that cap: no file), bytes',
  ),
  artifactsMaxFiles: int(
    'SANDBOX_ARTIFACTS_MAX_FILES',
    200,
    0,
    100_000,
    'Files created or modified by one call that are listed and kept as artifacts, at most (0: no artifacts, no workspace scan)',
  ),
  artifactsMaxBytes: int(
    'SANDBOX_ARTIFACTS_MAX_BYTES',
    64 * MiB,
    0,
    64 * 1024 * MiB,
    'Bytes of artifacts kept from one call, at most (larger files are left out and stderr says so), bytes',
  ),
  artifactsScanMaxEntries: int(
    'SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES',
    2_000,
    1,
    1_000_000,
    'Names the workspace scan after each Python or bash call examines at most, a folder counting as 4 (files past them are not listed and stderr says so); the scan runs on the event loop, every such call pays it: a few microseconds a file (an editor call looks only at the files it wrote)',
  ),
  artifactsKeepMax: int('SANDBOX_ARTIFACTS_KEEP_MAX', 1000, 1, 1_000_000, 'Artifacts a session keeps for download at most; the oldest is evicted first'),
  artifactsKeepMb: int(
    'SANDBOX_ARTIFACTS_KEEP_MB',
    256,
    1,
    1024 * 1024,
    "Artifact copies a session keeps at most (on the session's own disk, its quota; never more than a quarter of SANDBOX_WORKSPACE_MB), MiB; the oldest is evicted first",
  ),
  maxTimeoutSeconds: int('SANDBOX_RUNNER_WALL_CLOCK_SECONDS', 120, 1, 24 * 3600, 'Ceiling of a call timeout, seconds'),
  defaultTimeoutSeconds: int('SANDBOX_DEFAULT_TIMEOUT_SECONDS', 30, 1, 24 * 3600, 'Timeout of a call that names none, seconds'),
  maxProcesses: int('SANDBOX_RUNNER_NPROC', 256, 8, 100_000, 'Processes per session'),
  sessionPidsMax: int('SANDBOX_SESSION_PIDS_MAX', 1024, 16, 1_000_000, 'Processes and threads of one session together (pids cgroup, where one can be made)'),
  sessionsMemoryMb: int(
    'SANDBOX_SESSIONS_MEMORY_MB',
    0,
    0,
    1 << 30,
    "Memory of all sessions together (the server's parent memory cgroup), MiB; 0: this server's part of the host's memory (75 % of MemTotal for all servers on the host, each taking at most three quarters of what the servers started before it leave)",
  ),
  sessionPtysMax: int(
    'SANDBOX_SESSION_PTYS_MAX',
    16,
    1,
    65536,
    "Pseudo-terminals a sandbox may hold at once (its private devpts is mounted with this max, below the host's kernel.pty.max)",
  ),
  workspaceMb: int('SANDBOX_WORKSPACE_MB', 1024, 1, 1024 * 1024, 'Disk per session (workspace and /tmp together), MiB'),
  shmMb: int('SANDBOX_SHM_MB', 64, 1, 64 * 1024, 'Size of the private /dev/shm of a sandbox, MiB'),
  maxUploadBytes: int('SANDBOX_MAX_UPLOAD_BYTES', 100 * MiB, 1, 64 * 1024 * MiB, 'Largest upload, bytes'),
  maxDownloadBytes: int('SANDBOX_MAX_DOWNLOAD_BYTES', 1024 * MiB, 1, 1024 * 1024 * MiB, 'Largest file served by a download, bytes'),
  maxCodeChars: int('SANDBOX_MAX_CODE_CHARS', 200_000, 1, 16 * MiB, 'Longest code or command of one call, characters'),
  execQueueMax: int('SANDBOX_EXEC_QUEUE_MAX', 8, 0, 1000, 'Calls waiting behind the running one in a session before 429'),
  interruptGraceMs: int('SANDBOX_INTERRUPT_GRACE_MS', 2000, 100, 60_000, 'After a timeout interrupt, how long the interpreter gets to stop, ms'),
  shutdownGraceSeconds: int('SANDBOX_SHUTDOWN_GRACE_SECONDS', 10, 0, 3600, 'On SIGTERM, how long in-flight calls may finish, seconds'),
  serverMemoryBudgetMb: int(
    'SANDBOX_SERVER_MEMORY_BUDGET_MB',
    512,
    16,
    64 * 1024,
    'Server memory that large transient work (editor operations, listings, tool replies, large request bodies and answers) may hold at once, across all sessions; past it such calls answer 503, MiB',
  ),
  maxListEntries: int('SANDBOX_MAX_LIST_ENTRIES', 20_000, 1, 1_000_000, 'Entries in one file listing at most (the answer says truncated past it)'),
  maxListBytes: int('SANDBOX_MAX_LIST_BYTES', 8 * MiB, 64 * 1024, 256 * MiB, 'Size of one file listing answer at most (the answer says truncated past it), bytes'),
  editorUndoMb: int('SANDBOX_EDITOR_UNDO_MB', 64, 0, 64 * 1024, "Text-editor undo history per session, kept on disk in the session's own folder (its quota), MiB"),
  toolReplyMaxBytes: int('SANDBOX_TOOL_REPLY_MAX_BYTES', MiB, 1024, 64 * MiB, 'Largest programmatic-tool reply accepted from the router, bytes'),
  httpRequestTimeoutSeconds: int('SANDBOX_HTTP_REQUEST_TIMEOUT_SECONDS', 120, 1, 24 * 3600, 'Time a client has to send a whole request (headers and body), seconds'),
  httpHeadersTimeoutSeconds: int('SANDBOX_HTTP_HEADERS_TIMEOUT_SECONDS', 20, 1, 3600, 'Time a client has to send the request headers, seconds'),
  httpKeepAliveTimeoutSeconds: int('SANDBOX_HTTP_KEEPALIVE_TIMEOUT_SECONDS', 72, 1, 3600, 'How long an idle keep-alive connection is kept open, seconds'),
  httpSendTimeoutSeconds: int(
    'SANDBOX_HTTP_SEND_TIMEOUT_SECONDS',
    60,
    1,
    24 * 3600,
    'How long a response may make no progress (a client that stops reading) before its connection is cut, seconds',
  ),
  httpMinSendBytesPerSecond: int(
    'SANDBOX_HTTP_MIN_SEND_BYTES_PER_SECOND',
    64 * 1024,
    1024,
    1024 * MiB,
    'Slowest pace at which a client must read a large answer: past the send timeout plus its size at this pace, it is cut, bytes per second',
  ),
  streamResumeSeconds: int(
    'SANDBOX_STREAM_RESUME_SECONDS',
    60,
    1,
    24 * 3600,
    'How long a streamed exec call stays resumable (GET /sessions/{id}/exec/streams/{stream_id}) once it has ended and no client is reading it, seconds',
  ),
  streamReplayBytes: int(
    'SANDBOX_STREAM_REPLAY_BYTES',
    256 * 1024,
    64 * 1024,
    64 * MiB,
    'Output events of one streamed call kept for a client that resumes (the oldest are dropped past it; the result event is always kept), bytes',
  ),
  streamHeartbeatSeconds: int(
    'SANDBOX_STREAM_HEARTBEAT_SECONDS',
    15,
    1,
    3600,
    'How often an open event stream gets a comment line, so proxies do not close it while idle, seconds',
  ),
  streamMax: int('SANDBOX_STREAM_MAX', 256, 1, 100_000, 'Streamed exec calls open or resumable at once, across all sessions; past it a new stream answers 503'),
  httpMaxConnections: int('SANDBOX_HTTP_MAX_CONNECTIONS', 1024, 8, 1_000_000, 'Open client connections at most; further connections are closed at once'),
  isolation: {
    env: 'SANDBOX_ISOLATION',
    schema: Type.Union([Type.Literal('auto'), Type.Literal('bwrap')], {
      default: 'auto',
      description: 'Isolation mode: auto (the full bubblewrap sandbox; refuse to start where it does not work) or bwrap (SANDBOX_ISOLATION)',
    }),
  },
  sandboxUidBase: int('SANDBOX_UID_BASE', 200_000, 1000, 4_000_000_000, 'When the server runs as root: first host uid of the per-session uids'),
  warmPoolSize: int('SANDBOX_WARM_POOL_SIZE', 2, 0, 1000, 'Ready sandboxes kept waiting for POST /sessions, at least (the pool grows with the create rate)'),
  warmPoolMax: int(
    'SANDBOX_WARM_POOL_MAX',
    8,
    0,
    1000,
    'Ready sandboxes kept waiting at most, when the recent create rate calls for more than SANDBOX_WARM_POOL_SIZE (left unset, never below it)',
  ),
  warmPoolParallel: int('SANDBOX_WARM_POOL_PARALLEL', 0, 0, 64, 'Sandboxes the pool prepares at once (0: one per CPU, at most 4); one at a time while calls are running'),
  warmUp: bool(
    'SANDBOX_WARMUP',
    true,
    'Before listening, run one session through the request path (create, calls of each tool, files, delete), so the first calls are as fast as later ones',
  ),
  preloadModules: str('SANDBOX_PRELOAD_MODULES', 'numpy,pandas,matplotlib.pyplot', 'Modules imported before a session is handed out, comma-separated ("-" for none)'),
  pythonTemplate: {
    env: 'SANDBOX_PYTHON_TEMPLATE',
    schema: Type.Union([Type.Literal('auto'), Type.Literal('off')], {
      default: 'auto',
      description:
        'auto: when the server runs as root, fork session interpreters from one template that has the preload modules imported (shared memory, fast start); off: start each interpreter in its own bubblewrap sandbox (SANDBOX_PYTHON_TEMPLATE)',
    }),
  },
  pythonPath: str('SANDBOX_PYTHON', '/usr/bin/python3', 'Python interpreter run inside the sandbox'),
  logLevel: {
    env: 'SANDBOX_LOG_LEVEL',
    schema: Type.Union(
      ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
      {
        default: 'info',
        description: 'Log level (SANDBOX_LOG_LEVEL)',
      },
    ),
  },
} as const;

type SettingKey = keyof typeof SETTINGS;
export type Config = { readonly [K in SettingKey]: Static<(typeof SETTINGS)[K]['schema']> };

const SCHEMA = Type.Object(Object.fromEntries(Object.entries(SETTINGS).map(([k, v]) => [k, v.schema])) as { [K in SettingKey]: (typeof SETTINGS)[K]['schema'] });

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Validates every setting at once; throws ConfigError listing all problems. */
export function loadConfig(env: Record<string, string | undefined>, overrides: Partial<Config> = {}): Config {
  const raw: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, { env: name, schema }] of Object.entries(SETTINGS)) {
    const text = env[name];
    if (text === undefined || text === '') continue;
    const type = (schema as { type?: string }).type;
    if (type === 'integer' && !/^\s*-?\d+\s*$/.test(text)) {
      problems.push(`${name}=${JSON.stringify(text)}: must be an integer`);
      continue;
    }
    if (type === 'boolean') {
      const value = BOOLEAN_WORDS.get(text.trim().toLowerCase());
      if (value === undefined) problems.push(`${name}=${JSON.stringify(text)}: must be true or false`);
      else raw[key] = value;
      continue;
    }
    raw[key] = type === 'integer' ? Number(text) : text.trim();
  }
  Object.assign(raw, overrides);
  const value = Value.Default(SCHEMA, raw) as Record<string, unknown>;
  const reported = new Set<string>();
  for (const error of Value.Errors(SCHEMA, value)) {
    const key = error.instancePath.replace(/^\//, '') as SettingKey;
    if (reported.has(key)) continue; // one problem per setting
    reported.add(key);
    const setting = SETTINGS[key];
    const choices = (setting?.schema as { anyOf?: { const?: unknown }[] } | undefined)?.anyOf?.map((s) => s.const);
    const message = choices ? `must be one of ${choices.join(', ')}` : error.message;
    problems.push(`${setting?.env ?? key}=${JSON.stringify(value[key])}: ${message}`);
  }
  // Checked apart from the schema, whose messages would repeat the value: a token's
  // problems never name the token.
  if (typeof value.apiToken === 'string') problems.push(...parseTokens(value.apiToken).problems);
  if (typeof value.allowedHosts === 'string' && value.allowedHosts.split(',').every((h) => h.trim() === ''))
    problems.push(`SANDBOX_ALLOWED_HOSTS=${JSON.stringify(value.allowedHosts)}: names no host (auto, * or a comma-separated list)`);
  if (problems.length > 0) throw new ConfigError([...new Set(problems)]);
  const config = value as Config & { defaultTimeoutSeconds: number };
  if (config.defaultTimeoutSeconds > config.maxTimeoutSeconds) {
    // Deployments of the reference may set the ceiling alone (below our default of 30):
    // the default follows it. Only an explicit, contradictory pair is an error.
    if (env.SANDBOX_DEFAULT_TIMEOUT_SECONDS !== undefined && env.SANDBOX_DEFAULT_TIMEOUT_SECONDS !== '') {
      throw new ConfigError([`SANDBOX_DEFAULT_TIMEOUT_SECONDS (${config.defaultTimeoutSeconds}) exceeds SANDBOX_RUNNER_WALL_CLOCK_SECONDS (${config.maxTimeoutSeconds})`]);
    }
    config.defaultTimeoutSeconds = config.maxTimeoutSeconds;
  }
  const pool = config as { warmPoolSize: number; warmPoolMax: number };
  if (pool.warmPoolMax < pool.warmPoolSize) {
    // As above: a deployment of the reference sets the pool size alone, which may be above
    // our default maximum; the maximum follows it. An explicit smaller maximum is an error.
    if ((env.SANDBOX_WARM_POOL_MAX ?? '') !== '' || overrides.warmPoolMax !== undefined) {
      throw new ConfigError([`SANDBOX_WARM_POOL_MAX (${pool.warmPoolMax}) is below SANDBOX_WARM_POOL_SIZE (${pool.warmPoolSize})`]);
    }
    pool.warmPoolMax = pool.warmPoolSize;
  }
  return Object.freeze(config);
}

/** SANDBOX_WARM_POOL_PARALLEL, with 0 (the default) resolved against the host's CPUs. */
export function warmPoolParallelism(config: Pick<Config, 'warmPoolParallel'>, cpus: number): number {
  return config.warmPoolParallel > 0 ? config.warmPoolParallel : Math.max(1, Math.min(4, cpus));
}

/** The settings table, for the README and `--help`. */
export function describeSettings(): { env: string; default: unknown; description: string }[] {
  return Object.values(SETTINGS).map((s) => {
    const schema = s.schema as { default?: unknown; description?: string };
    return { env: s.env, default: schema.default, description: schema.description ?? '' };
  });
}

export function preloadList(config: Config): string[] {
  return config.preloadModules === '-'
    ? []
    : config.preloadModules
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
}

/** Shortest token the server accepts: shorter ones are guessable. */
export const MIN_TOKEN_CHARS = 16;
/** RFC 6750 b64token characters. */
const TOKEN_CHARS = /^[A-Za-z0-9\-._~+/]+=*$/;

/**
 * SANDBOX_API_TOKEN: one token or several comma-separated (rotation). Problems are
 * described without the token itself.
 */
export function parseTokens(text: string): { tokens: string[]; problems: string[] } {
  const tokens: string[] = [];
  const problems: string[] = [];
  text
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean)
    .forEach((t, i) => {
      if (t.length < MIN_TOKEN_CHARS) problems.push(`SANDBOX_API_TOKEN: token ${i + 1} is shorter than ${MIN_TOKEN_CHARS} characters`);
      else if (t.length > 4096) problems.push(`SANDBOX_API_TOKEN: token ${i + 1} is longer than 4096 characters`);
      else if (!TOKEN_CHARS.test(t)) problems.push(`SANDBOX_API_TOKEN: token ${i + 1} holds characters a bearer token cannot (RFC 6750: letters, digits, -._~+/ and trailing =)`);
      else tokens.push(t);
    });
  return { tokens, problems };
}
