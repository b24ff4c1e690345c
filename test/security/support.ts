/**
 * Shared scaffolding of the hostile-input suite (Hostile inputs of docs/threat-model.md).
 *
 * Every security test file starts ONE real server (startSuite in `before`, stopSuite in
 * `after`) and a "victim" session next to it. Each case runs its attack from a fresh
 * "attacker" session, asserts the expected outcome, then calls finishCase(), which:
 *   1. deletes the attacking session (204) and checks that nothing of it is left: no
 *      process with any of the case's markers in its command line, no process of the
 *      session's host uid that started before the delete, and no host folder;
 *   2. checks GET /health answers 200 and the server's own event-loop figures;
 *   3. checks the victim session still runs print(1) -> "1".
 * No check here measures time with a clock (a loaded machine would fail it): waits for
 * leftovers to go are bounded only by generous backstops.
 *
 * Markers: processes an attack leaves behind are given unique command lines
 * (`sleep 777.<random>` or `python3 -c "#m-<random>..."`) so leftovers are found by
 * scanning /proc/<pid>/cmdline on the host.
 *
 * Host canaries: hostDir is a folder of the test's own (0711, never mounted in a
 * sandbox) for files a confused server could leak or overwrite.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { chmod, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { api, createSession, exec, HANG_BACKSTOP_MS, notHung, pidsWithMarker, py, sh, startServer, waitFor, type TestServer } from '../helpers/server.js';

const execFileP = promisify(execFile);

export { api, createSession, HANG_BACKSTOP_MS, notHung, pidsWithMarker, py, sh, waitFor };

export interface Suite {
  server: TestServer;
  /** The sessions root the server really uses. */
  sessionsRoot: string;
  /** A folder of the test's own on the host (never mounted in a sandbox). */
  hostDir: string;
  victim: string;
  victimBox: BoxInfo;
  /** The server's count of event-loop stretches busy >= 100 ms, at the last check. */
  loopBusy: number;
}

export interface BoxInfo {
  /** <sessionsRoot>/box_<hex> */
  dir: string;
  /** Host uid the session's processes run as. */
  uid: number;
}

export interface Attacker {
  id: string;
  box: BoxInfo;
}

const CLK_TCK = 100;

export async function startSuite(env: Record<string, string> = {}): Promise<Suite> {
  const hostDir = await mkdtemp('/tmp/sbx-sec-');
  await chmod(hostDir, 0o711);
  let server: TestServer;
  try {
    server = await startServer(env);
  } catch (e) {
    await rm(hostDir, { recursive: true, force: true });
    throw e;
  }
  const suite: Suite = { server, sessionsRoot: env.SANDBOX_SESSIONS_ROOT ?? server.sessionsRoot, hostDir, victim: '', victimBox: { dir: '', uid: -1 }, loopBusy: 0 };
  try {
    suite.victim = await createSession(server);
    suite.victimBox = await findBox(suite, suite.victim);
    const first = await py(server, suite.victim, 'print(1)');
    assert.equal(first.stdout, '1', 'victim session works before the attacks');
    suite.loopBusy = (await api(server, 'GET', '/health')).body.event_loop.busy_over_250ms;
  } catch (e) {
    await stopSuite(suite);
    throw e;
  }
  return suite;
}

export async function stopSuite(suite: Suite | undefined): Promise<void> {
  if (!suite) return;
  await suite.server.stop();
  // A SIGKILLed server cannot unmount its per-session tmpfs; never leave mounts behind.
  for (const dir of [suite.server.root, suite.hostDir]) {
    for (const m of await mountsUnder(dir)) await execFileP('/usr/bin/umount', ['-l', m]).catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

/** Mount points in /proc/mounts under `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/mounts', 'utf8');
  return text
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .map((p) => p.replace(/\\040/g, ' '))
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

/** Finds the host folder and uid of a session: a probe file made in its /tmp is found
 * under <box>/tmp on the host; the box's workspace owner is the session's host uid. */
export async function findBox(suite: Suite, id: string): Promise<BoxInfo> {
  const probe = `.secsuite-${randomBytes(8).toString('hex')}`;
  const r = await sh(suite.server, id, `touch /tmp/${probe}`);
  assert.equal(r.return_code, 0, `probe file: ${r.stderr}`);
  for (const name of await readdir(suite.sessionsRoot)) {
    if (!name.startsWith('box_')) continue;
    if (!(await exists(`${suite.sessionsRoot}/${name}/tmp/${probe}`))) continue;
    const st = await stat(`${suite.sessionsRoot}/${name}/workspace`);
    return { dir: `${suite.sessionsRoot}/${name}`, uid: st.uid };
  }
  assert.fail(`no box folder with /tmp/${probe} under ${suite.sessionsRoot}`);
}

/** A fresh attacking session; deleted by t.after even when the case fails half-way. */
export async function attacker(suite: Suite, t: { after(fn: () => Promise<void> | void): void }): Promise<Attacker> {
  const id = await createSession(suite.server);
  t.after(async () => {
    await api(suite.server, 'DELETE', `/sessions/${id}`).catch(() => {});
  });
  return { id, box: await findBox(suite, id) };
}

/** Unique marker for `sleep <marker>`: a number no other process uses. */
export function sleepMarker(): string {
  return `777.${String(Math.floor(Math.random() * 1e9)).padStart(9, '1')}`;
}

/** Unique marker to put in a `python3 -c "#<marker>..."` command line. */
export function pyMarker(): string {
  return `m-${randomBytes(8).toString('hex')}`;
}

export function randomText(prefix = 'x'): string {
  return `${prefix}-${randomBytes(10).toString('hex')}`;
}

/** Host pids owned by `uid` that started before `beforeUptimeSeconds` (seconds since boot). */
export async function oldPidsOfUid(uid: number, beforeUptimeSeconds: number): Promise<number[]> {
  const out: number[] = [];
  for (const n of await readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const st = await stat(`/proc/${n}`).catch(() => null);
    if (!st || st.uid !== uid) continue;
    const text = await readFile(`/proc/${n}/stat`, 'utf8').catch(() => '');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const start = Number(fields[19]) / CLK_TCK; // field 22 of stat, 20th after "pid (comm)"
    if (Number.isFinite(start) && start < beforeUptimeSeconds) out.push(Number(n));
  }
  return out;
}

export async function uptimeSeconds(): Promise<number> {
  return Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
}

export async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null)) !== null;
}

/** Polls until no process has any marker; returns what is left. `timeoutMs` is a backstop
 * (a killed process is gone within milliseconds), generous for a loaded machine. */
export async function waitNoMarkers(markers: string[], timeoutMs = 30_000): Promise<number[]> {
  let left: number[] = [];
  await waitFor(
    async () => {
      left = (await Promise.all(markers.map((m) => pidsWithMarker(m)))).flat();
      return left.length === 0;
    },
    timeoutMs,
    100,
  );
  return left;
}

/** Which markers had a live process at some point during `during` (polled every 50 ms). */
export async function seenWhile<T>(markers: string | string[], during: Promise<T>): Promise<{ seen: Set<string>; value: T }> {
  const list = Array.isArray(markers) ? markers : [markers];
  const seen = new Set<string>();
  let done = false;
  const scan = async () => {
    for (const m of list) if (!seen.has(m) && (await pidsWithMarker(m)).length > 0) seen.add(m);
  };
  const poll = (async () => {
    while (!done && seen.size < list.length) {
      await scan();
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const value = await during.finally(() => {
    done = true;
  });
  await poll;
  return { seen, value };
}

/** Host pids owned by `uid` (any state but zombie). */
export async function livePidsOfUid(uid: number): Promise<number[]> {
  const out: number[] = [];
  for (const n of await readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const st = await stat(`/proc/${n}`).catch(() => null);
    if (!st || st.uid !== uid) continue;
    const text = await readFile(`/proc/${n}/stat`, 'utf8').catch(() => '');
    if (text.slice(text.lastIndexOf(')') + 2).startsWith('Z')) continue;
    out.push(Number(n));
  }
  return out;
}

/** The bound on the server's peak resident set in the hostile suite (docs/threat-model.md). */
export const SERVER_PEAK_RSS_KB = 1024 * 1024;

export async function serverPeakRssKb(server: TestServer): Promise<number> {
  const text = await readFile(`/proc/${server.proc.pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(text)?.[1] ?? NaN);
}

export async function serverRssKb(server: TestServer): Promise<number> {
  const text = await readFile(`/proc/${server.proc.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(text)?.[1] ?? NaN);
}

/**
 * Bytes the server process has read so far: rchar of /proc/<pid>/io, every read(2) and
 * sendfile(2) of all its threads (files, pipes and sockets alike). A case that says
 * "refused before reading the file" compares it before and after the request: a server
 * that read a 100 MB file first shows 100 MB more, however fast the machine is.
 */
export async function serverReadBytes(server: TestServer): Promise<number> {
  const text = await readFile(`/proc/${server.proc.pid}/io`, 'utf8');
  return Number(/^rchar:\s+(\d+)/m.exec(text)?.[1] ?? NaN);
}

/** The standard post-checks: /health answers 200 promptly; the victim runs print(1). */
export async function postChecks(suite: Suite, what = 'after the case'): Promise<void> {
  const { server } = suite;
  const alive = server.proc.exitCode === null && server.proc.signalCode === null;
  assert.ok(alive, `${what}: server process exited (${server.proc.exitCode ?? server.proc.signalCode}); log tail:\n${server.logs().slice(-3000)}`);
  // (how long /health takes is not asserted: the event loop's own blocking figures are, below)
  const health = await notHung(api(server, 'GET', '/health'), `${what}: GET /health`);
  assert.equal(health.status, 200, `${what}: /health status`);
  assert.equal(health.body?.status, 'ok', `${what}: /health body`);
  // The server's own measure (loop-monitor.ts): no stretch of its own work held every other
  // session for 100 ms. This is a threshold, but not on the wall clock: a stretch counts
  // for the CPU time its loop thread used in it, and a CPU hog only makes the thread wait
  // (it lengthens max_delay_ms, not the busy figures). What load can still add is batching:
  // events that piled up while the thread waited are handled in one turn. That is bounded
  // by what a case sends at once, and measured: across all 13 hostile files, with two
  // `while :; do :; done` hogs on the 2-core machine, the longest busy stretch was 50 ms
  // (max_delay_ms up to 578 ms). Later, on the same kind of machine, the unchanged server
  // measured 100-125 ms in "create and delete 100 sessions" (ten creates at once: their
  // forks of the server process land in one turn), so the bound here is 250 ms: a margin
  // over that, and still well under what the blocking bugs this is for (unbounded
  // JSON.parse, sync reads, a frame flood handled in one go) cost: hundreds of ms to seconds.
  const loop = health.body.event_loop as { busy_over_250ms: number; max_busy_ms: number; max_delay_ms: number };
  assert.equal(
    loop.busy_over_250ms,
    suite.loopBusy,
    `${what}: the server's own work held its event loop for >= 250 ms of CPU (longest ${loop.max_busy_ms} ms; longest late tick ${loop.max_delay_ms} ms)`,
  );
  suite.loopBusy = loop.busy_over_250ms;
  const peakKb = await serverPeakRssKb(server);
  assert.ok(peakKb < SERVER_PEAK_RSS_KB, `${what}: the server's peak resident set reached ${Math.round(peakKb / 1024)} MiB`);
  // The victim still works. No clock: a victim held up by what the attack left would run
  // into its wall clock (limit "wall_clock") or not answer at all (notHung); the 60 s limit
  // is only that backstop. How fast it answers is the bench's business.
  const v = await notHung(py(server, suite.victim, 'print(1)', { timeout_seconds: 60 }), `${what}: victim print(1)`);
  assert.equal(v.status, 200, `${what}: victim exec status ${JSON.stringify(v.body)}`);
  assert.equal(v.limit_exceeded, null, `${what}: victim print(1) ran into a limit (stderr: ${v.stderr})`);
  assert.equal(v.stdout, '1', `${what}: victim print(1) stdout (stderr: ${v.stderr})`);
}

/**
 * End of a case: delete the attacking session and prove nothing of it survives, then run
 * the standard post-checks.
 */
export async function finishCase(suite: Suite, a: Attacker | null, markers: string[] = []): Promise<void> {
  if (a) {
    const before = await uptimeSeconds();
    const del = await api(suite.server, 'DELETE', `/sessions/${a.id}`);
    assert.equal(del.status, 204, `DELETE of the attacking session: ${JSON.stringify(del.body)}`);
    const gone = await api(suite.server, 'GET', `/sessions/${a.id}`);
    assert.equal(gone.status, 404, 'the deleted session is gone');
    let old: number[] = [];
    // (backstops, not speed checks: DELETE answers once they are SIGKILLed)
    const noOld = await waitFor(async () => (old = await oldPidsOfUid(a.box.uid, before)).length === 0, 30_000, 100);
    assert.ok(noOld, `processes of the deleted session (uid ${a.box.uid}) survive: ${await describePids(old)}`);
    const folderGone = await waitFor(async () => !(await exists(a.box.dir)), 30_000, 100);
    assert.ok(folderGone, `host folder of the deleted session is left: ${a.box.dir}`);
    const mounts = await mountsUnder(a.box.dir);
    assert.deepEqual(mounts, [], 'no mount of the deleted session is left');
  }
  const left = await waitNoMarkers(markers);
  assert.deepEqual(left, [], `marked processes survive: ${await describePids(left)}`);
  await postChecks(suite);
}

/** The server's error-level log lines (pino level >= 50), for assertion messages. */
export function serverErrors(suite: Suite): string {
  return suite.server
    .logs()
    .split('\n')
    .filter((l) => /"level":(50|60)/.test(l))
    .slice(-5)
    .join('\n');
}

export async function describePids(pids: number[]): Promise<string> {
  const parts = await Promise.all(pids.slice(0, 20).map(async (p) => `${p}:${(await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '?')).replace(/\0/g, ' ').slice(0, 120)}`));
  return parts.join(' | ');
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  ms: number;
}

/**
 * One HTTP request with the path sent exactly as given (no URL normalisation, so
 * `%2e%2e%2f` and `..` reach the server raw) and an optional body (Buffer, or chunks
 * sent with chunked transfer encoding).
 */
export function rawRequest(
  server: { url: string },
  opts: { method?: string; path: string; headers?: Record<string, string | number>; body?: Buffer | string; chunks?: AsyncIterable<Buffer>; timeoutMs?: number },
): Promise<RawResponse> {
  const u = new URL(server.url);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: Number(u.port), method: opts.method ?? 'GET', path: opts.path, headers: opts.headers ?? {}, agent: false });
    const timer = setTimeout(
      () => req.destroy(new Error(`no answer in ${opts.timeoutMs ?? 15000} ms: ${opts.method ?? 'GET'} ${opts.path.slice(0, 100)}`)),
      opts.timeoutMs ?? 15000,
    );
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), ms: performance.now() - started });
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (opts.chunks) {
      void (async () => {
        try {
          for await (const c of opts.chunks!) {
            if (req.destroyed) return;
            if (!req.write(c)) await new Promise((r) => req.once('drain', r));
          }
          req.end();
        } catch {
          req.destroy();
        }
      })();
    } else {
      req.end(opts.body);
    }
  });
}

export { upload } from '../helpers/server.js';

/** Download through the file API (query encoded by URLSearchParams). */
export async function download(server: { url: string }, id: string, path: string) {
  const res = await fetch(`${server.url}/sessions/${id}/files?${new URLSearchParams({ path })}`);
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body };
}

export async function listFiles(server: { url: string }, id: string, path = '.', recursive = false) {
  return api(server, 'GET', `/sessions/${id}/files/list?${new URLSearchParams({ path, recursive: String(recursive) })}`);
}

export async function editor(server: { url: string }, id: string, input: Record<string, unknown>) {
  return exec(server, id, 'text_editor_code_execution', input);
}

export function assertRefused(status: number, what: string, allowed: number[] = [400, 403, 404]): void {
  assert.ok(allowed.includes(status), `${what}: expected one of ${allowed.join('/')}, got ${status}`);
}
