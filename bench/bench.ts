/**
 * `npm run bench`: the performance figures of issue 4, measured against the real server
 * (dist/src/main.js, full isolation: bubblewrap, seccomp, a host uid per session when
 * run as root) started as a child process on 127.0.0.1 with its own sessions root.
 *
 * Figures (each with n, p50, p90, max, its target and pass/miss):
 *   1. create -> first result: POST /sessions, then exec print(1) on it. Before each
 *      sample the warm pool is back at its target (GET /health), so every sample is a
 *      create served by a full pool.
 *   2. warm exec round trip of print(1) over HTTP/1.1 keep-alive (node:http Agent).
 *   3. throughput: 8 sessions, one client loop each, executing print(1) for ~5 s.
 *   4. first `import numpy, pandas` in a new session (time of that exec).
 *   5. PSS per idle session: sum of Pss (/proc/<pid>/smaps_rollup) over the processes of
 *      the session's pid namespace, averaged over 50 live idle sessions.
 *   6. the floor: the same print(1) round trip to a bare /usr/bin/python3 over a pipe
 *      (no HTTP, no sandbox); our warm exec is reported as a ratio to it.
 * Diagnostics (no target), to show where the time goes: the split of the create path
 * (POST, first exec, a second exec) and the pool refill time; the server's own time per
 * warm exec (Fastify's elapsedTime from its access log) and an HTTP no-op (GET /health);
 * the exec latency under the throughput load; RSS next to PSS; the session driver
 * (sandbox-python/driver.py) driven over its framed pipes with no sandbox and no HTTP;
 * the floor's throughput with 8 bare processes; DELETE latency.
 *
 * The gateway path (issue 11), measured with bench/client.py: a Python client on
 * /usr/bin/python3 holding one http.client keep-alive connection per simulated client (one
 * process each when they run in parallel), as the Otari gateway does; a Node client hides
 * costs a Python gateway pays. The client returns raw timings; the figures are computed here.
 *   7. print(1), the first 150 calls after start: taken right after the warm pool first
 *      fills, before any other figure runs code (the server's JIT has seen only its own
 *      start-up warm-up).
 *   8. print(1) in the steady state (after the Node figures' thousands of calls and a
 *      warm-up of its own); with it, the floor of an HTTP no-op (GET /health).
 *   9. bash `echo hi`; 10. editor `create` (a new small file per call).
 *  11. DELETE /sessions/:id, one at a time, as the gateway awaits it after each chat.
 *  12. a burst of 30 creates in a row, each with its first print(1), no wait for the pool.
 *  13. churn: 8 clients each looping POST /sessions + print(1) + DELETE for a fixed time
 *      (sessions/s, and the latency of one loop split into its three calls).
 *  14. throughput: 8 sessions, one client process each, print(1) in a loop.
 *  15. streaming (bench/stream-latency.ts): the delay from a program's write to the client
 *      receiving its `stdout` event, python and bash.
 * Host floors in the same run, before the server starts: fork+exec of `bash -c 'echo hi'`
 * and a bare `bwrap --ro-bind / / --unshare-all --die-with-parent /bin/true`, both from
 * Python's subprocess.run.
 *
 * `--quick`: smaller counts and shorter loops and budgets (the first-150 and burst-of-30
 * figures keep their counts): about a minute on the 2-core machine under other load, less
 * on an idle one; its figures are indicative only (PSS, for one, splits the template's
 * share over 10 sessions instead of 50).
 *
 * The server is started through dist/bench/server-entry.js (which only imports
 * dist/src/main.js) with logs at the default level going to a file; its sessions root,
 * uid range and port are its own, so it runs next to other servers and tests.
 *
 * `--rootless` runs the server as nobody (setpriv): the same figures for a deployment
 * without root.
 *
 * Output: progress on stderr; on stdout a human-readable table, then one JSON object on
 * the last line (its keys are stable: new figures add keys, none is renamed). Every loop is
 * bounded by a count and a time budget; the whole run stays under 4 minutes. Everything
 * started is cleaned up (sessions deleted, server stopped, temp folder removed), also on an
 * error or Ctrl-C (which still prints what was measured). Not part of `npm test`.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Readable, Writable } from 'node:stream';
import { encodeFrame, FrameDecoder, FrameKind } from '../src/runner/frame-codec.js';
import { measureStreamLatency } from './stream-latency.js';
import { describeTarget, judge, parseFlags, spanRate, stats, type Flags, type Stats, type Target } from './figures.js';

// ---------------------------------------------------------------- settings ---------

/** dist/bench/server-entry.js: imports dist/src/main.js, the real server, unchanged. */
const ENTRY = fileURLToPath(new URL('./server-entry.js', import.meta.url));
const PY = '/usr/bin/python3';
const DRIVER = fileURLToPath(new URL('../../sandbox-python/driver.py', import.meta.url));
/** The gateway-like load driver (bench/client.py), run with the sandbox's Python. */
const CLIENT = fileURLToPath(new URL('../../bench/client.py', import.meta.url));
const PRELOAD = 'numpy,pandas,matplotlib';
const FLAGS: Flags = (() => {
  try {
    return parseFlags(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    process.exit(2);
  }
})();
/** `--rootless`: the server runs as nobody (setpriv), as a deployment without root would. */
const ROOTLESS = FLAGS.rootless;
/** `--quick`: smaller counts, shorter loops and budgets. */
const QUICK = FLAGS.quick;
const NOBODY = 65534;
const WARM_POOL = 4;
const MAX_SESSIONS = 64; // 50 idle sessions for the PSS figure + the pool + margin

/** Sample counts and loop times (ms or s as named), full run / --quick. The first-150 and
 * burst-of-30 figures are defined by their counts and keep them in both. */
const COUNTS = QUICK
  ? { create: 10, warmup: 20, warm: 100, jitWarmup: 500, health: 100, throughputMs: 1000, import: 3, pss: 10, floorThroughputMs: 500 }
  : { create: 30, warmup: 50, warm: 500, jitWarmup: 3000, health: 200, throughputMs: 5000, import: 10, pss: 50, floorThroughputMs: 2000 };
const GW = QUICK
  ? {
      first: 150,
      steadyWarmup: 500,
      steady: 300,
      noop: 100,
      bash: 50,
      editor: 100,
      burst: 30,
      deleteBudgetS: 2,
      churnClients: 8,
      churnS: 3,
      throughputS: 2,
      throughputWarmup: 5,
      forkBash: 30,
      bwrap: 10,
    }
  : {
      first: 150,
      steadyWarmup: 1000,
      steady: 1000,
      noop: 300,
      bash: 300,
      editor: 500,
      burst: 30,
      deleteBudgetS: 15,
      churnClients: 8,
      churnS: 10,
      throughputS: 5,
      throughputWarmup: 20,
      forkBash: 200,
      bwrap: 50,
    };
const N_CREATE = COUNTS.create;
const N_WARMUP = COUNTS.warmup;
const N_WARM = COUNTS.warm;
/** Calls before the warm figure is taken: enough for V8 to optimise the server's exec path. */
const N_JIT_WARMUP = COUNTS.jitWarmup;
const N_HEALTH = COUNTS.health;
const THROUGHPUT_SESSIONS = 8;
const THROUGHPUT_MS = COUNTS.throughputMs;
const N_IMPORT = COUNTS.import;
const N_PSS = COUNTS.pss;
const FLOOR_THROUGHPUT_MS = COUNTS.floorThroughputMs;

/** Time budgets (ms): a phase stops taking samples past its budget and says so. */
const BUDGET = QUICK
  ? { start: 60_000, create: 10_000, import: 5_000, pss: 10_000, gateway: 5_000, total: 110_000 }
  : { start: 60_000, create: 55_000, import: 20_000, pss: 45_000, gateway: 20_000, total: 235_000 };

const TARGETS = {
  create_p50_ms: 10,
  create_p90_ms: 20,
  warm_exec_p50_ms: 0.9,
  throughput_per_s: 2400,
  import_p50_ms: 40,
  pss_mib: 10,
};

/** Targets of the gateway-path figures (issue 11), measured with bench/client.py. */
const GW_TARGETS = {
  gw_first150: { stat: 'p50', op: '<=', limit: 0.6 },
  gw_print1: { stat: 'p50', op: '<=', limit: 0.35 },
  gw_bash: { stat: 'p50', op: '<=', limit: 4 },
  gw_editor: { stat: 'p50', op: '<=', limit: 0.5 },
  gw_delete: { stat: 'p50', op: '<=', limit: 2 },
  gw_burst: { stat: 'p90', op: '<=', limit: 10 },
  gw_churn: { stat: 'value', op: '>=', limit: 150 },
  gw_throughput: { stat: 'value', op: '>=', limit: 4000 },
} satisfies Record<string, Target>;

const PRINT1 = Buffer.from(JSON.stringify({ tool: 'code_execution', input: { code: 'print(1)' } }));
const IMPORT = Buffer.from(JSON.stringify({ tool: 'code_execution', input: { code: 'import numpy, pandas' } }));
/** Leaves a marker file named after the session in its /workspace (found from the host
 * through /proc/<pid>/root, which gives the session's processes and host uid) and says
 * whether the preload modules are already imported. */
const whoami = (id: string) =>
  Buffer.from(
    JSON.stringify({
      tool: 'code_execution',
      input: { code: `import sys\nopen('/workspace/.bench-${id}', 'w').close()\nprint(all(m in sys.modules for m in ('numpy', 'pandas', 'matplotlib')))` },
    }),
  );

const benchStart = performance.now();
const log = (msg: string) => process.stderr.write(`[bench ${((performance.now() - benchStart) / 1000).toFixed(1)}s] ${msg}\n`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** A sleep that does not keep the process alive (for races against an exit). */
const sleepUnref = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
const elapsed = () => performance.now() - benchStart;

// ---------------------------------------------------------------- server -----------

interface Server {
  url: string;
  host: string;
  port: number;
  proc: ChildProcess;
  root: string;
  logFile: string;
  exited: Promise<number | null>;
}

let server: Server | null = null;
const liveSessions = new Set<string>();
/** Helper processes (floors, the driver, the Python client): killed by cleanup(). */
const floorProcs = new Set<ChildProcess>();

async function startServer(): Promise<Server> {
  const root = mkdtempSync(`${os.tmpdir()}/sbx-bench-`);
  // The per-session uids must be able to pass through to the sessions root.
  chmodSync(root, 0o711);
  const logFile = `${root}/server.log`;
  const fd = openSync(logFile, 'a');
  // A uid range of our own (the server sweeps its range at start-up), away from the
  // default (200000) and the test harness (300000..2300000).
  const uidBase = 3_000_000 + Math.floor(Math.random() * 900) * 1000;
  if (ROOTLESS) {
    mkdirSync(`${root}/sessions`, { mode: 0o711 });
    chownSync(`${root}/sessions`, NOBODY, NOBODY);
  }
  const asNobody = ['/usr/bin/setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', process.execPath];
  const [file, ...args] = ROOTLESS ? [...asNobody, ENTRY] : [process.execPath, ENTRY];
  const proc = spawn(file!, args, {
    env: {
      PATH: '/usr/bin:/bin',
      PORT: '0',
      HOST: '127.0.0.1',
      SANDBOX_SESSIONS_ROOT: `${root}/sessions`,
      SANDBOX_UID_BASE: String(uidBase),
      SANDBOX_WARM_POOL_SIZE: String(WARM_POOL),
      SANDBOX_PRELOAD_MODULES: PRELOAD,
      SANDBOX_MAX_SESSIONS: String(MAX_SESSIONS),
      SANDBOX_SHUTDOWN_GRACE_SECONDS: '2',
    },
    // Logs go to a file, as in a deployment: the bench spends no CPU reading them.
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let exitCode: number | null | undefined;
  void exited.then((c) => (exitCode = c));
  // Known to cleanup() from here on, so a failed start leaves nothing behind either.
  const s: Server = { url: '', host: '127.0.0.1', port: 0, proc, root, logFile, exited };
  server = s;
  const deadline = Date.now() + BUDGET.start;
  for (;;) {
    const text = readFileSync(logFile, 'utf8');
    const m = /Server listening at (http:\/\/127\.0\.0\.1:(\d+))/.exec(text);
    if (m) {
      s.url = m[1]!;
      s.port = Number(m[2]);
      return s;
    }
    if (exitCode !== undefined) throw new Error(`server exited with ${exitCode} while starting:\n${tail(text)}`);
    if (Date.now() > deadline) throw new Error(`server did not start within ${BUDGET.start / 1000}s:\n${tail(text)}`);
    await sleep(50);
  }
}

function tail(text: string, lines = 20): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

// ---------------------------------------------------------------- HTTP client ------

interface Reply {
  status: number;
  body: string;
  reused: boolean;
}

class Client {
  readonly agent: http.Agent;

  constructor(
    private readonly s: Server,
    maxSockets: number,
  ) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets, keepAliveMsecs: 30_000 });
  }

  /** No timer per request (it costs the client tens of microseconds per call, which the
   * latency figures would charge to the server): the run's watchdog bounds a hang. */
  request(method: string, path: string, body?: Buffer): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: this.s.host,
          port: this.s.port,
          method,
          path,
          agent: this.agent,
          headers: body ? { 'content-type': 'application/json', 'content-length': body.length } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), reused: req.reusedSocket }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  async json<T = any>(method: string, path: string, body?: Buffer): Promise<{ status: number; body: T }> {
    const r = await this.request(method, path, body);
    let parsed: unknown = r.body;
    try {
      parsed = r.body === '' ? null : JSON.parse(r.body);
    } catch {
      /* keep text */
    }
    return { status: r.status, body: parsed as T };
  }

  async createSession(): Promise<string> {
    const r = await this.request('POST', '/sessions', Buffer.from('{}'));
    if (r.status !== 201) throw new Error(`POST /sessions: ${r.status} ${r.body.slice(0, 300)}`);
    const id = (JSON.parse(r.body) as { session_id: string }).session_id;
    liveSessions.add(id);
    return id;
  }

  async deleteSession(id: string): Promise<void> {
    const t0 = performance.now();
    const r = await this.request('DELETE', `/sessions/${id}`);
    deleteMs.push(performance.now() - t0);
    if (r.status !== 204 && r.status !== 404) throw new Error(`DELETE /sessions/${id}: ${r.status} ${r.body.slice(0, 300)}`);
    liveSessions.delete(id);
  }

  /** Runs one exec and checks its result; returns stdout and whether the socket was reused. */
  async exec(id: string, body: Buffer, expectStdout?: string): Promise<{ stdout: string; reused: boolean }> {
    const r = await this.request('POST', `/sessions/${id}/exec`, body);
    if (r.status !== 200) throw new Error(`exec: ${r.status} ${r.body.slice(0, 300)}`);
    const content = (JSON.parse(r.body) as { result_block?: { content?: { stdout?: string; stderr?: string; return_code?: number } } }).result_block?.content;
    if (content?.return_code !== 0 || (expectStdout !== undefined && content.stdout !== expectStdout)) {
      throw new Error(`exec gave an unexpected result: ${JSON.stringify(content).slice(0, 400)}`);
    }
    return { stdout: content.stdout ?? '', reused: r.reused };
  }

  async pool(): Promise<{ target: number; ready: number; starting: number }> {
    const r = await this.json<{ warm_pool: { target: number; ready: number; starting: number } }>('GET', '/health');
    if (r.status !== 200) throw new Error(`GET /health: ${r.status}`);
    return r.body.warm_pool;
  }

  /** Waits until the warm pool is back at its target with nothing starting; returns the
   * time waited (ms). Polls every 20 ms. */
  async waitPoolFull(timeoutMs = 30_000): Promise<number> {
    const t0 = performance.now();
    for (;;) {
      const p = await this.pool();
      if (p.ready >= p.target && p.starting === 0) return performance.now() - t0;
      if (performance.now() - t0 > timeoutMs) throw new Error(`warm pool not refilled within ${timeoutMs} ms: ${JSON.stringify(p)}`);
      await sleep(20);
    }
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Deletes sessions all at once, each on its own connection. */
async function deleteAll(bulk: Client, ids: string[]): Promise<void> {
  await Promise.all(ids.map((id) => bulk.deleteSession(id)));
}

// ---------------------------------------------------------------- PSS -------------

interface Mem {
  pssKiB: number;
  pssAnonKiB: number;
  pssFileKiB: number;
  rssKiB: number;
  procs: number;
}

interface ProcInfo {
  pid: number;
  ppid: number;
  uid: number;
}

/** Every process: pid, parent and real uid (from /proc/<pid>/status). */
async function processTable(): Promise<ProcInfo[]> {
  const out: ProcInfo[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    const uid = /^Uid:\s+(\d+)/m.exec(status);
    const ppid = /^PPid:\s+(\d+)/m.exec(status);
    if (uid && ppid) out.push({ pid: Number(name), ppid: Number(ppid[1]), uid: Number(uid[1]) });
  }
  return out;
}

/** The processes of each marked session: the server's descendants whose root holds the
 * session's marker give its pid namespace; the processes of that namespace (its init
 * included) are the session's. By namespace, not uid: a rootless server's sessions all
 * have the server's uid. */
async function sessionProcesses(serverPid: number, ids: string[]): Promise<Map<string, { pidns: string; pids: number[] }>> {
  const table = await processTable();
  const children = new Map<number, ProcInfo[]>();
  for (const p of table) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p]);
  const descendants: ProcInfo[] = [];
  const stack = [...(children.get(serverPid) ?? [])];
  for (let guard = 0; stack.length > 0 && guard < 100_000; guard++) {
    const p = stack.pop()!;
    descendants.push(p);
    stack.push(...(children.get(p.pid) ?? []));
  }
  const pidns = async (pid: number) => readlink(`/proc/${pid}/ns/pid`).catch(() => '');
  const serverNs = await pidns(serverPid);
  const nsOf = new Map<string, string>();
  const members = new Map<string, number[]>();
  for (const p of descendants) {
    const ns = await pidns(p.pid);
    if (!ns || ns === serverNs) continue; // the server's side (the outer bwrap, the template)
    members.set(ns, [...(members.get(ns) ?? []), p.pid]);
    if (nsOf.size === ids.length) continue;
    let names: string[];
    try {
      names = await readdir(`/proc/${p.pid}/root/workspace`);
    } catch {
      continue; // gone
    }
    for (const n of names) if (n.startsWith('.bench-')) nsOf.set(n.slice('.bench-'.length), ns);
  }
  const out = new Map<string, { pidns: string; pids: number[] }>();
  const seen = new Map<string, string>();
  for (const id of ids) {
    const ns = nsOf.get(id);
    if (ns === undefined) throw new Error(`no process of session ${id} found under the server`);
    if (seen.has(ns)) throw new Error(`sessions ${seen.get(ns)} and ${id} share pid namespace ${ns}`);
    seen.set(ns, id);
    out.set(id, { pidns: ns, pids: members.get(ns) ?? [] });
  }
  return out;
}

/** The interpreter template: a child of the server running sandbox-python/zygote.py. */
async function templateProcesses(serverPid: number): Promise<number[]> {
  const out: number[] = [];
  for (const p of await processTable()) {
    if (p.ppid !== serverPid) continue;
    const cmd = await readFile(`/proc/${p.pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('zygote.py')) out.push(p.pid);
  }
  return out;
}

async function memOf(pids: number[]): Promise<Mem> {
  const mem: Mem = { pssKiB: 0, pssAnonKiB: 0, pssFileKiB: 0, rssKiB: 0, procs: 0 };
  for (const pid of pids) {
    const text = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
    if (!text) continue;
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
    mem.pssKiB += field('Pss');
    mem.pssAnonKiB += field('Pss_Anon');
    mem.pssFileKiB += field('Pss_File');
    mem.rssKiB += field('Rss');
    mem.procs++;
  }
  return mem;
}

// ---------------------------------------------------------------- the floor --------

const FLOOR_SCRIPT = `
import sys, io, json, contextlib
ns = {"__name__": "__main__"}
rd = sys.stdin.buffer.readline
w = sys.stdout.buffer
while True:
    line = rd()
    if not line:
        break
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(json.loads(line), ns)
    w.write(json.dumps({"stdout": buf.getvalue()}).encode() + b"\\n")
    w.flush()
`;

class Floor {
  private readonly proc: ChildProcess;
  private buf = '';
  private waiter: ((line: string) => void) | null = null;

  constructor() {
    this.proc = spawn(PY, ['-u', '-c', FLOOR_SCRIPT], { stdio: ['pipe', 'pipe', 'inherit'] });
    floorProcs.add(this.proc);
    this.proc.stdout!.setEncoding('utf8');
    this.proc.stdout!.on('data', (d: string) => {
      this.buf += d;
      const nl = this.buf.indexOf('\n');
      if (nl >= 0 && this.waiter) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiter;
        this.waiter = null;
        w(line);
      }
    });
  }

  call(line: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('floor python did not answer in 10 s')), 10_000);
      this.waiter = (l) => {
        clearTimeout(timer);
        resolve(l);
      };
      this.proc.stdin!.write(line);
    });
  }

  async print1(): Promise<void> {
    const out = JSON.parse(await this.call('"print(1)"\n')) as { stdout: string };
    if (out.stdout !== '1\n') throw new Error(`floor: unexpected output ${JSON.stringify(out)}`);
  }

  stop(): void {
    this.proc.stdin!.end();
    this.proc.kill('SIGKILL');
    floorProcs.delete(this.proc);
  }
}

/**
 * Diagnostic: the session driver (sandbox-python/driver.py) run directly, no sandbox and
 * no HTTP, over its framed control channel on fds 3/4, as the server drives it.
 */
class DriverPipe {
  private readonly proc: ChildProcess;
  private readonly decoder = new FrameDecoder(64 << 20);
  private waiter: { id: number; out: string; resolve: (out: string) => void } | null = null;
  private helloSeen: () => void = () => {};
  readonly hello = new Promise<void>((r) => (this.helloSeen = r));
  private nextId = 1;

  constructor() {
    this.proc = spawn(PY, ['-I', '-u', DRIVER], { stdio: ['ignore', 'ignore', 'inherit', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin', SANDBOX_PRELOAD: '' }, cwd: os.tmpdir() });
    floorProcs.add(this.proc);
    (this.proc.stdio[4] as Readable).on('data', (chunk: Buffer) => {
      for (const f of this.decoder.push(chunk)) {
        if (f.kind === FrameKind.Hello) this.helloSeen();
        const w = this.waiter;
        if (!w) continue;
        if (f.kind === FrameKind.Stdout) w.out += f.body.toString('utf8');
        if (f.kind === FrameKind.Done && (JSON.parse(f.body.toString('utf8')) as { id: number }).id === w.id) {
          this.waiter = null;
          w.resolve(w.out);
        }
      }
    });
  }

  print1(): Promise<void> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('driver did not answer in 10 s')), 10_000);
      this.waiter = {
        id,
        out: '',
        resolve: (out) => {
          clearTimeout(timer);
          if (out === '1\n') resolve();
          else reject(new Error(`driver: unexpected output ${JSON.stringify(out)}`));
        },
      };
      (this.proc.stdio[3] as Writable).write(encodeFrame(FrameKind.Exec, { id, code: 'print(1)', max_output_bytes: 1 << 20 }));
    });
  }

  stop(): void {
    this.proc.kill('SIGKILL');
    floorProcs.delete(this.proc);
  }
}

async function benchDriverPipe(): Promise<void> {
  const f: Figure = { label: '   (diag) driver.py over its pipes, no sandbox/HTTP', unit: 'ms', stats: null };
  figures.driver_pipe = f;
  const d = new DriverPipe();
  try {
    await Promise.race([d.hello, sleep(10_000).then(() => Promise.reject(new Error('no hello from the driver in 10 s')))]);
    for (let i = 0; i < N_WARMUP; i++) await d.print1();
    const xs: number[] = [];
    for (let i = 0; i < N_WARM; i++) {
      const t0 = performance.now();
      await d.print1();
      xs.push(performance.now() - t0);
    }
    f.stats = stats(xs);
  } catch (e) {
    f.error = String((e as Error)?.message ?? e);
  } finally {
    d.stop();
  }
}

// ---------------------------------------------------------------- phases -----------

interface Figure {
  label: string;
  unit: string;
  stats: Stats | null;
  value?: number;
  target?: string;
  pass?: boolean | null;
  note?: string;
  error?: string;
  extra?: Record<string, unknown>;
}

const figures: Record<string, Figure> = {};
/** Every DELETE /sessions/:id latency (diagnostic; most are sent in parallel batches). */
const deleteMs: number[] = [];
const ORDER = [
  'create',
  'create_post',
  'create_first_exec',
  'create_second_exec',
  'pool_refill',
  'warm_exec',
  'warm_server_side',
  'warm_cold',
  'http_noop',
  'throughput',
  'throughput_latency',
  'import',
  'pss',
  'pss_rss',
  'floor',
  'ratio',
  'driver_pipe',
  'floor_throughput',
  'throughput_ratio',
  'delete',
  'gw_first150',
  'gw_print1',
  'gw_http_noop',
  'gw_bash',
  'floor_bash',
  'gw_editor',
  'gw_delete',
  'gw_burst',
  'gw_burst_post',
  'floor_bwrap',
  'gw_churn',
  'gw_churn_latency',
  'gw_churn_create',
  'gw_churn_exec',
  'gw_churn_delete',
  'gw_throughput',
  'gw_throughput_latency',
  'stream_latency',
  'stream_latency_bash',
];
/** The figures in report order. */
const ordered = (): [string, Figure][] => Object.entries(figures).sort(([a], [b]) => (ORDER.indexOf(a) >>> 0) - (ORDER.indexOf(b) >>> 0));
const notes: string[] = [];

async function phase(key: string, label: string, unit: string, fn: (f: Figure) => Promise<void>): Promise<void> {
  const f: Figure = { label, unit, stats: null };
  figures[key] = f;
  if (elapsed() > BUDGET.total - 5_000) {
    f.error = 'skipped: the run is out of time';
    return;
  }
  log(`${label} ...`);
  const t0 = performance.now();
  try {
    await fn(f);
    log(`${label}: done in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  } catch (e) {
    f.error = String((e as Error)?.message ?? e).slice(0, 500);
    log(`${label}: FAILED: ${f.error}`);
  }
}

/** Idle sessions kept from the create figure; the PSS figure counts them among its 50. */
const keptIdle: { id: string; origin: string }[] = [];

async function benchCreate(c: Client, f: Figure): Promise<void> {
  const total: number[] = [];
  const post: number[] = [];
  const first: number[] = [];
  const second: number[] = [];
  const refill: number[] = [];
  const deadline = performance.now() + BUDGET.create;
  for (let i = 0; i < N_CREATE && performance.now() < deadline; i++) {
    await c.waitPoolFull();
    const t0 = performance.now();
    const id = await c.createSession();
    const t1 = performance.now();
    await c.exec(id, PRINT1, '1');
    const t2 = performance.now();
    total.push(t2 - t0);
    post.push(t1 - t0);
    first.push(t2 - t1);
    // Diagnostic: a second exec on the same session (how much of the first is "first").
    const t3 = performance.now();
    await c.exec(id, PRINT1, '1');
    second.push(performance.now() - t3);
    // The session stays, idle, and is counted by the PSS figure (deleted there).
    keptIdle.push({ id, origin: 'create figure (ran print(1) twice)' });
    // Time until the pool is back at its target: one sandbox started with its preloads.
    await c.waitPoolFull();
    refill.push(performance.now() - t0);
  }
  if (total.length < N_CREATE) f.note = `time budget (${BUDGET.create / 1000}s) reached after ${total.length} of ${N_CREATE} samples`;
  f.stats = stats(total);
  f.target = `p50 <= ${TARGETS.create_p50_ms}, p90 <= ${TARGETS.create_p90_ms}`;
  f.pass = f.stats ? f.stats.p50 <= TARGETS.create_p50_ms && f.stats.p90 <= TARGETS.create_p90_ms : null;
  figures.create_post = { label: '   of which POST /sessions', unit: 'ms', stats: stats(post) };
  figures.create_first_exec = { label: '   of which first exec print(1)', unit: 'ms', stats: stats(first) };
  figures.create_second_exec = { label: '   (diag) second exec, same session', unit: 'ms', stats: stats(second) };
  figures.pool_refill = {
    label: '   (diag) POST -> pool back at target',
    unit: 'ms',
    stats: stats(refill),
    note: 'one pooled sandbox started with its preloads; GET /health polled every 20 ms',
  };
}

async function benchHealth(c: Client): Promise<void> {
  const f: Figure = { label: '   (diag) HTTP no-op: GET /health', unit: 'ms', stats: null };
  figures.http_noop = f;
  try {
    for (let i = 0; i < 20; i++) await c.request('GET', '/health');
    const xs: number[] = [];
    for (let i = 0; i < N_HEALTH; i++) {
      const t0 = performance.now();
      const r = await c.request('GET', '/health');
      xs.push(performance.now() - t0);
      if (r.status !== 200) throw new Error(`GET /health: ${r.status}`);
    }
    f.stats = stats(xs);
  } catch (e) {
    f.error = String((e as Error)?.message ?? e);
  }
}

/** Fastify's own time (reply.elapsedTime, from its access log) of the last `n` execs of
 * a session: the part of a round trip spent inside the server's request handling. */
async function serverSideMs(logFile: string, id: string, n: number): Promise<number[]> {
  await sleep(500); // let the log reach the file (the server flushes it every 200 ms)
  const xs: number[] = [];
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.includes(id) || !line.includes('"/sessions/:id/exec"')) continue;
    try {
      const rec = JSON.parse(line) as { session_id?: string; path?: string; duration_ms?: number };
      if (rec.session_id === id && rec.path === '/sessions/:id/exec' && typeof rec.duration_ms === 'number') xs.push(rec.duration_ms);
    } catch {
      /* not a JSON line */
    }
  }
  return xs.slice(-n);
}

async function benchWarm(c: Client, logFile: string, f: Figure): Promise<void> {
  await c.waitPoolFull();
  const id = await c.createSession();
  try {
    for (let i = 0; i < N_WARMUP; i++) await c.exec(id, PRINT1, '1');
    await c.waitPoolFull();
    const sample = async (n: number) => {
      const xs: number[] = [];
      let fresh = 0;
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        const r = await c.exec(id, PRINT1, '1');
        xs.push(performance.now() - t0);
        if (!r.reused) fresh++;
      }
      return { xs, fresh };
    };
    // A server that has just started runs its JavaScript unoptimised: shown, but the
    // figure is taken once the JIT has reached its steady state (as in a server that
    // has been up for a while).
    const cold = await sample(N_WARM);
    figures.warm_cold = {
      label: '   (diag) same, first calls after start (JIT cold)',
      unit: 'ms',
      stats: stats(cold.xs),
      note: `the ${N_WARM} calls right after ${N_WARMUP} warm-up calls; the figure above follows ${N_JIT_WARMUP} more`,
    };
    for (let i = 0; i < N_JIT_WARMUP; i++) await c.exec(id, PRINT1, '1');
    const { xs, fresh } = await sample(N_WARM);
    f.stats = stats(xs);
    f.target = `p50 <= ${TARGETS.warm_exec_p50_ms}`;
    f.pass = f.stats!.p50 <= TARGETS.warm_exec_p50_ms;
    f.extra = { new_connections_during_samples: fresh + cold.fresh, warm_up_calls: N_WARMUP + N_WARM + N_JIT_WARMUP };
    const inside = await serverSideMs(logFile, id, N_WARM);
    figures.warm_server_side = {
      label: '   (diag) of which inside the server',
      unit: 'ms',
      stats: stats(inside),
      note: "Fastify's reply.elapsedTime from the server's access log (0.01 ms resolution); the rest is HTTP on the wire, parsing and the client",
    };
    await benchHealth(c);
  } finally {
    await c.deleteSession(id);
  }
}

async function benchThroughput(s: Server, c: Client, f: Figure): Promise<void> {
  await c.waitPoolFull();
  const ids: string[] = [];
  const tc = new Client(s, THROUGHPUT_SESSIONS);
  try {
    await Promise.all(Array.from({ length: THROUGHPUT_SESSIONS }, async () => ids.push(await tc.createSession())));
    // Warm-up: every session and every keep-alive connection used in parallel.
    for (let k = 0; k < 5; k++) await Promise.all(ids.map((id) => tc.exec(id, PRINT1, '1')));
    await c.waitPoolFull();
    const lat: number[] = [];
    let done = 0;
    const t0 = performance.now();
    const stopAt = t0 + THROUGHPUT_MS;
    let last = t0;
    await Promise.all(
      ids.map(async (id) => {
        while (performance.now() < stopAt) {
          const a = performance.now();
          await tc.exec(id, PRINT1, '1');
          last = performance.now();
          lat.push(last - a);
          done++;
        }
      }),
    );
    const secs = (last - t0) / 1000;
    f.value = done / secs;
    f.target = `>= ${TARGETS.throughput_per_s}`;
    f.pass = f.value >= TARGETS.throughput_per_s;
    f.extra = { execs: done, seconds: Number(secs.toFixed(3)), sessions: THROUGHPUT_SESSIONS };
    figures.throughput_latency = { label: '   (diag) exec latency under that load', unit: 'ms', stats: stats(lat) };
  } finally {
    await deleteAll(tc, ids);
    tc.close();
  }
}

async function benchImport(c: Client, bulk: Client, f: Figure): Promise<void> {
  const xs: number[] = [];
  const ids: string[] = [];
  const deadline = performance.now() + BUDGET.import;
  try {
    for (let i = 0; i < N_IMPORT && performance.now() < deadline; i++) {
      await c.waitPoolFull();
      const id = await c.createSession();
      ids.push(id);
      const t0 = performance.now();
      await c.exec(id, IMPORT, '');
      xs.push(performance.now() - t0);
    }
  } finally {
    // Deleted together at the end (a delete takes seconds here, see the DELETE line).
    await deleteAll(bulk, ids);
  }
  if (xs.length < N_IMPORT) f.note = `time budget (${BUDGET.import / 1000}s) reached after ${xs.length} of ${N_IMPORT} samples`;
  f.stats = stats(xs);
  f.target = `p50 <= ${TARGETS.import_p50_ms}`;
  f.pass = f.stats ? f.stats.p50 <= TARGETS.import_p50_ms : null;
}

async function benchPss(c: Client, bulk: Client, serverPid: number, f: Figure): Promise<void> {
  await c.waitPoolFull();
  const sessions: { id: string; origin: string; preloaded?: boolean }[] = keptIdle.splice(0);
  const deadline = performance.now() + BUDGET.pss;
  let createMs = 0;
  try {
    // Up to 50 idle sessions: those kept from the create figure, plus new ones made 4 at
    // a time (the pool serves the first; the others start their sandbox in the request).
    const t0 = performance.now();
    const made: string[] = [];
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (sessions.length < N_PSS && performance.now() < deadline) {
          const slot = { id: '', origin: 'created for this figure' };
          sessions.push(slot);
          try {
            slot.id = await bulk.createSession();
            made.push(slot.id);
          } catch (e) {
            sessions.splice(sessions.indexOf(slot), 1);
            throw e;
          }
        }
      }),
    );
    createMs = performance.now() - t0;
    log(`  ${sessions.length} idle sessions (${made.length} created in ${(createMs / 1000).toFixed(1)}s)`);
    if (sessions.length < N_PSS) f.note = `time budget (${BUDGET.pss / 1000}s) reached with ${sessions.length} of ${N_PSS} sessions`;
    // Each session marks its workspace (one small exec, so every session ran code).
    for (const s of sessions) s.preloaded = (await c.exec(s.id, whoami(s.id))).stdout.trim() === 'True';
    // Idle: the pool has refilled, nothing is starting; let the interpreters settle.
    await c.waitPoolFull(Math.max(5_000, deadline - performance.now()));
    await sleep(1000);
    log('  reading /proc');
    const procs = await sessionProcesses(
      serverPid,
      sessions.map((s) => s.id),
    );
    const per: Mem[] = [];
    for (const s of sessions) per.push(await memOf(procs.get(s.id)!.pids));
    // The interpreter template (root, the server's child) holds the pages all sessions
    // share; its whole PSS is split over the measured sessions (the pool's members
    // share it too, so this overstates each session's part a little).
    const template = await templateProcesses(serverPid);
    const templateMem = await memOf(template);
    for (const m of per) {
      m.pssKiB += templateMem.pssKiB / per.length;
      m.pssAnonKiB += templateMem.pssAnonKiB / per.length;
      m.pssFileKiB += templateMem.pssFileKiB / per.length;
    }
    const mib = (k: number) => k / 1024;
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    f.stats = stats(per.map((m) => mib(m.pssKiB)));
    f.value = f.stats!.mean;
    f.target = `mean <= ${TARGETS.pss_mib}`;
    f.pass = f.value <= TARGETS.pss_mib;
    f.extra = {
      sessions: per.length,
      kept_from_create_figure: sessions.filter((s) => s.origin !== 'created for this figure').length,
      created_here: made.length,
      create_seconds: Number((createMs / 1000).toFixed(2)),
      processes_per_session: mean(per.map((m) => m.procs)),
      pss_anon_mib_mean: Number(mean(per.map((m) => mib(m.pssAnonKiB))).toFixed(2)),
      pss_file_mib_mean: Number(mean(per.map((m) => mib(m.pssFileKiB))).toFixed(2)),
      preloads_imported_in: `${sessions.filter((s) => s.preloaded).length}/${sessions.length} sessions`,
      template_processes: template.length,
      template_pss_mib: Number(mib(templateMem.pssKiB).toFixed(2)),
      template_share_included: template.length > 0,
    };
    figures.pss_rss = { label: '   (diag) RSS per idle session', unit: 'MiB', stats: stats(per.map((m) => mib(m.rssKiB))), note: 'shared pages counted whole in every session' };
  } finally {
    const ids = sessions.map((s) => s.id).filter(Boolean);
    log(`  deleting ${ids.length} sessions`);
    await deleteAll(bulk, ids);
  }
}

async function benchFloor(f: Figure): Promise<void> {
  const fl = new Floor();
  try {
    for (let i = 0; i < N_WARMUP; i++) await fl.print1();
    const xs: number[] = [];
    for (let i = 0; i < N_WARM; i++) {
      const t0 = performance.now();
      await fl.print1();
      xs.push(performance.now() - t0);
    }
    f.stats = stats(xs);
  } finally {
    fl.stop();
  }
  await benchDriverPipe();
  // Diagnostic: 8 bare processes in parallel, the floor of the throughput figure.
  const fls = Array.from({ length: THROUGHPUT_SESSIONS }, () => new Floor());
  try {
    await Promise.all(
      fls.map(async (x) => {
        for (let i = 0; i < 20; i++) await x.print1();
      }),
    );
    let done = 0;
    const t0 = performance.now();
    const stopAt = t0 + FLOOR_THROUGHPUT_MS;
    let last = t0;
    await Promise.all(
      fls.map(async (x) => {
        while (performance.now() < stopAt) {
          await x.print1();
          last = performance.now();
          done++;
        }
      }),
    );
    figures.floor_throughput = { label: '   (diag) floor throughput, 8 bare pythons', unit: 'execs/s', stats: null, value: done / ((last - t0) / 1000) };
  } finally {
    for (const x of fls) x.stop();
  }
}

// ---------------------------------------------------------------- gateway path -----

/** Caps on what the Python client may print (its timings, its error). */
const CLIENT_STDOUT_MAX_BYTES = 64 << 20;
const CLIENT_STDERR_MAX_BYTES = 64 << 10;

/**
 * Runs one job of bench/client.py (see its docstring for the contract) against our server
 * and returns its JSON. The job carries its own deadline; past it and 15 s more the client
 * is killed (its workers die with it).
 */
async function runClient<T>(job: Record<string, unknown>, deadlineS: number): Promise<T> {
  const full = { host: server?.host ?? '127.0.0.1', port: server?.port ?? 0, deadline_s: deadlineS, ...job };
  const proc = spawn(PY, ['-I', CLIENT, JSON.stringify(full)], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin' } });
  floorProcs.add(proc);
  const out: Buffer[] = [];
  let outBytes = 0;
  let err = '';
  let overflow = false;
  proc.stdout!.on('data', (c: Buffer) => {
    outBytes += c.length;
    if (outBytes > CLIENT_STDOUT_MAX_BYTES) {
      overflow = true;
      proc.kill('SIGKILL');
    } else out.push(c);
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (c: string) => {
    if (err.length < CLIENT_STDERR_MAX_BYTES) err += c.slice(0, CLIENT_STDERR_MAX_BYTES - err.length);
  });
  const timer = setTimeout(() => proc.kill('SIGKILL'), deadlineS * 1000 + 15_000);
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      proc.once('error', reject);
      proc.once('close', (c, sig) => resolve([c, sig]));
    });
    if (overflow) throw new Error(`bench/client.py printed more than ${CLIENT_STDOUT_MAX_BYTES} bytes`);
    if (code !== 0) throw new Error(`bench/client.py ${String(job.op)} exited ${code ?? signal}: ${tail(err, 5)}`);
    return JSON.parse(Buffer.concat(out).toString('utf8')) as T;
  } finally {
    clearTimeout(timer);
    floorProcs.delete(proc);
  }
}

interface ExecJobResult {
  ms: number[];
  warmup_ms?: number[];
  new_connections: number;
}

const PY_PRINT1 = { tool: 'code_execution', input: { code: 'print(1)' }, expect_stdout: '1' };

function setTarget(key: keyof typeof GW_TARGETS, f: Figure): void {
  const t: Target = GW_TARGETS[key];
  f.target = describeTarget(t);
  f.pass = judge(t, f);
}

/** Sequential calls of one tool over one keep-alive connection. */
async function gwCalls(f: Figure, job: Record<string, unknown>, n: number): Promise<ExecJobResult> {
  const r = await runClient<ExecJobResult>({ n, ...job }, BUDGET.gateway / 1000);
  f.stats = stats(r.ms);
  if (r.ms.length < n) f.note = `time budget (${BUDGET.gateway / 1000}s) reached after ${r.ms.length} of ${n} samples`;
  f.extra = { ...(r.warmup_ms ? { warm_up_calls: r.warmup_ms.length } : {}), new_connections: r.new_connections };
  return r;
}

/** Right after start, before anything else has run code on the server. */
async function benchGwFirst(f: Figure): Promise<void> {
  await gwCalls(f, { op: 'exec', ...PY_PRINT1, warmup: 0 }, GW.first);
  f.note = 'one new session on a server that has served nothing but its start-up warm-up (SANDBOX_WARMUP) and GET /health; its first call included';
  setTarget('gw_first150', f);
}

async function benchGwSteady(f: Figure): Promise<void> {
  await gwCalls(f, { op: 'exec', ...PY_PRINT1, warmup: GW.steadyWarmup }, GW.steady);
  setTarget('gw_print1', f);
  const noop: Figure = { label: '   (floor) HTTP no-op: GET /health', unit: 'ms', stats: null };
  figures.gw_http_noop = noop;
  try {
    await gwCalls(noop, { op: 'noop', warmup: 50 }, GW.noop);
  } catch (e) {
    noop.error = String((e as Error)?.message ?? e).slice(0, 500);
  }
}

async function benchGwBash(f: Figure): Promise<void> {
  await gwCalls(f, { op: 'exec', tool: 'bash_code_execution', input: { command: 'echo hi' }, expect_stdout: 'hi\n', warmup: 10 }, GW.bash);
  setTarget('gw_bash', f);
}

async function benchGwEditor(f: Figure): Promise<void> {
  await gwCalls(f, { op: 'exec', tool: 'text_editor_code_execution', input: { command: 'create', file_text: 'hello\n' }, vary_path: true, warmup: 20 }, GW.editor);
  f.note = 'each call creates a new small file (bench-<i>.txt) in the same session';
  setTarget('gw_editor', f);
}

/** A burst of creates, each with its first print(1), no wait for the pool; then the
 * sessions deleted one at a time (the DELETE figure). */
async function benchGwBurst(f: Figure): Promise<void> {
  const r = await runClient<{ create_ms: number[]; first_ms: number[]; delete_ms: number[] }>(
    { op: 'burst', n: GW.burst, delete_budget_s: GW.deleteBudgetS, creates_budget_s: BUDGET.gateway / 1000 },
    BUDGET.gateway / 1000 + GW.deleteBudgetS + 60,
  );
  f.stats = stats(r.create_ms.map((c, i) => c + r.first_ms[i]!));
  if (r.create_ms.length < GW.burst) f.note = `time budget (${BUDGET.gateway / 1000}s) reached after ${r.create_ms.length} of ${GW.burst} creates`;
  setTarget('gw_burst', f);
  figures.gw_burst_post = { label: '   of which POST /sessions', unit: 'ms', stats: stats(r.create_ms) };
  const d: Figure = {
    label: '11. DELETE /sessions/:id, one at a time',
    unit: 'ms',
    stats: stats(r.delete_ms),
    note: `the burst's sessions (each ran print(1)), deleted in sequence for up to ${GW.deleteBudgetS}s; the rest untimed`,
  };
  figures.gw_delete = d;
  setTarget('gw_delete', d);
  if (r.delete_ms.length === 0) d.error = 'no DELETE completed';
}

interface ChurnWorker {
  start_ms: number;
  iters: [number, number, number, number][];
  new_connections: number;
}

async function benchGwChurn(f: Figure): Promise<void> {
  const r = await runClient<{ workers: ChurnWorker[] }>({ op: 'churn', clients: GW.churnClients, seconds: GW.churnS }, GW.churnS + 60);
  const rate = spanRate(r.workers.map((w) => ({ startMs: w.start_ms, count: w.iters.length, lastMs: w.iters.at(-1)?.[3] ?? w.start_ms })));
  const iters = r.workers.flatMap((w) => w.iters);
  f.value = rate?.perSecond ?? 0;
  f.extra = { clients: GW.churnClients, sessions: rate?.count ?? 0, seconds: Number((rate?.seconds ?? 0).toFixed(3)), loop_seconds: GW.churnS };
  f.note = `each client loops POST /sessions, print(1), DELETE for ${GW.churnS}s and finishes the loop it is in`;
  setTarget('gw_churn', f);
  figures.gw_churn_latency = { label: '   (diag) one loop: create + print(1) + DELETE', unit: 'ms', stats: stats(iters.map(([c, e, d]) => c + e + d)) };
  figures.gw_churn_create = { label: '   (diag) of which POST /sessions', unit: 'ms', stats: stats(iters.map((i) => i[0])) };
  figures.gw_churn_exec = { label: '   (diag) of which first print(1)', unit: 'ms', stats: stats(iters.map((i) => i[1])) };
  figures.gw_churn_delete = { label: '   (diag) of which DELETE', unit: 'ms', stats: stats(iters.map((i) => i[2])) };
}

interface ThroughputWorker {
  start_ms: number;
  lat_ms: number[];
  last_ms: number;
  new_connections: number;
}

async function benchGwThroughput(f: Figure): Promise<void> {
  const r = await runClient<{ workers: ThroughputWorker[] }>(
    { op: 'throughput', clients: THROUGHPUT_SESSIONS, seconds: GW.throughputS, warmup: GW.throughputWarmup },
    GW.throughputS + 60,
  );
  const rate = spanRate(r.workers.map((w) => ({ startMs: w.start_ms, count: w.lat_ms.length, lastMs: w.last_ms })));
  f.value = rate?.perSecond ?? 0;
  f.extra = { execs: rate?.count ?? 0, seconds: Number((rate?.seconds ?? 0).toFixed(3)), sessions: THROUGHPUT_SESSIONS, client_processes: r.workers.length };
  setTarget('gw_throughput', f);
  figures.gw_throughput_latency = { label: '   (diag) exec latency under that load', unit: 'ms', stats: stats(r.workers.flatMap((w) => w.lat_ms)) };
}

/** Host floors, no server running: fork+exec of bash, a bare bubblewrap start. */
/** Figure 15 (bench/stream-latency.ts): print -> stdout event, python, and bash next to it. */
async function benchStreamLatency(s: Server, c: Client, f: Figure): Promise<void> {
  // About 2 x (10 + n) x 25 ms: skipped when the run has no room left for it.
  if (elapsed() > BUDGET.total - 20_000) {
    f.note = 'skipped: the run is short of time';
    return;
  }
  const id = (await c.json<{ session_id: string }>('POST', '/sessions')).body.session_id;
  try {
    await measureStreamLatency(s.url, id, 10);
    const r = await measureStreamLatency(s.url, id, QUICK ? 50 : 200);
    f.stats = stats(r.python);
    figures.stream_latency_bash = { label: '    streaming: bash echo -> client stdout event', unit: 'ms', stats: stats(r.bash) };
  } finally {
    await c.json('DELETE', `/sessions/${id}`);
  }
}

async function benchHostFloors(): Promise<void> {
  const bash: Figure = { label: "   (floor) host fork+exec: bash -c 'echo hi'", unit: 'ms', stats: null };
  const bwrap: Figure = { label: '   (floor) bare bwrap --unshare-all /bin/true', unit: 'ms', stats: null };
  figures.floor_bash = bash;
  figures.floor_bwrap = bwrap;
  try {
    const r = await runClient<{ bash_ms: number[]; bwrap_ms: number[] }>({ op: 'floors', n_bash: GW.forkBash, n_bwrap: GW.bwrap, warmup: 5 }, 30);
    bash.stats = stats(r.bash_ms);
    bash.note = 'subprocess.run from /usr/bin/python3, stdout captured';
    bwrap.stats = stats(r.bwrap_ms);
    bwrap.note = "bwrap --ro-bind / / --unshare-all --die-with-parent /bin/true, from Python's subprocess.run";
  } catch (e) {
    bash.error = bwrap.error = String((e as Error)?.message ?? e).slice(0, 500);
  }
}

// ---------------------------------------------------------------- clean-up ---------

let cleaning: Promise<void> | null = null;

function cleanup(): Promise<void> {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    for (const p of floorProcs) p.kill('SIGKILL');
    floorProcs.clear();
    const s = server;
    if (!s) return;
    if (liveSessions.size > 0 && s.proc.exitCode === null) {
      const c = new Client(s, 64);
      await Promise.all([...liveSessions].map((id) => c.deleteSession(id).catch(() => {})));
      c.close();
    }
    if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGTERM');
    const code = await Promise.race([s.exited, sleepUnref(30_000).then(() => 'timeout' as const)]);
    if (code === 'timeout') {
      log('server did not stop within 30 s of SIGTERM; SIGKILL');
      s.proc.kill('SIGKILL');
      await Promise.race([s.exited, sleepUnref(5_000)]);
    }
    if (Object.values(figures).some((f) => f.error) || code !== 0) {
      log(`server exit status ${String(code)}; last lines of its log:\n${tail(readFileSync(s.logFile, 'utf8'), 30)}`);
    }
    // What a killed server could leave: tmpfs mounts under our root.
    const mounts = readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[1] ?? '')
      .filter((m) => m.startsWith(`${s.root}/`));
    for (const m of mounts.reverse()) {
      try {
        execFileSync('/usr/bin/umount', ['-l', m]);
      } catch {
        /* already gone */
      }
    }
    rmSync(s.root, { recursive: true, force: true });
    if (existsSync(s.root)) log(`could not remove ${s.root}`);
    server = null;
  })();
  return cleaning;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: cleaning up`);
    notes.push(`interrupted by ${sig}; figures not shown were not measured`);
    void cleanup().finally(() => {
      report();
      process.exit(130);
    });
  });
}

// ---------------------------------------------------------------- report ----------

const fmt = (x: number | undefined, unit: string) => {
  if (x === undefined || !Number.isFinite(x)) return '-';
  if (unit === 'execs/s' || unit === 'sess/s') return x.toFixed(unit === 'sess/s' && x < 100 ? 1 : 0);
  if (unit === 'x') return x.toFixed(1);
  return x < 10 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(1);
};

function table(): string {
  const rows: string[][] = [['figure', 'unit', 'n', 'p50', 'p90', 'max', 'mean/value', 'target', 'result']];
  let section = false;
  for (const [k, f] of ordered()) {
    if (k.startsWith('gw_') && !section) {
      section = true;
      rows.push(['gateway path: Python http.client keep-alive clients (bench/client.py)', '', '', '', '', '', '', '', '']);
    }
    const s = f.stats;
    const result = f.error ? 'ERROR' : f.pass === undefined ? '' : f.pass === null ? '-' : f.pass ? 'pass' : 'MISS';
    rows.push([
      f.label,
      f.unit,
      s ? String(s.n) : '',
      fmt(s?.p50, f.unit),
      fmt(s?.p90, f.unit),
      fmt(s?.max, f.unit),
      f.value !== undefined ? fmt(f.value, f.unit) : s ? fmt(s.mean, f.unit) : '',
      f.target ?? '',
      result,
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === 0 || i >= 7 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  const out = [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const r of rows.slice(1)) out.push(line(r));
  for (const [k, f] of ordered()) {
    if (f.error) out.push(`! ${k}: ${f.error}`);
    if (f.note) out.push(`* ${k}: ${f.note}`);
    if (f.extra) out.push(`  ${k}: ${JSON.stringify(f.extra)}`);
  }
  return out.join('\n');
}

function round(v: unknown): unknown {
  if (typeof v === 'number') return Number.isInteger(v) ? v : Number(v.toPrecision(4));
  if (Array.isArray(v)) return v.map(round);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, round(x)]));
  return v;
}

// ---------------------------------------------------------------- main ------------

const machine = (() => {
  const cpus = os.cpus();
  let python = 'unknown';
  try {
    python = execFileSync(PY, ['-c', 'import sys; print(sys.version.split()[0])'], { encoding: 'utf8' }).trim();
  } catch {
    /* reported as unknown */
  }
  return {
    cores: cpus.length,
    cpu_model: cpus[0]?.model ?? 'unknown',
    node: process.version,
    python,
    kernel: os.release(),
    memory_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    run_as_root: process.getuid?.() === 0,
    loadavg_start: os.loadavg().map((x) => Number(x.toFixed(2))),
  };
})();
const serverInfo = { isolation: null as unknown, startupMs: 0, poolFillMs: 0 };
let reported = false;

/** Prints the table, then the JSON object as the last line of stdout. */
function report(): void {
  if (reported) return;
  reported = true;
  const warm = figures.warm_exec?.stats;
  const floor = figures.floor?.stats;
  if (warm && floor) figures.ratio = { label: '   warm exec p50 / floor p50', unit: 'x', stats: null, value: warm.p50 / floor.p50 };
  const tp = figures.throughput?.value;
  const ftp = figures.floor_throughput?.value;
  if (tp !== undefined && ftp !== undefined) figures.throughput_ratio = { label: '   (diag) floor throughput / ours', unit: 'x', stats: null, value: ftp / tp };
  if (deleteMs.length > 0) {
    figures.delete = {
      label: '(diag) DELETE /sessions/:id',
      unit: 'ms',
      stats: stats(deleteMs),
      note: 'most sent in parallel batches (a batch takes about as long as one delete)',
    };
  }
  const duration = elapsed() / 1000;
  const iso = serverInfo.isolation as { mode?: string; uid_per_session?: boolean; memory_limit?: string } | null;
  const out = {
    machine: { ...machine, loadavg_end: os.loadavg().map((x) => Number(x.toFixed(2))) },
    server: {
      isolation: serverInfo.isolation,
      warm_pool_size: WARM_POOL,
      preload_modules: PRELOAD,
      max_sessions: MAX_SESSIONS,
      log_level: 'info (default), to a file',
      startup_seconds: Number((serverInfo.startupMs / 1000).toFixed(2)),
      initial_pool_fill_seconds: Number((serverInfo.poolFillMs / 1000).toFixed(2)),
    },
    mode: QUICK ? 'quick' : 'full',
    targets: { ...TARGETS, gateway: GW_TARGETS },
    figures: Object.fromEntries(
      ordered().map(([k, f]) => [
        k,
        {
          unit: f.unit,
          ...(f.stats ? { n: f.stats.n, p50: f.stats.p50, p90: f.stats.p90, max: f.stats.max, mean: f.stats.mean } : {}),
          ...(f.value !== undefined ? { value: f.value } : {}),
          ...(f.target ? { target: f.target } : {}),
          ...(f.pass !== undefined ? { pass: f.pass } : {}),
          ...(f.note ? { note: f.note } : {}),
          ...(f.error ? { error: f.error } : {}),
          ...(f.extra ? { extra: f.extra } : {}),
        },
      ]),
    ),
    notes,
    duration_seconds: Number(duration.toFixed(1)),
  };
  const head = [
    `otari-sandbox-container benchmark (${new Date().toISOString()})${QUICK ? ', --quick (small counts: indicative only)' : ''}`,
    `machine: ${machine.cores} cores (${machine.cpu_model}), ${machine.memory_gib} GiB, node ${machine.node}, python ${machine.python}, kernel ${machine.kernel}, root=${machine.run_as_root}`,
    `load average: ${machine.loadavg_start.join(' ')} at start, ${out.machine.loadavg_end.join(' ')} at end`,
    `server: isolation ${iso?.mode ?? '?'}, uid per session ${String(iso?.uid_per_session ?? '?')}, memory: ${iso?.memory_limit ?? '?'}`,
    `        warm pool ${WARM_POOL}, preload ${PRELOAD}, log level info (to a file); listening after ${(serverInfo.startupMs / 1000).toFixed(1)}s, pool full ${(serverInfo.poolFillMs / 1000).toFixed(1)}s later`,
    '',
  ];
  process.stdout.write(`${head.join('\n')}${table()}\n${notes.map((n) => `note: ${n}\n`).join('')}finished in ${duration.toFixed(1)}s\n`);
  process.stdout.write(`${JSON.stringify(round(out))}\n`);
}

async function main(): Promise<number> {
  if (ROOTLESS) notes.push('--rootless: the server ran as nobody (no host uid per session, no disk quota, no memory cgroups)');
  log(`machine: ${machine.cores} cores, node ${machine.node}, load ${machine.loadavg_start.join(' ')}`);
  let exitCode = 0;
  // The floor runs first, with no server of ours running, so nothing competes with it.
  await phase('floor', '6. floor: bare python3 over a pipe', 'ms', (f) => benchFloor(f));
  await benchHostFloors();
  try {
    const t0 = performance.now();
    const srv = await startServer();
    serverInfo.startupMs = performance.now() - t0;
    const c = new Client(srv, 1);
    const bulk = new Client(srv, 64);
    try {
      serverInfo.isolation = (await c.json<{ isolation: unknown }>('GET', '/health')).body.isolation;
      serverInfo.poolFillMs = await c.waitPoolFull(60_000);
      log(`server at ${srv.url} (listening after ${(serverInfo.startupMs / 1000).toFixed(1)}s, pool of ${WARM_POOL} full ${(serverInfo.poolFillMs / 1000).toFixed(1)}s later)`);
      // First, before any other figure runs code on the server (its JIT is cold).
      await phase('gw_first150', `7. print(1), first ${GW.first} calls after start`, 'ms', (f) => benchGwFirst(f));
      await phase('create', '1. create -> first result', 'ms', (f) => benchCreate(c, f));
      await phase('warm_exec', '2. warm exec print(1), HTTP keep-alive', 'ms', (f) => benchWarm(c, srv.logFile, f));
      await phase('throughput', '3. throughput, 8 sessions in parallel', 'execs/s', (f) => benchThroughput(srv, c, f));
      await phase('import', '4. first import numpy, pandas', 'ms', (f) => benchImport(c, bulk, f));
      await phase('pss', '5. PSS per idle session', 'MiB', (f) => benchPss(c, bulk, srv.proc.pid!, f));
      // The gateway path, each phase from a full pool.
      const gw = (key: string, label: string, unit: string, fn: (f: Figure) => Promise<void>) =>
        phase(key, label, unit, async (f) => {
          await c.waitPoolFull();
          await fn(f);
        });
      await gw('gw_print1', '8. print(1), steady state', 'ms', benchGwSteady);
      await gw('gw_bash', "9. bash 'echo hi'", 'ms', benchGwBash);
      await gw('gw_editor', '10. editor create', 'ms', benchGwEditor);
      await gw('gw_burst', `12. burst of ${GW.burst} creates: create + first result`, 'ms', benchGwBurst);
      await gw('gw_churn', `13. churn, ${GW.churnClients} clients: sessions/s`, 'sess/s', benchGwChurn);
      await gw('gw_throughput', '14. throughput, 8 sessions in parallel', 'execs/s', benchGwThroughput);
      await phase('stream_latency', '15. streaming: python print -> client stdout event', 'ms', (f) => benchStreamLatency(srv, c, f));
    } finally {
      c.close();
      bulk.close();
    }
  } catch (e) {
    notes.push(`run aborted: ${String((e as Error)?.message ?? e).slice(0, 2000)}`);
    exitCode = 1;
  } finally {
    log('stopping the server');
    await cleanup();
  }
  for (const f of Object.values(figures)) if (f.error) exitCode = 1;
  report();
  return exitCode;
}

// Last resort: past the total budget, clean up and report what was measured.
const watchdog = setTimeout(() => {
  log(`the run passed ${BUDGET.total / 1000}s: aborting`);
  notes.push(`aborted by the watchdog at ${BUDGET.total / 1000}s; figures not shown were not measured`);
  void cleanup().finally(() => {
    report();
    process.exit(1);
  });
}, BUDGET.total);
watchdog.unref();

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    log(`bench failed: ${String((e as Error)?.stack ?? e)}`);
    void cleanup().finally(() => process.exit(1));
  },
);
