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
 *      the session's host uid, averaged over 50 live idle sessions.
 *   6. the floor: the same print(1) round trip to a bare /usr/bin/python3 over a pipe
 *      (no HTTP, no sandbox); our warm exec is reported as a ratio to it.
 * Diagnostics (no target): the split of the create path, the pool refill time, an HTTP
 * no-op (GET /health) round trip, and the floor's throughput with 8 bare processes.
 *
 * Output: progress on stderr; on stdout a human-readable table, then one JSON object on
 * the last line. Every loop is bounded by a count and a time budget; the whole run stays
 * under 3 minutes. Everything started is cleaned up (sessions deleted, server stopped,
 * temp folder removed), also on an error or Ctrl-C. Not part of `npm test`.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------- settings ---------

/** dist/bench/server-entry.js: imports dist/src/main.js, the real server, unchanged. */
const ENTRY = fileURLToPath(new URL('./server-entry.js', import.meta.url));
const PY = '/usr/bin/python3';
const PRELOAD = 'numpy,pandas,matplotlib';
const WARM_POOL = 4;
const MAX_SESSIONS = 64; // 50 idle sessions for the PSS figure + the pool + margin

const N_CREATE = 30;
const N_WARMUP = 50;
const N_WARM = 500;
const N_HEALTH = 200;
const THROUGHPUT_SESSIONS = 8;
const THROUGHPUT_MS = 5000;
const N_IMPORT = 10;
const N_PSS = 50;
const FLOOR_THROUGHPUT_MS = 2000;

/** Time budgets (ms): a phase stops taking samples past its budget and says so. */
const BUDGET = { start: 60_000, create: 50_000, import: 25_000, pss: 60_000, total: 175_000 };

const TARGETS = {
  create_p50_ms: 10,
  create_p90_ms: 20,
  warm_exec_p50_ms: 0.9,
  throughput_per_s: 2400,
  import_p50_ms: 40,
  pss_mib: 20,
};

const PRINT1 = Buffer.from(JSON.stringify({ tool: 'code_execution', input: { code: 'print(1)' } }));
const IMPORT = Buffer.from(JSON.stringify({ tool: 'code_execution', input: { code: 'import numpy, pandas' } }));
/** The session's host uid (the outside end of its user-namespace uid map) and whether
 * the preload modules are already imported. */
const WHOAMI = Buffer.from(
  JSON.stringify({ tool: 'code_execution', input: { code: "import sys\nprint(open('/proc/self/uid_map').read().split()[1], all(m in sys.modules for m in ('numpy', 'pandas', 'matplotlib')))" } }),
);

const benchStart = performance.now();
const log = (msg: string) => process.stderr.write(`[bench ${((performance.now() - benchStart) / 1000).toFixed(1)}s] ${msg}\n`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** A sleep that does not keep the process alive (for races against an exit). */
const sleepUnref = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
const elapsed = () => performance.now() - benchStart;

// ---------------------------------------------------------------- statistics -------

interface Stats {
  n: number;
  p50: number;
  p90: number;
  max: number;
  min: number;
  mean: number;
}

function stats(xs: number[]): Stats | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const rank = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { n: s.length, p50: rank(0.5), p90: rank(0.9), max: s[s.length - 1]!, min: s[0]!, mean: s.reduce((a, b) => a + b, 0) / s.length };
}

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
  const proc = spawn(process.execPath, [ENTRY], {
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
  const deadline = Date.now() + BUDGET.start;
  for (;;) {
    const text = readFileSync(logFile, 'utf8');
    const m = /Server listening at (http:\/\/127\.0\.0\.1:(\d+))/.exec(text);
    if (m) {
      const s: Server = { url: m[1]!, host: '127.0.0.1', port: Number(m[2]), proc, root, logFile, exited };
      return s;
    }
    if (exitCode !== undefined) throw new Error(`server exited with ${exitCode} while starting:\n${tail(text)}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`server did not start within ${BUDGET.start / 1000}s:\n${tail(text)}`);
    }
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

  constructor(private readonly s: Server, maxSockets: number) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets, keepAliveMsecs: 30_000 });
  }

  request(method: string, path: string, body?: Buffer, timeoutMs = 60_000): Promise<Reply> {
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
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
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
    const r = await this.request('DELETE', `/sessions/${id}`);
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

// ---------------------------------------------------------------- PSS -------------

interface Mem {
  pssKiB: number;
  pssAnonKiB: number;
  pssFileKiB: number;
  rssKiB: number;
  procs: number;
}

/** uid -> pids, from the real uid in /proc/<pid>/status. */
async function pidsByUid(): Promise<Map<number, number[]>> {
  const out = new Map<number, number[]>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    const m = /^Uid:\s+(\d+)/m.exec(status);
    if (!m) continue;
    const uid = Number(m[1]);
    const list = out.get(uid) ?? [];
    list.push(Number(name));
    out.set(uid, list);
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
const notes: string[] = [];

async function phase(key: string, label: string, unit: string, fn: (f: Figure) => Promise<void>): Promise<void> {
  const f: Figure = { label, unit, stats: null };
  figures[key] = f;
  if (elapsed() > BUDGET.total - 5_000) {
    f.error = 'skipped: the run is out of time';
    return;
  }
  log(`${label} ...`);
  try {
    await fn(f);
  } catch (e) {
    f.error = String((e as Error)?.message ?? e).slice(0, 500);
    log(`${label}: FAILED: ${f.error}`);
  }
}

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
    await c.deleteSession(id);
    // Pool refill (one box with its preloads), measured from the create; 20 ms polling.
    await c.waitPoolFull();
    refill.push(performance.now() - t0);
  }
  if (total.length < N_CREATE) f.note = `time budget (${BUDGET.create / 1000}s) reached after ${total.length} of ${N_CREATE} samples`;
  f.stats = stats(total);
  f.target = `p50 <= ${TARGETS.create_p50_ms} ms, p90 <= ${TARGETS.create_p90_ms} ms`;
  f.pass = f.stats ? f.stats.p50 <= TARGETS.create_p50_ms && f.stats.p90 <= TARGETS.create_p90_ms : null;
  figures.create_post = { label: '  of which POST /sessions', unit: 'ms', stats: stats(post) };
  figures.create_first_exec = { label: '  of which first exec print(1)', unit: 'ms', stats: stats(first) };
  figures.create_second_exec = { label: '  (diag) second exec on that session', unit: 'ms', stats: stats(second) };
  figures.pool_refill = { label: '  (diag) pool back at target, from POST', unit: 'ms', stats: stats(refill), note: '20 ms polling of GET /health' };
}

async function benchHealth(c: Client): Promise<void> {
  const f: Figure = { label: '(diag) HTTP no-op: GET /health round trip', unit: 'ms', stats: null };
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

async function benchWarm(c: Client, f: Figure): Promise<void> {
  await c.waitPoolFull();
  const id = await c.createSession();
  try {
    for (let i = 0; i < N_WARMUP; i++) await c.exec(id, PRINT1, '1');
    await c.waitPoolFull();
    const xs: number[] = [];
    let fresh = 0;
    for (let i = 0; i < N_WARM; i++) {
      const t0 = performance.now();
      const r = await c.exec(id, PRINT1, '1');
      xs.push(performance.now() - t0);
      if (!r.reused) fresh++;
    }
    f.stats = stats(xs);
    f.target = `p50 <= ${TARGETS.warm_exec_p50_ms} ms`;
    f.pass = f.stats!.p50 <= TARGETS.warm_exec_p50_ms;
    f.extra = { new_connections_during_samples: fresh };
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
    for (let i = 0; i < THROUGHPUT_SESSIONS; i++) ids.push(await c.createSession());
    // Warm-up: every session and every keep-alive connection used once in parallel.
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
    f.stats = null;
    f.target = `>= ${TARGETS.throughput_per_s} execs/s`;
    f.pass = f.value >= TARGETS.throughput_per_s;
    f.extra = { execs: done, seconds: Number(secs.toFixed(3)), sessions: THROUGHPUT_SESSIONS };
    figures.throughput_latency = { label: '  (diag) exec latency under that load', unit: 'ms', stats: stats(lat) };
  } finally {
    tc.close();
    await Promise.all(ids.map((id) => c.deleteSession(id)));
  }
}

async function benchImport(c: Client, f: Figure): Promise<void> {
  const xs: number[] = [];
  const deadline = performance.now() + BUDGET.import;
  for (let i = 0; i < N_IMPORT && performance.now() < deadline; i++) {
    await c.waitPoolFull();
    const id = await c.createSession();
    try {
      const t0 = performance.now();
      await c.exec(id, IMPORT, '');
      xs.push(performance.now() - t0);
    } finally {
      await c.deleteSession(id);
    }
  }
  if (xs.length < N_IMPORT) f.note = `time budget (${BUDGET.import / 1000}s) reached after ${xs.length} of ${N_IMPORT} samples`;
  f.stats = stats(xs);
  f.target = `p50 <= ${TARGETS.import_p50_ms} ms`;
  f.pass = f.stats ? f.stats.p50 <= TARGETS.import_p50_ms : null;
}

async function benchPss(c: Client, f: Figure): Promise<void> {
  await c.waitPoolFull();
  const sessions: { id: string; uid: number; preloaded: boolean }[] = [];
  const deadline = performance.now() + BUDGET.pss;
  let createMs = 0;
  try {
    // Creates 4 at a time (a pool of WARM_POOL serves the first ones, the rest start
    // their sandbox in the request); each new session reports its host uid.
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next < N_PSS && performance.now() < deadline) {
          next++;
          const id = await c.createSession();
          const who = (await c.exec(id, WHOAMI)).stdout.trim().split(/\s+/);
          sessions.push({ id, uid: Number(who[0]), preloaded: who[1] === 'True' });
        }
      }),
    );
    createMs = performance.now() - t0;
    if (sessions.length < N_PSS) f.note = `time budget (${BUDGET.pss / 1000}s) reached after ${sessions.length} of ${N_PSS} sessions`;
    // Idle: the pool has refilled, nothing is starting; let the interpreters settle.
    await c.waitPoolFull(Math.max(5_000, deadline - performance.now()));
    await sleep(1000);
    const byUid = await pidsByUid();
    const per: Mem[] = [];
    for (const s of sessions) {
      const pids = byUid.get(s.uid) ?? [];
      if (pids.length === 0) throw new Error(`no processes found for session ${s.id} (host uid ${s.uid})`);
      per.push(await memOf(pids));
    }
    const mib = (k: number) => k / 1024;
    f.stats = stats(per.map((m) => mib(m.pssKiB)));
    f.value = f.stats!.mean;
    f.target = `mean <= ${TARGETS.pss_mib} MiB`;
    f.pass = f.value <= TARGETS.pss_mib;
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    f.extra = {
      sessions: per.length,
      processes_per_session: mean(per.map((m) => m.procs)),
      pss_anon_mib_mean: Number(mean(per.map((m) => mib(m.pssAnonKiB))).toFixed(2)),
      pss_file_mib_mean: Number(mean(per.map((m) => mib(m.pssFileKiB))).toFixed(2)),
      rss_mib_mean: Number(mean(per.map((m) => mib(m.rssKiB))).toFixed(2)),
      preloaded_sessions: sessions.filter((s) => s.preloaded).length,
      create_all_seconds: Number((createMs / 1000).toFixed(2)),
    };
    figures.pss_rss = { label: '  (diag) RSS per idle session (pages counted whole)', unit: 'MiB', stats: stats(per.map((m) => mib(m.rssKiB))) };
  } finally {
    await Promise.all(sessions.map((s) => c.deleteSession(s.id).catch(() => {})));
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
  // Diagnostic: 8 bare processes in parallel, the floor of the throughput figure.
  const fls = Array.from({ length: THROUGHPUT_SESSIONS }, () => new Floor());
  try {
    await Promise.all(fls.map(async (x) => { for (let i = 0; i < 20; i++) await x.print1(); }));
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
    figures.floor_throughput = { label: '(diag) floor throughput, 8 bare pythons', unit: 'execs/s', stats: null, value: done / ((last - t0) / 1000) };
  } finally {
    for (const x of fls) x.stop();
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
      const c = new Client(s, 8);
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
    const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(`${s.root}/`));
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
    void cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- report ----------

const fmt = (x: number | undefined, unit: string) => {
  if (x === undefined || !Number.isFinite(x)) return '-';
  if (unit === 'execs/s') return x.toFixed(0);
  if (unit === 'x') return x.toFixed(1);
  return x < 10 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(1);
};

function table(): string {
  const rows: string[][] = [['figure', 'unit', 'n', 'p50', 'p90', 'max', 'mean/value', 'target', 'result']];
  for (const f of Object.values(figures)) {
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
  const line = (r: string[]) => r.map((c, i) => (i === 0 || i >= 7 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const out = [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const r of rows.slice(1)) out.push(line(r));
  for (const [k, f] of Object.entries(figures)) {
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

async function main(): Promise<number> {
  const cpus = os.cpus();
  const machine = {
    cores: cpus.length,
    cpu_model: cpus[0]?.model ?? 'unknown',
    node: process.version,
    python: (() => {
      try {
        return execFileSync(PY, ['-c', 'import sys; print(sys.version.split()[0])'], { encoding: 'utf8' }).trim();
      } catch {
        return 'unknown';
      }
    })(),
    kernel: os.release(),
    memory_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    run_as_root: process.getuid?.() === 0,
    loadavg_start: os.loadavg().map((x) => Number(x.toFixed(2))),
  };
  if (!machine.run_as_root) notes.push('not run as root: sessions share the server uid, so the PSS figure cannot be attributed per session');
  log(`machine: ${machine.cores} cores, node ${machine.node}, load ${machine.loadavg_start.join(' ')}`);

  let isolation: unknown = null;
  let startupMs = 0;
  let poolFillMs = 0;
  let exitCode = 0;
  try {
    const t0 = performance.now();
    server = await startServer();
    startupMs = performance.now() - t0;
    const c = new Client(server, 1);
    try {
      const health = await c.json<{ isolation: unknown }>('GET', '/health');
      isolation = health.body.isolation;
      poolFillMs = await c.waitPoolFull(60_000);
      log(`server at ${server.url} (listening after ${(startupMs / 1000).toFixed(1)}s, pool of ${WARM_POOL} full ${(poolFillMs / 1000).toFixed(1)}s later)`);

      await phase('create', '1. create -> first result', 'ms', (f) => benchCreate(c, f));
      await phase('warm_exec', '2. warm exec print(1), HTTP keep-alive', 'ms', (f) => benchWarm(c, f));
      await phase('throughput', '3. throughput, 8 sessions in parallel', 'execs/s', (f) => benchThroughput(server!, c, f));
      await phase('import', '4. first import numpy, pandas', 'ms', (f) => benchImport(c, f));
      await phase('pss', '5. PSS per idle session', 'MiB', (f) => benchPss(c, f));
    } finally {
      c.close();
    }
  } catch (e) {
    notes.push(`run aborted: ${String((e as Error)?.message ?? e).slice(0, 2000)}`);
    exitCode = 1;
  } finally {
    log('stopping the server');
    await cleanup();
  }
  // The floor runs with the server stopped, so nothing of ours competes with it.
  await phase('floor', '6. floor: bare python3 over a pipe', 'ms', (f) => benchFloor(f));

  const warm = figures.warm_exec?.stats;
  const floor = figures.floor?.stats;
  if (warm && floor) {
    figures.ratio = { label: '   warm exec p50 / floor p50', unit: 'x', stats: null, value: warm.p50 / floor.p50 };
  }
  const tp = figures.throughput?.value;
  const ftp = figures.floor_throughput?.value;
  if (tp !== undefined && ftp !== undefined) {
    figures.throughput_ratio = { label: '   (diag) floor throughput / ours', unit: 'x', stats: null, value: ftp / tp };
  }
  for (const f of Object.values(figures)) if (f.error) exitCode = 1;

  const duration = elapsed() / 1000;
  const report = {
    machine: { ...machine, loadavg_end: os.loadavg().map((x) => Number(x.toFixed(2))) },
    server: {
      isolation,
      warm_pool_size: WARM_POOL,
      preload_modules: PRELOAD,
      max_sessions: MAX_SESSIONS,
      startup_seconds: Number((startupMs / 1000).toFixed(2)),
      initial_pool_fill_seconds: Number((poolFillMs / 1000).toFixed(2)),
    },
    targets: TARGETS,
    figures: Object.fromEntries(
      Object.entries(figures).map(([k, f]) => [
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
    `otari-sandbox-container benchmark  (${new Date().toISOString()})`,
    `machine: ${machine.cores} cores (${machine.cpu_model}), ${machine.memory_gib} GiB, node ${machine.node}, python ${machine.python}, kernel ${machine.kernel}, root=${machine.run_as_root}`,
    `load average at start ${machine.loadavg_start.join(' ')}, at end ${report.machine.loadavg_end.join(' ')}`,
    `server: isolation ${JSON.stringify((isolation as { mode?: string } | null)?.mode ?? null)}, uid per session ${JSON.stringify((isolation as { uid_per_session?: boolean } | null)?.uid_per_session ?? null)}, warm pool ${WARM_POOL}, preload ${PRELOAD}; listening after ${(startupMs / 1000).toFixed(1)}s, pool full ${(poolFillMs / 1000).toFixed(1)}s later`,
    '',
  ];
  process.stdout.write(`${head.join('\n')}${table()}\n${notes.map((n) => `note: ${n}\n`).join('')}finished in ${duration.toFixed(1)}s\n`);
  process.stdout.write(`${JSON.stringify(round(report))}\n`);
  return exitCode;
}

const watchdog = setTimeout(() => {
  log(`the run passed ${BUDGET.total / 1000 + 3}s: aborting`);
  void cleanup().finally(() => process.exit(1));
}, BUDGET.total + 3_000);
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
