/**
 * Test harness: starts the real server (dist/src/main.js) as a child process on an
 * ephemeral port with its own sessions root and its own range of sandbox uids, and
 * gives small HTTP helpers. Every test file starts its own server; stop() is
 * registered before the work (t.after / after) so nothing is left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { SandboxApiError, SandboxClient, type CreateSessionOptions, type ToolName } from '../../src/client/index.js';

export const MAIN = fileURLToPath(new URL('../../src/main.js', import.meta.url));

export interface TestServer {
  url: string;
  proc: ChildProcess;
  root: string;
  sessionsRoot: string;
  uidBase: number;
  logs(): string;
  /** SIGTERM (or the given signal), wait for exit, remove the root. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface StartOptions {
  /** Capabilities the server runs without (dropped from its bounding set by setpriv), e.g. ['sys_admin']. */
  dropCapabilities?: string[];
  /** Run the server as this unprivileged user (setpriv), owning its sessions root. */
  runAs?: { uid: number; gid: number };
  /** Leave SANDBOX_UID_BASE unset (the server's default); `uidBase` is then NaN. */
  defaultUidBase?: boolean;
  /** Start the server in a mount namespace of its own (unshare), so host mounts a test
   * adds there (nsenter) are seen by this server only. */
  privateMounts?: boolean;
}

/** Starts a server (startOnce); a random uid range another live test server holds already
 * (parallel test files draw theirs at random) is drawn again, unless the test chose it. */
export async function startServer(env: Record<string, string> = {}, opts: StartOptions = {}): Promise<TestServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(env, opts);
    } catch (e) {
      const clash = /overlap .* choose another SANDBOX_UID_BASE/.test(String((e as Error)?.message));
      if (!clash || env.SANDBOX_UID_BASE !== undefined || opts.defaultUidBase || attempt >= 5) throw e;
    }
  }
}

async function startOnce(env: Record<string, string>, opts: StartOptions): Promise<TestServer> {
  const root = await mkdtemp(`${tmpdir()}/sbx-test-`);
  // Sandboxes run as other uids: the folders above the sessions root must be searchable.
  await chmod(root, 0o711);
  const sessionsRoot = `${root}/sessions`;
  // A distinct uid range per server, so parallel test files never sweep each other.
  const uidBase = opts.defaultUidBase ? NaN : 300_000 + Math.floor(Math.random() * 2_000) * 1_000;
  const drop = opts.dropCapabilities ?? [];
  const setpriv: string[] = [];
  if (drop.length > 0) setpriv.push('--bounding-set', drop.map((c) => `-${c}`).join(','));
  if (opts.runAs) {
    await mkdir(sessionsRoot, { mode: 0o711 });
    await chown(sessionsRoot, opts.runAs.uid, opts.runAs.gid);
    setpriv.push(`--reuid=${opts.runAs.uid}`, `--regid=${opts.runAs.gid}`, '--clear-groups');
  }
  const node = setpriv.length > 0 ? ['/usr/bin/setpriv', ...setpriv, '--', process.execPath, MAIN] : [process.execPath, MAIN];
  const [file, ...args] = opts.privateMounts ? ['/usr/bin/unshare', '--mount', '--propagation', 'private', '--', ...node] : node;
  const proc = spawn(file!, args, {
    env: {
      PATH: '/usr/bin:/bin',
      PORT: '0',
      HOST: '127.0.0.1',
      SANDBOX_SESSIONS_ROOT: sessionsRoot,
      ...(opts.defaultUidBase ? {} : { SANDBOX_UID_BASE: String(uidBase) }),
      SANDBOX_WARM_POOL_SIZE: '1',
      // A pool of a fixed size unless a test sets its maximum: tests that count boxes,
      // descriptors or processes compare with the size they asked for.
      SANDBOX_WARM_POOL_MAX: env.SANDBOX_WARM_POOL_SIZE ?? '1',
      SANDBOX_PRELOAD_MODULES: '-',
      SANDBOX_SHUTDOWN_GRACE_SECONDS: '2',
      SANDBOX_MAX_SESSIONS: '32',
      // What a test server states as its need of the host's pids (32 x 96): the servers of
      // a test run share the host's budget by need (host-tasks.ts serverBudget), and a
      // server's part is half of what the older ones leave once that is less than its
      // need; with this, five test servers at once each keep their limit on a host with
      // kernel.pid_max 32,768 (the defaults' 1,024 made the third one's part a fraction).
      SANDBOX_SESSION_PIDS_MAX: '96',
      // Memory of all of a test server's sessions: set, not the server's part of the
      // host's memory (which shrinks for each server started while others run).
      SANDBOX_SESSIONS_MEMORY_MB: '6144',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  // A test process that ends without stopping its server (a timeout, a crash) must not
  // leave it running: SIGTERM makes it clean up after itself.
  const onExit = () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
  };
  process.once('exit', onExit);
  void exited.then(() => process.off('exit', onExit));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}`)), 120_000);
    const onData = () => {
      const m = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        proc.stdout!.off('data', onData);
        resolve(m[1]!);
      }
    };
    proc.stdout!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${out}`));
    });
  });
  let stopped: Promise<number | null> | null = null;
  return {
    url,
    proc,
    root,
    sessionsRoot,
    uidBase,
    logs: () => out,
    stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (!stopped) {
        stopped = (async () => {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
          const code = await exited;
          await rm(root, { recursive: true, force: true }).catch(() => {});
          reportFallbacks(out);
          return code;
        })();
      }
      return stopped;
    },
  };
}

/** Writes to stderr the server's log lines about a session that fell back from the
 * template to bubblewrap (a spawn that failed, with its reason): a test that expects the
 * template then fails, and its output should say why. */
function reportFallbacks(log: string): void {
  const lines = log.split('\n').filter((l) => /could not start an interpreter|template exited|template could not|sandbox init is not known|spawner did not answer/.test(l));
  if (lines.length > 0) process.stderr.write(`server log, template fallbacks:\n${lines.join('\n')}\n`);
}

export interface JsonResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

/** A raw request: the status, headers and body as the server sent them (JSON parsed when it
 * is JSON; `text` always). `headers` are sent as given (a bearer token, say). */
export async function api<T = any>(server: { url: string }, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<JsonResponse<T>> {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text === '' ? null : JSON.parse(text);
  } catch {
    /* not JSON: keep the text */
  }
  return { status: res.status, headers: res.headers, body: parsed as T, text };
}

/** The typed client (src/client) for a server: what the integration tests call the API with,
 * where they do not test the HTTP layer itself (raw statuses, malformed bodies: `api`). */
export function client(server: { url: string }, token?: string): SandboxClient {
  return new SandboxClient({ baseUrl: server.url, token });
}

export async function createSession(server: { url: string }, body: CreateSessionOptions = {}): Promise<string> {
  return (await client(server).createSession(body)).session_id;
}

export interface ExecResult {
  status: number;
  stdout: string;
  stderr: string;
  return_code: number;
  limit_exceeded: string | null;
  interpreter_restarted: boolean;
  body: any;
}

export async function exec(server: { url: string }, sessionId: string, tool: string, input: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<ExecResult> {
  let status = 200;
  let body: any;
  try {
    const { timeout_seconds: timeoutSeconds, tool_use_id: toolUseId, ...rest } = extra as { timeout_seconds?: number; tool_use_id?: string };
    body =
      Object.keys(rest).length === 0
        ? await client(server).exec(sessionId, tool as ToolName, input, { timeoutSeconds, toolUseId })
        : // Fields the client does not name (tests of the server's own checks) go as they are.
          (await api(server, 'POST', `/sessions/${sessionId}/exec`, { tool, input, ...extra })).body;
  } catch (e) {
    if (!(e instanceof SandboxApiError)) throw e;
    status = e.status;
    body = { detail: e.detail, code: e.code };
  }
  const content = body?.result_block?.content ?? {};
  return {
    status,
    stdout: content.stdout,
    stderr: content.stderr,
    return_code: content.return_code,
    limit_exceeded: body?.limit_exceeded ?? null,
    interpreter_restarted: body?.interpreter_restarted ?? false,
    body,
  };
}

export const py = (server: { url: string }, id: string, code: string, extra: Record<string, unknown> = {}) => exec(server, id, 'code_execution', { code }, extra);
export const sh = (server: { url: string }, id: string, command: string, extra: Record<string, unknown> = {}) => exec(server, id, 'bash_code_execution', { command }, extra);

/** Multipart upload of one file part (and an optional `path` field). */
export async function upload(server: { url: string }, sessionId: string, content: Uint8Array | string, opts: { path?: string; filename?: string } = {}) {
  const form = new FormData();
  if (opts.path !== undefined) form.append('path', opts.path);
  const bytes = typeof content === 'string' ? new TextEncoder().encode(content) : content;
  form.append('file', new Blob([new Uint8Array(bytes)]), opts.filename ?? 'upload.bin');
  const res = await fetch(`${server.url}/sessions/${sessionId}/files`, { method: 'POST', body: form });
  const text = await res.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON: keep the text */
  }
  return { status: res.status, body };
}

/** Host pids whose command line contains `marker` (for leftover-process checks). */
export async function pidsWithMarker(marker: string): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises');
  const pids: number[] = [];
  for (const n of await readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const cmd = await readFile(`/proc/${n}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(marker)) pids.push(Number(n));
  }
  return pids;
}

/**
 * The bound on a hang, never a speed check (the project's rule: no timing thresholds in
 * tests; speed is measured by `npm run bench`). Each wait it bounds normally takes well
 * under a second, also on a loaded machine: 60 s only turns "never answers" into a failure
 * that names what hung, instead of the runner's timeout.
 */
export const HANG_BACKSTOP_MS = 60_000;

/** `p`, or a failure naming `what` when it has not settled by the hang backstop. */
export async function notHung<T>(p: Promise<T>, what: string, backstopMs = HANG_BACKSTOP_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer after ${backstopMs} ms (hung)`)), backstopMs);
  });
  try {
    return await Promise.race([p, hung]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls until check() is true or the time is up; returns the last value. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs = 5000, stepMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
