/**
 * Housekeeping (docs/threat-model.md, Hostile inputs, after case 50): sessions come and go without
 * leaving processes, folders, mounts, cgroups, descriptors or memory behind; idle and
 * lifetime reaping kill everything a session started; and when the server itself is
 * SIGKILLed, nothing a session started survives it, and the next server on the same
 * sessions root sweeps what the dead one could not clean.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { SCAN_THREADS_MAX } from '../../src/files/scan-pool.js';
import { startServer, type TestServer } from '../helpers/server.js';
import {
  api,
  createSession,
  describePids,
  exists,
  HANG_BACKSTOP_MS,
  mountsUnder,
  pidsWithMarker,
  postChecks,
  py,
  pyMarker,
  serverRssKb,
  sh,
  sleepMarker,
  startSuite,
  stopSuite,
  waitFor,
  waitNoMarkers,
  type Suite,
} from './support.js';

let S: Suite;
let cgroupBase: string | null = null;

before(async () => {
  S = await startSuite({ SANDBOX_SESSION_GC_INTERVAL: '1', SANDBOX_MAX_SESSIONS: '24' });
  const h = await api(S.server, 'GET', '/health');
  cgroupBase = /\((\/sys\/fs\/cgroup\/[^)]+)\)/.exec(String(h.body.isolation?.memory_limit ?? ''))?.[1] ?? null;
});

after(async () => {
  await stopSuite(S);
});

/** Host pids whose owner uid is in [first, last], grouped by uid (zombies excluded). */
async function pidsInUidRange(first: number, last: number): Promise<Map<number, number[]>> {
  const out = new Map<number, number[]>();
  for (const n of await readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const st = await stat(`/proc/${n}`).catch(() => null);
    if (!st || st.uid < first || st.uid > last) continue;
    const s = await readFile(`/proc/${n}/stat`, 'utf8').catch(() => '');
    if (s === '' || s.slice(s.lastIndexOf(')') + 2).startsWith('Z')) continue;
    out.set(st.uid, [...(out.get(st.uid) ?? []), Number(n)]);
  }
  return out;
}

async function boxNames(root: string): Promise<string[]> {
  return (await readdir(root).catch(() => [] as string[])).filter((n) => n.startsWith('box_'));
}

/** The server's open descriptors, not counting HTTP connections to its own port (the
 * test client keeps some alive between requests). */
async function fdCount(server: TestServer): Promise<number> {
  const port = Number(new URL(server.url).port).toString(16).toUpperCase().padStart(4, '0');
  const http = new Set<string>();
  for (const f of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${server.proc.pid}/net/${f}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[1]?.endsWith(`:${port}`)) http.add(cols[9] ?? '');
    }
  }
  let n = 0;
  const { readlink } = await import('node:fs/promises');
  for (const fd of await readdir(`/proc/${server.proc.pid}/fd`)) {
    const target = await readlink(`/proc/${server.proc.pid}/fd/${fd}`).catch(() => '');
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode && http.has(inode)) continue;
    n++;
  }
  return n;
}

/** The descriptors a worker thread holds in this Node (its event loop's), measured here. */
async function fdsPerThread(): Promise<number> {
  const count = async () => (await readdir('/proc/self/fd')).length;
  const before = await count();
  const worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
  await once(worker, 'online');
  const during = await count();
  await worker.terminate();
  return during - before;
}

test('create and delete 100 sessions: no leftover processes, folders, mounts, cgroups; fds and RSS back near baseline', async (t) => {
  const { server } = S;
  const seenBoxes = new Set<string>();
  const markers: string[] = [];
  // Warm up once so the baseline includes lazily made server state.
  const warm = await createSession(server);
  await py(server, warm, 'print(1)');
  await api(server, 'DELETE', `/sessions/${warm}`);
  const fd0 = await fdCount(server);
  const threads0 = (await api(server, 'GET', '/health')).body.workspace_threads as number;
  const rss0 = await serverRssKb(server);
  const t0 = performance.now();
  for (let batch = 0; batch < 10; batch++) {
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const id = await createSession(server);
        const m = sleepMarker();
        markers.push(m);
        const r = await py(server, id, `import subprocess\nsubprocess.Popen(['sleep', '${m}'], start_new_session=True)\nprint('up')`);
        assert.equal(r.stdout, 'up', r.stderr);
        for (const n of await boxNames(S.sessionsRoot)) seenBoxes.add(n);
        assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
      }),
    );
  }
  t.diagnostic(`100 create+exec+delete in ${Math.round(performance.now() - t0)} ms; ${seenBoxes.size} box folders seen`);
  assert.deepEqual(await waitNoMarkers(markers), [], 'a process of a deleted session survives');
  // A DELETE answers once the session's processes are killed; the folder, mounts and cgroup
  // go in the background. Wait for that cleanup (an event the server reports), not a clock.
  const cleaned = await waitFor(async () => (await api(server, 'GET', '/health')).body.sessions_cleaning === 0, 30_000);
  assert.ok(cleaned, 'background cleanup of deleted sessions finishes');
  // What may remain: the victim's box and the warm pool.
  const h = await api(server, 'GET', '/health');
  assert.equal(h.body.session_count, 1, 'only the victim is left');
  const liveBoxes = await boxNames(S.sessionsRoot);
  const pool = h.body.warm_pool as { target: number; ready: number; starting: number };
  assert.ok(liveBoxes.length <= 1 + pool.ready + pool.starting, `box folders left: ${liveBoxes.join(', ')} (pool ${JSON.stringify(pool)})`);
  const liveUids = new Set<number>();
  for (const n of liveBoxes) {
    const st = await stat(`${S.sessionsRoot}/${n}/workspace`).catch(() => null);
    if (st) liveUids.add(st.uid);
  }
  let stray: [number, number[]][] = [];
  const clean = await waitFor(
    async () => {
      const byUid = await pidsInUidRange(server.uidBase, server.uidBase + 100);
      stray = [...byUid].filter(([uid]) => !liveUids.has(uid));
      return stray.length === 0;
    },
    5000,
    100,
  );
  assert.ok(clean, `processes of deleted sessions (uid range ${server.uidBase}..${server.uidBase + 100}): ${await describePids(stray.flatMap(([, p]) => p))}`);
  const byUid = await pidsInUidRange(server.uidBase, server.uidBase + 100);
  for (const [uid, pids] of byUid) assert.ok(pids.length <= 6, `live box uid ${uid} has ${pids.length} processes`);
  const mounts = await mountsUnder(S.sessionsRoot);
  assert.ok(
    // (a live box: its tmpfs, and its device nodes' tmpfs in it)
    mounts.every((m) => liveBoxes.some((n) => m === `${S.sessionsRoot}/${n}` || m === `${S.sessionsRoot}/${n}/devices`)),
    `mounts left: ${mounts.join(', ')}`,
  );
  assert.ok(mounts.length <= 2 * liveBoxes.length, `${mounts.length} mounts for ${liveBoxes.length} boxes`);
  if (cgroupBase) {
    const leaves = (await readdir(cgroupBase).catch(() => [] as string[])).filter((n) => seenBoxes.has(n) && !liveBoxes.includes(n));
    assert.deepEqual(leaves, [], `cgroup leaves of deleted sessions under ${cgroupBase}`);
  }
  // Let the warm pool settle (a refill in flight holds a sandbox's pipes) before counting.
  await waitFor(
    async () => {
      const p = (await api(server, 'GET', '/health')).body.warm_pool as { target: number; ready: number; starting: number };
      return p.ready === p.target && p.starting === 0;
    },
    20_000,
    100,
  );
  const fd1 = await fdCount(server);
  const threads1 = (await api(server, 'GET', '/health')).body.workspace_threads as number;
  const rss1 = await serverRssKb(server);
  t.diagnostic(`server fds ${fd0} -> ${fd1}; workspace threads ${threads0} -> ${threads1}; RSS ${rss0} -> ${rss1} kB`);
  assert.ok(threads1 <= SCAN_THREADS_MAX, `${threads1} workspace threads`);
  // The ten parallel clients leave up to ten idle keep-alive connections open on the
  // server (not a leak), and the workspace threads made meanwhile (at most
  // SCAN_THREADS_MAX; they end when idle) hold a few each; anything past that is.
  const threadFds = Math.max(0, threads1 - threads0) * (await fdsPerThread());
  assert.ok(fd1 <= fd0 + 10 + 4 + threadFds, `server descriptors grew from ${fd0} to ${fd1} (${threadFds} for ${threads1 - threads0} new workspace threads)`);
  assert.ok(rss1 - rss0 < 100 * 1024, `server RSS grew by ${rss1 - rss0} kB`);
  await postChecks(S);
});

test('idle timeout and maximum lifetime reap a session with everything it started', async () => {
  const { server } = S;
  // The lifetime and idle timeout leave room for the set-up below on a loaded machine (it
  // must end before either session is reaped); the waits for the reaping are backstops.
  const old = (await api(server, 'POST', '/sessions', { max_lifetime_seconds: 10 })).body.session_id as string;
  const [m1, m2, m3] = [sleepMarker(), sleepMarker(), pyMarker()];
  await py(
    server,
    old,
    `import subprocess, sys\nsubprocess.Popen(['sleep', '${m2}'], start_new_session=True)\nsubprocess.run([sys.executable, '-c', ${JSON.stringify(`#${m3}\nimport os, time\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\ntime.sleep(300)`)}])`,
  );
  for (const m of [m2, m3]) assert.ok((await pidsWithMarker(m)).length > 0, `${m} runs`);
  const idle = (await api(server, 'POST', '/sessions', { idle_timeout_seconds: 5 })).body.session_id as string;
  await py(server, idle, `import subprocess\nsubprocess.Popen(['sleep', '${m1}'], start_new_session=True)`);
  assert.ok((await pidsWithMarker(m1)).length > 0, `${m1} runs`);
  // Keep the lifetime-limited session busy: a running call counts as activity, not as a reprieve.
  const busy = sh(server, old, 'sleep 30', { timeout_seconds: 60 });
  const gone = await waitFor(
    async () => (await api(server, 'GET', `/sessions/${idle}`)).status === 404 && (await api(server, 'GET', `/sessions/${old}`)).status === 404,
    HANG_BACKSTOP_MS,
    200,
  );
  assert.ok(gone, 'both sessions were reaped');
  const r = await busy;
  assert.ok(r.status === 200 || r.status === 404, `the call in flight when its session was reaped answers: ${r.status}`);
  assert.deepEqual(await waitNoMarkers([m1, m2, m3]), [], 'reaped sessions left processes');
  await postChecks(S);
});

test('SIGKILL of the server: no process a session started survives; the next server sweeps folders, mounts and cgroups', async (t) => {
  const { server } = S;
  const markers: string[] = [];
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const id = await createSession(server);
    ids.push(id);
    const [a, b, c] = [sleepMarker(), pyMarker(), sleepMarker()];
    markers.push(a, b, c);
    await py(
      server,
      id,
      `import subprocess, sys\nsubprocess.Popen(['sleep', '${a}'], start_new_session=True)\nsubprocess.run([sys.executable, '-c', ${JSON.stringify(`#${b}\nimport os, time\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\ntime.sleep(300)`)}])`,
    );
    // A call still in flight (a session runs one at a time): bash in some, Python in others.
    if (i % 2 === 0) void sh(server, id, `setsid sleep ${c} & sleep 60`, { timeout_seconds: 90 }).catch(() => {});
    else void py(server, id, `import time, subprocess\nsubprocess.Popen(['sleep', '${c}'])\ntime.sleep(60)`, { timeout_seconds: 90 }).catch(() => {});
  }
  const allUp = await waitFor(async () => (await Promise.all(markers.map((m) => pidsWithMarker(m)))).every((p) => p.length > 0), 10_000, 100);
  assert.ok(allUp, 'every marked process runs before the kill');
  const boxesBefore = await boxNames(S.sessionsRoot);
  server.proc.kill('SIGKILL');
  await waitFor(() => server.proc.exitCode !== null || server.proc.signalCode !== null, 5000);
  assert.deepEqual(await waitNoMarkers(markers), [], 'processes outlived the SIGKILLed server');
  let stray: [number, number[]][] = [];
  const noUids = await waitFor(async () => (stray = [...(await pidsInUidRange(server.uidBase, server.uidBase + 100))]).length === 0, 30_000, 100);
  assert.ok(noUids, `sandbox processes outlived the server: ${await describePids(stray.flatMap(([, p]) => p))}`);
  // A dead server cannot clean up; the next one on the same root and uid range must.
  const second = await startServer({ SANDBOX_SESSIONS_ROOT: S.sessionsRoot, SANDBOX_UID_BASE: String(server.uidBase), SANDBOX_WARM_POOL_SIZE: '0' });
  t.after(() => second.stop());
  const left = (await boxNames(S.sessionsRoot)).filter((n) => boxesBefore.includes(n));
  assert.deepEqual(left, [], 'box folders of the dead server were swept at start-up');
  assert.deepEqual(await mountsUnder(S.sessionsRoot), [], 'tmpfs mounts of the dead server were swept');
  if (cgroupBase) {
    const leaves = (await readdir(cgroupBase).catch(() => [] as string[])).filter((n) => boxesBefore.includes(n));
    assert.deepEqual(leaves, [], 'cgroup leaves of the dead server were swept');
  }
  // The new server works, and a SIGTERM stop takes its sessions' processes with it.
  const id = await createSession(second);
  const m = sleepMarker();
  const r = await py(second, id, `import subprocess\nsubprocess.Popen(['sleep', '${m}'], start_new_session=True)\nprint('ok')`);
  assert.equal(r.stdout, 'ok');
  assert.ok((await pidsWithMarker(m)).length > 0);
  const code = await second.stop('SIGTERM');
  assert.equal(code, 0, 'a SIGTERM stop exits 0');
  assert.deepEqual(await waitNoMarkers([m]), [], 'SIGTERM left a session process');
  assert.deepEqual(await boxNames(S.sessionsRoot), [], 'SIGTERM removes every box folder');
  assert.deepEqual(await mountsUnder(S.sessionsRoot), [], 'SIGTERM removes every mount');
  assert.ok(!(await exists(`${S.sessionsRoot}/${boxesBefore[0] ?? 'none'}`)));
});
