/**
 * Host-wide kernel resources (docs/threat-model.md, "Host-wide kernel resources"): what one
 * session could take from every other session and from the host, each crossed on purpose
 * from an attacker session next to a victim:
 *   - socket buffers: loopback TCP connections filled without reading stop at the
 *     session's limit (cgroup v1: memory.kmem.tcp; v2: the memory cgroup itself);
 *   - all sessions together: the server's parent cgroup holds memory and processes to
 *     SANDBOX_MAX_SESSIONS times a session's limits, even with a session's own limits gone;
 *   - processes (#K8): the per-session limit in force keeps all sessions within the server's share of
 *     the host's pids, and a sandbox that cannot fork answers 503, never 500;
 *   - ptys: a session that opens ptys until it cannot gets SANDBOX_SESSION_PTYS_MAX of
 *     them, and the victim still opens one meanwhile; in both kinds of sandbox (the
 *     template's, and bubblewrap's on a server of its own with SANDBOX_PYTHON_TEMPLATE=off);
 *     also after the interpreter made itself not dumpable (#K7); without the template, bash
 *     commands beside the living interpreter have no ptys, so masters passed out of them
 *     to the interpreter cannot add up past the cap (#K10);
 *   - dying memory cgroups (#K14): sessions that were the first to read host files leave
 *     no removed-but-not-freed memory cgroup behind once deleted;
 *   - extended attributes (#K15): kernel memory no tmpfs size counts; setting one fails.
 *   - dnotify and file leases (#K16): marks on shared inodes, leases the server trips on.
 *   - SysV shared memory (#K17): segments no process maps, bounded like /dev/shm.
 *   - locks on system files and device nodes (#K18): the host and other sessions do not
 *     see them.
 * Settings are small so the limits are crossed quickly: 2 sessions at most, 128 MiB of
 * memory, 16 MiB of disk and 1 MiB of /dev/shm per session (a 145 MiB memory cgroup), 48
 * processes and 8 ptys per session.
 */
import { before, after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { api, attacker, download, finishCase, pidsWithMarker, py, sh, sleepMarker, startSuite, stopSuite, waitFor, type Suite } from './support.js';

const MiB = 1024 * 1024;
const SESSION_MEMORY_BYTES = (128 + 16 + 1) * MiB;
const SESSION_PIDS = 48;
const MAX_SESSIONS = 2;
const PTYS = 8;
let S: Suite;
const execFileP = promisify(execFile);

before(async () => {
  S = await startSuite({
    SANDBOX_MAX_SESSIONS: String(MAX_SESSIONS),
    SANDBOX_WARM_POOL_SIZE: '0',
    SANDBOX_RUNNER_MEMORY_MB: '128',
    SANDBOX_WORKSPACE_MB: '16',
    SANDBOX_SHM_MB: '1',
    SANDBOX_SESSION_PIDS_MAX: String(SESSION_PIDS),
    SANDBOX_RUNNER_NPROC: '400',
    SANDBOX_RUNNER_NOFILE: '1024',
    SANDBOX_SESSION_PTYS_MAX: String(PTYS),
  });
});

after(async () => {
  await stopSuite(S);
});

/** The cgroup folders of a host process: v1 per hierarchy (memory, pids), or v2's one. */
async function cgroupDirs(pid: number): Promise<{ memory: string | null; pids: string | null; v2: boolean }> {
  const text = await readFile(`/proc/${pid}/cgroup`, 'utf8');
  const v2mount = existsSync('/sys/fs/cgroup/cgroup.controllers') ? '/sys/fs/cgroup' : '/sys/fs/cgroup/unified';
  const v1 = (c: string) => {
    const line = text.split('\n').find((l) => l.split(':')[1]?.split(',').includes(c));
    return line ? `/sys/fs/cgroup/${c}${line.split(':').slice(2).join(':')}` : null;
  };
  const memory = v1('memory');
  if (memory !== null && /\/box_[0-9a-f]+$/.test(memory)) return { memory, pids: v1('pids'), v2: false };
  const unified = text.split('\n').find((l) => l.startsWith('0::'));
  const dir = unified ? `${v2mount}${unified.slice(3)}` : null;
  return { memory: dir, pids: dir, v2: true };
}

/** The cgroups of a session, found through a process it keeps running (`sleep <marker>`). */
async function sessionCgroups(id: string, suite: Suite = S): Promise<{ memory: string | null; pids: string | null; v2: boolean; marker: string }> {
  const marker = sleepMarker();
  const r = await py(suite.server, id, `import subprocess\n_keep = subprocess.Popen(['sleep', '${marker}'])`);
  assert.equal(r.return_code, 0, r.stderr);
  let pid = (await pidsWithMarker(marker))[0];
  if (pid === undefined) {
    // (not seen once, under a CPU hog, in 4 runs of the whole suite: say what became of it)
    const state = await py(suite.server, id, 'print(_keep.poll(), _keep.pid)');
    await waitFor(async () => (pid = (await pidsWithMarker(marker))[0]) !== undefined, 10_000);
    assert.ok(pid, `the marker process runs (inside: returncode and pid ${state.stdout.trim()}; ${state.stderr.trim()}; restarted ${state.interpreter_restarted})`);
  }
  return { ...(await cgroupDirs(pid)), marker };
}

/** A session's TCP limit as the server's /health states it (isolation.tcp_memory, MiB with
 * one decimal): its part of the host's tcp_mem depends on the other servers on the host
 * (other test files) and what they need (src/sandbox/host-tasks.ts serverBudget). */
async function tcpCapMiB(server: { url: string }): Promise<number> {
  const h = await api(server, 'GET', '/health');
  const text = String(h.body.isolation.tcp_memory);
  const m = /^TCP buffers capped at ([\d.]+) MiB per session/.exec(text);
  assert.ok(m, `/health states the TCP cap: ${text}`);
  return Number(m[1]);
}

/** Whether `bytes` is what /health's one-decimal MiB figure says. */
const sameMiB = (bytes: number, mib: number) => Math.abs(bytes / MiB - mib) <= 0.051;

/** What /health says when a session's socket buffers are bounded (cgroup v2, or v1 with its TCP limit). */
const BOUNDED = /^(TCP and UDP buffers are limited per session|socket buffers are charged to the session's memory limit)/;
const num = async (file: string) => Number((await readFile(file, 'utf8')).trim());
const stat = async (file: string, key: string) => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(await readFile(file, 'utf8'))?.[1] ?? NaN);

test('socket memory: 128 loopback TCP connections filled without reading stop at the session memory limit, not at 128 full buffers', async (t) => {
  const h = await api(S.server, 'GET', '/health');
  const socketMemory = String(h.body.isolation.socket_memory);
  t.diagnostic(`/health socket_memory: ${socketMemory}`);
  if (!BOUNDED.test(socketMemory)) {
    assert.match(socketMemory, /not (bounded|limited) per session/, '/health says socket buffers are not bounded here');
    return;
  }
  const a = await attacker(S, t);
  const cg = await sessionCgroups(a.id);
  assert.ok(cg.memory, 'the session has a memory cgroup');
  // Each connection's sender writes until the kernel says EAGAIN, with the largest buffers
  // the sandbox's namespace allows at both ends (net.core.wmem_max, rmem_max; doubled):
  // alone, one holds them full (most of a MiB: on the sandbox's 1500-byte-MTU loopback,
  // default buffers grow little); 128 of them hold more than the session's TCP limit.
  const r = await py(
    S.server,
    a.id,
    [
      'import socket',
      'ls = socket.socket()',
      'ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)',
      "ls.bind(('127.0.0.1', 0))",
      'ls.listen(256)',
      'held = []',
      'def fill():',
      '    c = socket.socket()',
      '    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)',
      '    c.connect(ls.getsockname())',
      '    s, _ = ls.accept()',
      '    held.append((c, s))',
      '    c.setblocking(False)',
      '    n = 0',
      '    try:',
      '        while True:',
      "            n += c.send(b'x' * 65536)",
      '    except OSError:',
      '        return n',
      'one = fill()',
      'total = one + sum(fill() for _ in range(127))',
      'print(one, total)',
    ].join('\n'),
    { timeout_seconds: 60 },
  );
  assert.equal(r.return_code, 0, r.stderr);
  const [one, total] = r.stdout.split(' ').map(Number) as [number, number];
  t.diagnostic(`one connection alone: ${(one / MiB).toFixed(1)} MiB; 128 connections: ${(total / MiB).toFixed(1)} MiB; session limit ${SESSION_MEMORY_BYTES / MiB} MiB`);
  // TCP may always queue one packet on a socket with nothing queued, to make progress:
  // past the limit, 256 sockets may each still take one, a few KiB on the sandbox's
  // loopback (spec.ts SandboxNetwork; #K11).
  const slack = 256 * 16 * 1024;
  // (v1: TCP's own limit, below the memory one, is the bound to cross; v2: the memory
  // limit, which 128 connections of the namespace's largest buffers do not reach: only
  // that they are charged to it is checked)
  if (!cg.v2) {
    const tcpLimit = await num(`${cg.memory}/memory.kmem.tcp.limit_in_bytes`);
    assert.ok(one * 128 > 2 * (tcpLimit + slack), `the attack could hold more than the TCP limit without it (${one} bytes per connection)`);
  }
  assert.ok(total <= SESSION_MEMORY_BYTES + slack, `the session's sockets hold ${total} bytes, past its ${SESSION_MEMORY_BYTES}`);
  if (!cg.v2) {
    const leaf = cg.memory!;
    const limit = await num(`${leaf}/memory.kmem.tcp.limit_in_bytes`);
    assert.ok(limit <= (await num(`${leaf}/memory.limit_in_bytes`)), "the TCP limit is at most the session's memory limit (#K9)");
    assert.ok(sameMiB(limit, await tcpCapMiB(S.server)), `the TCP limit ${limit} is the one /health states (its part of tcp_mem, #K9)`);
    const peak = await num(`${leaf}/memory.kmem.tcp.max_usage_in_bytes`);
    t.diagnostic(`memory.kmem.tcp: limit ${limit}, max usage ${peak}, failcnt ${await num(`${leaf}/memory.kmem.tcp.failcnt`)}`);
    assert.ok(peak > limit / 2, `TCP buffers are charged to the session (max usage ${peak})`);
    assert.ok(peak <= limit + slack, `TCP buffers stopped at the limit: max usage ${peak}, limit ${limit}`);
  } else {
    const sock = await stat(`${cg.memory}/memory.stat`, 'sock');
    t.diagnostic(`memory.stat sock ${sock}`);
    assert.ok(sock > total / 2, `socket buffers are charged to the session's memory cgroup (sock ${sock})`);
  }
  await finishCase(S, a, [cg.marker]);
});

/** Opens `n` loopback TCP connections (the largest buffers the namespace allows) and
 * writes to each until the kernel says EAGAIN, keeping them all (`held`); prints what the
 * first one alone took, then the total. */
const fillTcp = (n: number) =>
  [
    'import socket',
    'ls = socket.socket()',
    'ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)',
    "ls.bind(('127.0.0.1', 0))",
    'ls.listen(256)',
    'held = []',
    'def fill():',
    '    c = socket.socket()',
    '    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)',
    '    c.connect(ls.getsockname())',
    '    s, _ = ls.accept()',
    '    held.append((c, s))',
    '    c.setblocking(False)',
    '    n = 0',
    '    try:',
    '        while True:',
    "            n += c.send(b'x' * 65536)",
    '    except OSError:',
    '        return n',
    'one = fill()',
    `total = one + sum(fill() for _ in range(${n - 1}))`,
    'print(one, total)',
  ].join('\n');

test("#K9 TCP buffers are host-wide (net.ipv4.tcp_mem): a session's TCP limit is its share, so one that fills its sockets stops there while another session's loopback transfer goes through", async (t) => {
  const pressure = Number((await readFile('/proc/sys/net/ipv4/tcp_mem', 'utf8')).trim().split(/\s+/)[1]) * 4096;
  // As many sessions as make a share of about 8 MiB: the same arithmetic as 256 sessions
  // on a host with a smaller tcp_mem (the defaults here, one server: 5.8 MiB each, not 2.6 GiB).
  const sessions = Math.max(2, Math.floor((pressure * 0.25) / (8 * MiB)));
  const T = await startSuite({ SANDBOX_MAX_SESSIONS: String(sessions), SANDBOX_WARM_POOL_SIZE: '0' });
  t.after(() => stopSuite(T));
  const h = await api(T.server, 'GET', '/health');
  const tcp = String(h.body.isolation.tcp_memory);
  t.diagnostic(`/health tcp_memory: ${tcp}`);
  const a = await attacker(T, t);
  const cg = await sessionCgroups(a.id, T);
  assert.ok(cg.memory, 'the session has a memory cgroup');
  if (cg.v2) {
    // (no TCP limit of its own on v2: /health says what bounds it)
    assert.match(tcp, /^a session's TCP buffers are bounded by its memory limit/);
    await finishCase(T, a, [cg.marker]);
    return;
  }
  // The session's part: at most a 1/sessions part of the server's, which depends on the
  // other servers on the host now (other test files) and what they need (serverBudget).
  assert.match(
    tcp,
    new RegExp(
      `^TCP buffers capped at [\\d.]+ MiB per session \\(a 1/${sessions} part of this server's part \\([\\d.]+ MiB(, after \\d+ older servers? on the host)?\\) of the host's TCP pressure threshold\\)`,
    ),
  );
  const cap = await num(`${cg.memory}/memory.kmem.tcp.limit_in_bytes`);
  assert.ok(sameMiB(cap, await tcpCapMiB(T.server)), `the session's TCP limit ${cap} is the one /health states`);
  assert.ok(cap < 16 * MiB, 'less than a session may want: its part of the host is the bound');
  const parent = cg.memory.replace(/\/box_[0-9a-f]+$/, '');
  const all = await num(`${parent}/memory.kmem.tcp.limit_in_bytes`);
  assert.equal(all, cap * sessions, 'the parent holds all sessions to the sum of their shares');
  assert.ok(all <= pressure / 4 || cap === MiB, 'which is within a quarter of the pressure point, the most one server takes (unless at the 1 MiB floor)');
  // 32 connections, each written until EAGAIN: alone, each holds a few MiB.
  const r = await py(T.server, a.id, fillTcp(32), { timeout_seconds: 60 });
  assert.equal(r.return_code, 0, r.stderr);
  const [one, total] = r.stdout.split(' ').map(Number) as [number, number];
  // (past the limit TCP still queues one packet per socket to make progress: both ends of
  // each connection are the session's; a few KiB each on the sandbox's loopback, #K11)
  const slack = 32 * 2 * 16 * 1024;
  t.diagnostic(`one connection: ${(one / MiB).toFixed(1)} MiB; 32 connections: ${(total / MiB).toFixed(1)} MiB; the session's share ${(cap / MiB).toFixed(1)} MiB`);
  assert.ok(one * 32 > 2 * (cap + slack), `the attack could hold more than the share without it (${one} bytes per connection)`);
  assert.ok(total <= cap + slack, `the session's sockets hold ${total} bytes, past its share of ${cap}`);
  // Meanwhile the victim moves 16 MiB through a loopback connection of its own.
  const v = await py(
    T.server,
    T.victim,
    [
      'import socket, threading',
      'ls = socket.socket()',
      "ls.bind(('127.0.0.1', 0))",
      'ls.listen(1)',
      'got = []',
      'def receive():',
      '    s, _ = ls.accept()',
      '    n = 0',
      '    while b := s.recv(1 << 16):',
      '        n += len(b)',
      '    got.append(n)',
      'th = threading.Thread(target=receive)',
      'th.start()',
      'c = socket.create_connection(ls.getsockname())',
      "c.sendall(b'x' * (16 << 20))",
      'c.close()',
      'th.join(30)',
      'print(got)',
    ].join('\n'),
    { timeout_seconds: 60 },
  );
  assert.equal(v.return_code, 0, v.stderr);
  assert.equal(v.stdout, `[${16 * MiB}]`, "the victim's transfer arrives whole");
  await finishCase(T, a, [cg.marker]);
});

test('socket memory: UDP and Unix socket buffers a session fills are charged to its cgroup too (v1: UDP to the TCP counter, Unix to memory)', async (t) => {
  const h = await api(S.server, 'GET', '/health');
  if (!BOUNDED.test(String(h.body.isolation.socket_memory))) return; // (the case above checks what /health says)
  const a = await attacker(S, t);
  const cg = await sessionCgroups(a.id);
  const leaf = cg.memory!;
  const udpFile = cg.v2 ? 'memory.current' : 'memory.kmem.tcp.usage_in_bytes';
  const unixFile = cg.v2 ? 'memory.current' : 'memory.usage_in_bytes';
  // UDP: 100 sockets whose receive queues are filled and never read; what they hold is
  // what the kernel reports per socket (/proc/net/udp rx_queue, the sandbox's own network).
  const udp0 = await num(`${leaf}/${udpFile}`);
  const u = await py(
    S.server,
    a.id,
    [
      'import socket',
      'udp = []',
      'for i in range(100):',
      '    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
      "    r.bind(('127.0.0.1', 0))",
      '    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
      '    for j in range(8):',
      "        w.sendto(b'x' * 60000, r.getsockname())",
      '    udp += [r, w]',
      "print(sum(int(l.split()[4].split(':')[1], 16) for l in open('/proc/net/udp').read().splitlines()[1:]))",
    ].join('\n'),
  );
  assert.equal(u.return_code, 0, u.stderr);
  const udpHeld = Number(u.stdout);
  const udpCharged = (await num(`${leaf}/${udpFile}`)) - udp0;
  t.diagnostic(`UDP receive queues hold ${udpHeld} bytes; ${udpFile} grew by ${udpCharged}`);
  assert.ok(udpHeld > 8 * MiB, `the UDP queues hold something (${udpHeld})`);
  assert.ok(udpCharged >= udpHeld / 2, `UDP buffers are charged to the session (${udpFile} grew by ${udpCharged} for ${udpHeld})`);
  // Unix: 100 socket pairs, each written until the kernel says EAGAIN, never read.
  const unix0 = await num(`${leaf}/${unixFile}`);
  const x = await py(
    S.server,
    a.id,
    [
      'import socket',
      'pairs = []',
      'n = 0',
      'for i in range(100):',
      '    r, w = socket.socketpair()',
      '    w.setblocking(False)',
      '    pairs.append((r, w))',
      '    try:',
      '        while True:',
      "            n += w.send(b'x' * 65536)",
      '    except OSError:',
      '        pass',
      'print(n)',
    ].join('\n'),
  );
  assert.equal(x.return_code, 0, x.stderr);
  const unixHeld = Number(x.stdout);
  const unixCharged = (await num(`${leaf}/${unixFile}`)) - unix0;
  t.diagnostic(`Unix socket pairs hold ${unixHeld} bytes; ${unixFile} grew by ${unixCharged}`);
  assert.ok(unixHeld > 8 * MiB, `the Unix sockets hold something (${unixHeld})`);
  assert.ok(unixCharged >= unixHeld / 2, `Unix socket buffers are charged to the session (${unixFile} grew by ${unixCharged} for ${unixHeld})`);
  await finishCase(S, a, [cg.marker]);
});

test('all sessions together: the parent cgroup holds SANDBOX_MAX_SESSIONS times the memory and processes of a session, also with a session limit gone', async (t) => {
  const h = await api(S.server, 'GET', '/health');
  const total = String(h.body.isolation.sessions_total);
  t.diagnostic(`/health sessions_total: ${total}`);
  if (!/cgroup/.test(String(h.body.isolation.memory_limit))) {
    assert.match(total, /not bounded as a whole/);
    return;
  }
  assert.match(total, new RegExp(`^memory ${(MAX_SESSIONS * SESSION_MEMORY_BYTES) / MiB} MiB, .*${MAX_SESSIONS * SESSION_PIDS} processes and threads for all sessions together`));
  assert.doesNotMatch(total, /not set/);
  const a = await attacker(S, t);
  const cg = await sessionCgroups(a.id);
  const parent = (dir: string) => dir.replace(/\/box_[0-9a-f]+$/, '');
  const memParent = parent(cg.memory!);
  // Read back: what the parent holds is what the settings promise.
  const memFile = cg.v2 ? 'memory.max' : 'memory.limit_in_bytes';
  assert.equal(await num(`${memParent}/${memFile}`), MAX_SESSIONS * SESSION_MEMORY_BYTES);
  if (!cg.v2) assert.equal(await num(`${memParent}/memory.kmem.tcp.limit_in_bytes`), MAX_SESSIONS * (await num(`${cg.memory}/memory.kmem.tcp.limit_in_bytes`)));
  const pidsParent = cg.pids ? parent(cg.pids) : null;
  if (pidsParent) assert.equal(await num(`${pidsParent}/pids.max`), MAX_SESSIONS * SESSION_PIDS);

  // A session whose own limits did not apply (lifted here, as root): the parent still
  // stops it. Processes first: past its own 48, short of the parent's 96.
  if (cg.v2) {
    await writeFile(`${cg.memory}/memory.max`, 'max');
    await writeFile(`${cg.pids}/pids.max`, 'max');
  } else {
    await writeFile(`${cg.memory}/memory.memsw.limit_in_bytes`, '-1').catch(() => {});
    await writeFile(`${cg.memory}/memory.limit_in_bytes`, '-1');
    if (cg.pids) await writeFile(`${cg.pids}/pids.max`, 'max');
  }
  const marker = sleepMarker();
  if (pidsParent) {
    const p = await py(
      S.server,
      a.id,
      `import subprocess\nprocs = []\ntry:\n    for i in range(300):\n        procs.append(subprocess.Popen(['sleep', '${marker}']))\nexcept OSError as e:\n    print(len(procs), type(e).__name__)\nfor p in procs:\n    p.kill()\n    p.wait()`,
      { timeout_seconds: 60 },
    );
    const m = /^(\d+) BlockingIOError/.exec(p.stdout);
    assert.ok(m, `the fork loop stopped with EAGAIN: ${p.stdout} ${p.stderr}`);
    const started = Number(m[1]);
    t.diagnostic(`processes started with the session's own limit gone: ${started}`);
    assert.ok(started > SESSION_PIDS && started < MAX_SESSIONS * SESSION_PIDS, `stopped by the parent's ${MAX_SESSIONS * SESSION_PIDS}: ${started}`);
  }
  // Memory: five processes touching 80 MiB each (each under its RLIMIT_AS), 400 MiB in
  // all: the session goes past its own 145 MiB (gone), and the parent's 290 MiB stops it
  // (the kernel's OOM killer takes some of them).
  const eventsBefore = cg.v2 ? await stat(`${memParent}/memory.events`, 'max') : 0;
  const hog = 'b = bytearray(80 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(1); print("survived")';
  const r = await sh(S.server, a.id, `for i in 1 2 3 4 5; do python3 -c '${hog}' & done; wait`, { timeout_seconds: 60 });
  const survivors = (r.stdout.match(/survived/g) ?? []).length;
  t.diagnostic(`survivors ${survivors}; limit ${r.limit_exceeded}; stderr ${r.stderr.slice(0, 300)}`);
  assert.ok(survivors < 5, 'the parent cgroup stopped 400 MiB of touched memory');
  if (cg.v2) {
    assert.ok((await stat(`${memParent}/memory.events`, 'max')) > eventsBefore, "the parent's limit is what was hit");
  } else {
    // (a failed charge is not counted in failcnt when swap is accounted: the peaks tell)
    const leafPeak = await num(`${cg.memory}/memory.max_usage_in_bytes`);
    const parentPeak = await num(`${memParent}/memory.max_usage_in_bytes`);
    t.diagnostic(`peak usage: session ${leafPeak}, parent ${parentPeak}`);
    assert.ok(leafPeak > SESSION_MEMORY_BYTES, 'the session went past its own (lifted) limit');
    assert.ok(parentPeak <= MAX_SESSIONS * SESSION_MEMORY_BYTES, 'and no further than the parent let it');
  }
  assert.equal(r.limit_exceeded, 'memory');
  await finishCase(S, a, [cg.marker, marker]);
});

test("#K13 memory of all sessions together is held to SANDBOX_SESSIONS_MEMORY_MB (by default the server's part of the host's memory), whatever the sessions' own limits add up to", async (t) => {
  // Red team of issue 10: 256 sessions x 2.6 GiB allowed on a 24 GiB host; two sessions
  // pinned 4.9 GiB. Here four sessions of ~600 MiB each share 256 MiB.
  const T = await startSuite({
    SANDBOX_MAX_SESSIONS: '4',
    SANDBOX_WARM_POOL_SIZE: '0',
    SANDBOX_RUNNER_MEMORY_MB: '512',
    SANDBOX_WORKSPACE_MB: '64',
    SANDBOX_SHM_MB: '1',
    SANDBOX_SESSIONS_MEMORY_MB: '256',
  });
  t.after(() => stopSuite(T));
  const h = await api(T.server, 'GET', '/health');
  const total = String(h.body.isolation.sessions_total);
  t.diagnostic(`/health sessions_total: ${total}`);
  assert.match(total, /^memory 256 MiB,.*memory held to SANDBOX_SESSIONS_MEMORY_MB \(256 MiB, not 4 x 577 MiB/);
  // (4 x 65 MiB of disk, which no OOM kill frees, is more than 256 MiB: the start-up log says so)
  assert.match(T.server.logs(), /holds fewer than 4 sessions' disks \(65 MiB each/);
  const a = await attacker(T, t);
  const b = await attacker(T, t);
  const cg = await sessionCgroups(a.id, T);
  const parent = cg.memory!.replace(/\/box_[0-9a-f]+$/, '');
  const limitFile = cg.v2 ? 'memory.max' : 'memory.limit_in_bytes';
  assert.equal(await num(`${parent}/${limitFile}`), 256 * MiB, "the server's parent cgroup holds all sessions to 256 MiB");
  // Each session alone may hold 160 MiB; both together may not.
  const hold = "x = b'x' * (160 << 20)\nprint('held')";
  const first = await py(T.server, a.id, hold, { timeout_seconds: 60 });
  assert.equal(first.stdout, 'held', first.stderr);
  const second = await py(T.server, b.id, hold, { timeout_seconds: 60 });
  const again = await py(T.server, a.id, "print('a', len(x))", { timeout_seconds: 60 });
  t.diagnostic(`second: ${second.limit_exceeded} ${second.stderr.slice(0, 200)}; a again: ${again.stdout} restarted=${again.interpreter_restarted}`);
  // One of the two lost its memory: the second ran into the limit, or the kernel took the
  // first one's interpreter (its state is gone and its next call says so).
  const bothHeld = second.stdout === 'held' && again.stdout === `a ${160 << 20}` && !again.interpreter_restarted;
  assert.equal(bothHeld, false, 'the two sessions together held 320 MiB under a 256 MiB bound');
  if (!cg.v2) {
    const peak = await num(`${parent}/memory.max_usage_in_bytes`);
    assert.ok(peak <= 256 * MiB, `the parent's peak usage ${peak} stays within its limit`);
  }
  // Each still works afterwards.
  for (const id of [a.id, b.id]) assert.equal((await py(T.server, id, 'print(1)', { timeout_seconds: 60 })).stdout, '1');
  await finishCase(T, a, [cg.marker]);
});

/**
 * Groups of host files that a session will be the first to read: files of /usr (bound
 * read-only into every sandbox: the page cache of the host's files), at least `bytes` a group,
 * none mapped by a process now (a mapped page stays cached whatever is dropped), and none
 * of the kinds other sessions read (libraries, Python sources, executables). The caller
 * drops their page cache just before (dropCache) so the session's reads charge them.
 */
async function coldFileGroups(groups: number, bytes: number): Promise<{ files: string[]; bytes: number }[]> {
  const skip = ['*.so', '*.so.*', '*.py', '*.pyc'].flatMap((n) => ['!', '-name', n]);
  const args = ['/usr/share', '/usr/lib', '-xdev', '-type', 'f', '-perm', '-o=r', '!', '-perm', '/111', '-size', '+256k', '-size', '-16M', ...skip, '-printf', '%s %p\\n'];
  // (find exits 1 on an unreadable folder; what it printed is still good)
  const found = await execFileP('/usr/bin/find', args, { maxBuffer: 64 * MiB }).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
  const mapped = new Set<string>();
  for (const pid of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    for (const line of (await readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '')).split('\n')) {
      const path = line.split(/\s+/).slice(5).join(' ');
      if (path.startsWith('/usr/')) mapped.add(path);
    }
  }
  const files = found.stdout
    .split('\n')
    .map((l) => /^(\d+) (\/[\w./+@-]+)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null && !mapped.has(m[2]!))
    .map((m) => ({ path: m[2]!, bytes: Number(m[1]) }))
    .sort((a, b) => (a.path < b.path ? -1 : 1));
  const out: { files: string[]; bytes: number }[] = [];
  let group = { files: [] as string[], bytes: 0 };
  for (const f of files) {
    if (out.length === groups) break;
    group.files.push(f.path);
    group.bytes += f.bytes;
    if (group.bytes >= bytes) {
      out.push(group);
      group = { files: [], bytes: 0 };
    }
  }
  return out;
}

/** Drops the page cache of `files` on the host (clean, unmapped pages only: posix_fadvise
 * DONTNEED through dd; nothing is written). */
async function dropCache(files: string[]): Promise<void> {
  for (const f of files) await execFileP('/usr/bin/dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/** Page cache of ordinary files charged to a memory cgroup (the file LRU lists of its
 * memory.stat, in bytes on v1 and v2; tmpfs pages are on the anon lists). */
const fileCacheBytes = async (dir: string) => (await stat(`${dir}/memory.stat`, 'active_file')) + (await stat(`${dir}/memory.stat`, 'inactive_file'));

/** Memory cgroups of the host, live and dying ("memory" line of /proc/cgroups: cgroup v1
 * counts a removed cgroup there until the kernel frees it). */
async function hostMemoryCgroups(): Promise<number> {
  const line = (await readFile('/proc/cgroups', 'utf8')).split('\n').find((l) => l.split(/\s+/)[0] === 'memory');
  return Number(line?.split(/\s+/)[2] ?? NaN);
}

const DYING_SESSIONS = 16;

// Guards removeLeaf() in src/sandbox/cgroups.ts: before a session's memory cgroup is
// removed, the pages still charged to it are reclaimed (v1 memory.force_empty, v2
// memory.reclaim). Without that, page cache of a host file the session was the first to
// read stays charged to the removed cgroup, which the kernel then keeps as a "dying"
// cgroup (its struct and per-CPU statistics) until memory pressure evicts those pages:
// one per session, host-wide (red team: 38 dying per 40 sessions). Checked: with that
// write left out, this case counted 16 more memory cgroups after its 16 sessions and
// failed (Linux 6.18, cgroup v1); with it, none.
test('#K15 extended attributes cannot be set (their values are kernel memory no tmpfs size counts): setxattr, lsetxattr and fsetxattr fail with EOPNOTSUPP on /dev/shm, /tmp and /workspace, from Python and bash, and copying files still works', async (t) => {
  const a = await attacker(S, t);
  const p = await py(
    S.server,
    a.id,
    [
      'import errno, os, shutil',
      'out = []',
      "for d in ('/dev/shm', '/tmp', '/workspace'):",
      "    f = d + '/x'",
      "    open(f, 'w').write('x')",
      '    fd = os.open(f, os.O_RDONLY)',
      "    for name, call in (('set', lambda: os.setxattr(f, 'user.a', b'v' * 60000)), ('lset', lambda: os.setxattr(f, 'user.a', b'v', follow_symlinks=False)), ('fset', lambda: os.setxattr(fd, 'user.a', b'v'))):",
      '        try:',
      '            call()',
      "            out.append(d + ' ' + name + ' set')",
      '        except OSError as e:',
      "            out.append(d + ' ' + name + ' ' + errno.errorcode[e.errno])",
      '    os.close(fd)',
      "    out.append(d + ' ' + str(os.listxattr(f)))",
      "shutil.copy2('/workspace/x', '/workspace/y')",
      "out.append(open('/workspace/y').read())",
      "print('\\n'.join(out))",
    ].join('\n'),
  );
  assert.equal(p.return_code, 0, p.stderr);
  // (EOPNOTSUPP and ENOTSUP are one number on Linux: Python names it ENOTSUP)
  const want = ['/dev/shm', '/tmp', '/workspace'].flatMap((d) => [`${d} set ENOTSUP`, `${d} lset ENOTSUP`, `${d} fset ENOTSUP`, `${d} []`]);
  assert.deepEqual(p.stdout.split('\n'), [...want, 'x']);
  const b = await sh(S.server, a.id, 'echo x > /tmp/z; setfattr -n user.a -v 1 /tmp/z 2>/dev/null; echo $?; cp -a /tmp/z /tmp/z2 && cat /tmp/z2');
  assert.equal(b.stdout, `${b.stdout.split('\n')[0]}\nx\n`, b.stderr);
  assert.notEqual(b.stdout.split('\n')[0], '0', 'setfattr (if installed) fails');
  await finishCase(S, a);
});

test("#K16 dnotify and file leases are refused (fcntl F_NOTIFY and F_SETLEASE: EINVAL), from Python and bash: no watch on the shared /usr sees other sessions read, and no lease makes the server fail to open a workspace file; locks on the session's own files still work", async (t) => {
  const a = await attacker(S, t);
  const p = await py(
    S.server,
    a.id,
    [
      'import errno, fcntl, os',
      'out = []',
      "d = os.open('/usr/lib', os.O_RDONLY | os.O_DIRECTORY)",
      "open('/workspace/leased.txt', 'w').write('kept')",
      "fd = os.open('/workspace/leased.txt', os.O_RDONLY)",
      "for name, call in (('notify', lambda: fcntl.fcntl(d, 1026, 1 | 2 | 4 | 0x80000000)), ('lease', lambda: fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)), ('flock', lambda: fcntl.flock(fd, fcntl.LOCK_EX)), ('getfl', lambda: fcntl.fcntl(fd, fcntl.F_GETFL))):",
      '    try:',
      '        call()',
      "        out.append(name + ' ok')",
      '    except OSError as e:',
      "        out.append(name + ' ' + errno.errorcode[e.errno])",
      "print(' '.join(out))",
    ].join('\n'),
  );
  assert.equal(p.stdout, 'notify EINVAL lease EINVAL flock ok getfl ok', p.stderr);
  // (the descriptor with the lock stays open in the interpreter: the server still reads the file)
  const got = await download(S.server, a.id, 'leased.txt');
  assert.equal(got.status, 200);
  assert.equal(got.body.toString(), 'kept');
  const b = await sh(S.server, a.id, 'python3 -c "import fcntl, os; fcntl.fcntl(os.open(\'/workspace/leased.txt\', os.O_RDONLY), 1024, fcntl.F_WRLCK)" 2>&1 | tail -1');
  assert.match(b.stdout, /Invalid argument/, b.stderr);
  await finishCase(S, a);
});

test('#K17 SysV shared memory is bounded by the size of /dev/shm and goes with its last process (shm_rmid_forced); the ipc limits cannot be changed from inside (/proc/sys is read-only)', async (t) => {
  // (red team: a detached SysV segment outlived its process and was mapped by none, so
  // neither RLIMIT_AS nor the OOM killer saw it: one session pinned 2.3 GiB)
  const a = await attacker(S, t);
  const p = await py(
    S.server,
    a.id,
    [
      'import ctypes, errno, os, subprocess, sys',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'libc.shmat.restype = ctypes.c_void_p',
      'libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]',
      'libc.shmdt.argtypes = [ctypes.c_void_p]',
      'def get(size):',
      '    sid = libc.shmget(0, size, 0o1000 | 0o600)',
      '    return sid if sid >= 0 else errno.errorcode[ctypes.get_errno()]',
      'out = []',
      "out.append('2MiB ' + str(get(2 << 20)))",
      'first = get(1 << 20)',
      "out.append('1MiB ' + ('ok' if isinstance(first, int) else first))",
      'addr = libc.shmat(first, None, 0); ctypes.memset(addr, 1, 1 << 20)',
      "out.append('second ' + str(get(1 << 20)))",
      // detached by its last process, a segment goes (shm_rmid_forced); so does one whose
      // process ends while it is attached
      'libc.shmdt(ctypes.c_void_p(addr))',
      "code = 'import ctypes; l = ctypes.CDLL(None); l.shmat.restype = ctypes.c_void_p; l.shmat(l.shmget(0, 4096, 0o1000 | 0o600), None, 0)'",
      'subprocess.run([sys.executable, "-c", code], check=True)',
      "out.append('left ' + str(len(open('/proc/sysvipc/shm').read().splitlines()) - 1))",
      "for key in ('kernel/shmmax', 'kernel/shm_rmid_forced', 'kernel/msgmni'):",
      '    try:',
      "        open('/proc/sys/' + key, 'w').write('0')",
      "        out.append(key + ' written')",
      '    except OSError as e:',
      "        out.append(key + ' ' + errno.errorcode[e.errno])",
      "print('\\n'.join(out))",
    ].join('\n'),
  );
  assert.equal(p.stdout, ['2MiB EINVAL', '1MiB ok', 'second ENOSPC', 'left 0', 'kernel/shmmax EROFS', 'kernel/shm_rmid_forced EROFS', 'kernel/msgmni EROFS'].join('\n'), p.stderr);
  const b = await sh(S.server, a.id, 'cat /proc/sys/kernel/shm_rmid_forced /proc/sys/kernel/shmall; echo 1 > /proc/sys/kernel/shmmni && echo written');
  assert.equal(b.stdout, '1\n256\n', b.stderr);
  assert.match(b.stderr, /Read-only file system/);
  await finishCase(S, a);
});

test('#K14 deleted sessions leave no dying memory cgroups: page cache a session was the first to read, and its tmpfs files, are reclaimed with its cgroup', async (t) => {
  const h = await api(S.server, 'GET', '/health');
  if (!/cgroup/.test(String(h.body.isolation.memory_limit))) {
    t.diagnostic(`no memory cgroup per session here: ${h.body.isolation.memory_limit}`);
    return;
  }
  const groups = await coldFileGroups(DYING_SESSIONS, 4 * MiB);
  assert.equal(groups.length, DYING_SESSIONS, `${DYING_SESSIONS} groups of 4 MiB of unmapped files under /usr/share and /usr/lib to read`);
  // Counted where the kernel can say it per subtree (v2: the server's parent cgroup's
  // nr_dying_descendants), else host-wide (v1: /proc/cgroups, which other test files
  // running at once move too: the baseline is taken with no session of this case alive,
  // and the check allows a quarter of the sessions).
  const hostBefore = await hostMemoryCgroups();
  let dying: () => Promise<number> = async () => (await hostMemoryCgroups()) - hostBefore;
  for (const [i, group] of groups.entries()) {
    const a = await attacker(S, t);
    const cg = await sessionCgroups(a.id);
    assert.ok(cg.memory, 'the session has a memory cgroup');
    if (i === 0 && cg.v2) {
      const parent = cg.memory.replace(/\/box_[0-9a-f]+$/, '');
      const parentBefore = await stat(`${parent}/cgroup.stat`, 'nr_dying_descendants');
      dying = async () => (await stat(`${parent}/cgroup.stat`, 'nr_dying_descendants')) - parentBefore;
    }
    await dropCache(group.files);
    const cached = await fileCacheBytes(cg.memory);
    // files on its tmpfs (/workspace, /tmp) and the first read of host files
    const r = await sh(
      S.server,
      a.id,
      `head -c 4M /dev/urandom > /workspace/k14 && cp /workspace/k14 /tmp/k14 && cat ${group.files.map((f) => `'${f}'`).join(' ')} > /dev/null && echo read`,
    );
    assert.equal(r.stdout.trim(), 'read', r.stderr);
    // The premise: the host files' pages are charged to this session (else its cgroup
    // would have nothing to be kept dying by, and the case could not fail).
    const charged = (await fileCacheBytes(cg.memory)) - cached;
    assert.ok(
      charged >= group.bytes / 2,
      `the session's memory cgroup was charged ${charged} bytes of page cache for the ${group.bytes} bytes it read first (${group.files.join(' ')})`,
    );
    await finishCase(S, a, [cg.marker]);
  }
  // Every cgroup is removed by now (finishCase saw each session's folder go, which is
  // removed after its cgroup); the kernel frees a removed cgroup's memory asynchronously:
  // counted again a bounded number of times until the count is down.
  const allowed = DYING_SESSIONS / 4;
  let grown = await dying();
  for (let tries = 0; tries < 50 && grown > allowed; tries++) {
    await new Promise((r) => setTimeout(r, 200));
    grown = await dying();
  }
  t.diagnostic(`memory cgroups after ${DYING_SESSIONS} sessions that read ${groups.reduce((n, g) => n + g.bytes, 0)} bytes of host files first: ${grown >= 0 ? '+' : ''}${grown}`);
  assert.ok(grown <= allowed, `${grown} more memory cgroups (dying) after ${DYING_SESSIONS} deleted sessions, more than ${allowed}`);
});

test("#K8 processes of all sessions together: the limit in force is reported; once no process can be forked (here the server's parent pids cgroup is full), an interpreter restart and a create answer 503 with Retry-After, never 500, and a bash command says it did not run", async (t) => {
  const h = await api(S.server, 'GET', '/health');
  const processes = String(h.body.isolation.processes);
  t.diagnostic(`/health processes: ${processes}`);
  // (2 sessions x 48 fit in any server's share of a host's pid_max: the limit stays as configured)
  assert.match(
    processes,
    new RegExp(
      `^at most ${SESSION_PIDS} per session \\(SANDBOX_SESSION_PIDS_MAX\\); ${MAX_SESSIONS * SESSION_PIDS} for all sessions together, within this server's part \\(\\d+(, after \\d+ older servers? on the host)?\\) of the host's \\d+ tasks`,
    ),
  );
  const a = await attacker(S, t);
  const cg = await sessionCgroups(a.id);
  if (!cg.pids) {
    assert.match(processes, /not enforced per session \(no pids cgroup\)/);
    await finishCase(S, a, [cg.marker]);
    return;
  }
  // What a host out of pids does to every fork (EAGAIN), done to this server's sessions
  // only: the parent cgroup's limit set to what it holds now, and restored after.
  const parentDir = cg.pids.replace(/\/box_[0-9a-f]+$/, '');
  const limitFile = `${parentDir}/pids.max`;
  const saved = (await readFile(limitFile, 'utf8')).trim();
  const restore = () => writeFile(limitFile, saved);
  t.after(restore);
  /** The limit set to what the parent holds now, less `freed` (the tasks of a sandbox about to end). */
  const fill = async (freed = 0) => writeFile(limitFile, String((await num(`${parentDir}/pids.current`)) - freed));
  const run = (id: string, tool: string, input: object) => api(S.server, 'POST', `/sessions/${id}/exec`, { tool, input });
  const busy = (r: { status: number; headers: Headers; body: { code?: string; detail?: unknown } }, what: string) => {
    assert.equal(r.status, 503, `${what}: ${r.status} ${JSON.stringify(r.body)}`);
    assert.equal(r.body.code, 'SBX_SERVER_BUSY', what);
    assert.match(String(r.body.detail), /cannot start more processes|refused it memory/, what);
    assert.match(r.headers.get('retry-after') ?? '', /^[1-9]\d*$/, `${what}: Retry-After`);
  };
  // (what the attacker's interpreter holds is freed when it ends below: not room for a new one)
  await fill(await num(`${cg.pids}/pids.current`));
  const forks = await run(a.id, 'code_execution', { code: "import subprocess\ntry:\n    subprocess.run(['true'])\nexcept OSError as e:\n    print(type(e).__name__)" });
  assert.equal(forks.status, 200);
  assert.equal(forks.body.result_block.content.stdout, 'BlockingIOError', 'a fork in the session fails with EAGAIN');
  const crash = await run(a.id, 'code_execution', { code: 'import os\nos._exit(3)' });
  assert.equal(crash.status, 200, JSON.stringify(crash.body));
  busy(await run(a.id, 'code_execution', { code: 'print(1)' }), 'an exec whose interpreter must restart');
  const bash = await run(a.id, 'bash_code_execution', { command: 'echo ran' });
  assert.equal(bash.status, 200, JSON.stringify(bash.body));
  assert.notEqual(bash.body.result_block.content.return_code, 0, 'the command could not start');
  assert.doesNotMatch(bash.body.result_block.content.stdout, /ran/);
  await restore();
  const back = await run(a.id, 'code_execution', { code: 'print(2)' });
  assert.equal(back.status, 200, JSON.stringify(back.body));
  assert.equal(back.body.result_block.content.stdout, '2', 'the interpreter restarts once processes are free again');
  await finishCase(S, a, [cg.marker]);
  // A create (one session left, room for one more) while nothing can be forked.
  await fill();
  busy(await api(S.server, 'POST', '/sessions', {}), 'a create');
  await restore();
  const c = await api(S.server, 'POST', '/sessions', {});
  assert.equal(c.status, 201, JSON.stringify(c.body));
  // A box made while nothing could be forked (the pool's refill) was not switched to
  // bubblewrap for it: the session's init is the template's (bubblewrap's /proc/1 is empty).
  const made = await py(S.server, c.body.session_id, "import os\nprint(len(os.listdir('/proc/1')) > 0)");
  assert.equal(made.stdout, 'True', `the session after the shortage is forked from the template: ${made.stderr}`);
  assert.equal((await api(S.server, 'DELETE', `/sessions/${c.body.session_id}`)).status, 204);
  // (the server writes its log without blocking: the lines reach us after the answers)
  assert.ok(await waitFor(async () => /"status":503\b/.test(S.server.logs()), 30_000), `the access log has the 503s: ${S.server.logs().slice(-2000)}`);
  assert.doesNotMatch(S.server.logs(), /"status":500\b/, 'and no 500 anywhere');
});

/** Opens ptys until the kernel refuses one, keeps them (`held`); prints how many and why it stopped. */
const OPEN_PTYS = [
  'import errno, os',
  'held = []',
  'try:',
  '    while len(held) < 5000:',
  '        held.append(os.openpty())',
  'except OSError as e:',
  '    print(len(held), errno.errorcode[e.errno])',
].join('\n');
const ONE_PTY = 'import os\nm, s = os.openpty()\nprint(os.ttyname(s))\nos.close(m)\nos.close(s)';

async function ptyCase(suite: Suite, t: TestContext, kind: 'template' | 'bubblewrap'): Promise<void> {
  const h = await api(suite.server, 'GET', '/health');
  assert.equal(h.body.isolation.interpreters, kind === 'template' ? 'forked from the template' : 'bubblewrap', 'the kind of sandbox under test');
  const a = await attacker(suite, t);
  const r = await py(suite.server, a.id, OPEN_PTYS);
  assert.equal(r.stdout, `${PTYS} ENOSPC`, `the session stops at its cap: ${r.stdout} ${r.stderr}`);
  // Meanwhile another session still gets one (from its own devpts).
  const v = await py(suite.server, suite.victim, ONE_PTY);
  assert.match(v.stdout, /^\/dev\/pts\/\d+$/, `the victim opens a pty while the attacker holds ${PTYS}: ${v.stdout} ${v.stderr}`);
  // A bash command of the attacker: in the template's sandbox it shares the interpreter's
  // devpts (the cap is the session's); in bubblewrap, beside the living interpreter, it
  // has no pty at all (a devpts of its own would outlive it: #K10).
  const b = await sh(suite.server, a.id, `python3 -c '${OPEN_PTYS.replace(/'/g, '"')}'`);
  assert.equal(b.stdout, kind === 'template' ? '0 ENOSPC\n' : '0 EACCES\n', `a bash command of the session: ${b.stdout} ${b.stderr}`);
  // Released, they can be opened again.
  const again = await py(suite.server, a.id, `for m, s in held:\n    os.close(m)\n    os.close(s)\n${ONE_PTY}`);
  assert.match(again.stdout, /^\/dev\/pts\/\d+$/, again.stderr);
  await finishCase(suite, a);
}

test('ptys: a session opening ptys in a loop gets SANDBOX_SESSION_PTYS_MAX, the victim still opens one (template sandbox)', async (t) => {
  await ptyCase(S, t, 'template');
});

test('#K7 ptys: an interpreter that makes itself not dumpable (prctl PR_SET_DUMPABLE 0) still has its bash commands in its own devpts, under the one cap', async (t) => {
  const h = await api(S.server, 'GET', '/health');
  assert.equal(h.body.isolation.interpreters, 'forked from the template');
  const a = await attacker(S, t);
  // Before: opening /proc/<interpreter>/ns/* was a ptrace check the box's uid failed once
  // the interpreter was not dumpable, and each command fell back to a bubblewrap sandbox
  // with a devpts of its own (another SANDBOX_SESSION_PTYS_MAX, kept past the command's
  // end by a master passed out of it).
  const PTMX = "import os\nprint(os.stat('/dev/pts/ptmx').st_dev)";
  // (not dumpable: its /proc files belong to the host's root, seen inside as nobody)
  const r = await py(S.server, a.id, `import ctypes, os\nprint(ctypes.CDLL(None).prctl(4, 0, 0, 0, 0), os.stat('/proc/self/stat').st_uid)\n${PTMX}\n${OPEN_PTYS}`);
  assert.equal(r.return_code, 0, r.stderr);
  const [prctl, dev, opened] = r.stdout.split('\n');
  assert.equal(prctl, '0 65534', `prctl(PR_SET_DUMPABLE, 0) took: ${r.stdout}`);
  assert.match(dev!, /^\d+$/, r.stdout);
  assert.equal(opened, `${PTYS} ENOSPC`, `the interpreter holds the session's ${PTYS}: ${r.stdout}`);
  const b = await sh(S.server, a.id, `tr '\\0' ' ' < /proc/1/cmdline; echo; python3 -c '${PTMX.replace(/'/g, '"')}'; python3 -c '${OPEN_PTYS.replace(/'/g, '"')}'`);
  assert.equal(b.return_code, 0, b.stderr);
  const [cmdline, bdev, bopened] = b.stdout.split('\n');
  assert.match(cmdline!, /zygote\.py.* commands $/, "the command runs in the interpreter's sandbox, not in a bubblewrap one of its own");
  assert.equal(bdev, dev, 'the same devpts instance as the interpreter');
  assert.equal(bopened, '0 ENOSPC', 'no pty past the cap the interpreter holds');
  await finishCase(S, a);
});

test('ptys: the same in bubblewrap sandboxes (SANDBOX_PYTHON_TEMPLATE=off), whose devpts is capped while bwrap waits; their bash commands have none', async (t) => {
  const B = await startSuite({ SANDBOX_PYTHON_TEMPLATE: 'off', SANDBOX_SESSION_PTYS_MAX: String(PTYS) });
  t.after(() => stopSuite(B));
  await ptyCase(B, t, 'bubblewrap');
});

/** Run in a bash command: opens ptys until the kernel refuses one (or there is no pty
 * device at all), passes every master to the socket the interpreter listens on, and
 * prints how many it passed and why it stopped. */
const PASS_PTYS = [
  'import errno, os, socket',
  'masters = []',
  'why = "none"',
  'try:',
  '    while len(masters) < 64:',
  '        m, s = os.openpty()',
  '        os.close(s)',
  '        masters.append(m)',
  'except OSError as e:',
  '    why = errno.errorcode[e.errno]',
  'with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:',
  '    c.connect("/workspace/ptys.sock")',
  '    for m in masters:',
  '        socket.send_fds(c, [b"m"], [m])',
  '    c.shutdown(socket.SHUT_WR)',
  '    c.recv(2)  # the interpreter has them all',
  'print(len(masters), why)',
].join('\n');

test("#K10 ptys without the template (SANDBOX_PYTHON_TEMPLATE=off): masters passed out of bash commands to the interpreter stay within the session's cap, and another session still opens one", async (t) => {
  const B = await startSuite({ SANDBOX_PYTHON_TEMPLATE: 'off', SANDBOX_SESSION_PTYS_MAX: String(PTYS) });
  t.after(() => stopSuite(B));
  const h = await api(B.server, 'GET', '/health');
  assert.equal(h.body.isolation.interpreters, 'bubblewrap', 'the kind of sandbox under test');
  const a = await attacker(B, t);
  // The interpreter keeps what commands send it, from a thread that serves a socket in
  // /workspace between calls.
  const LISTEN = [
    'import os, socket, threading',
    'held = []',
    'rx = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
    "rx.bind('/workspace/ptys.sock')",
    'rx.listen(16)',
    'def serve():',
    '    while True:',
    '        c, _ = rx.accept()',
    '        with c:',
    '            while True:',
    '                _, fds, _, _ = socket.recv_fds(c, 16, 16)',
    '                if not fds:',
    '                    break',
    '                held.extend(fds)',
    "            c.sendall(b'ok')",
    'threading.Thread(target=serve, daemon=True).start()',
    "print('ok')",
  ].join('\n');
  const listen = await py(B.server, a.id, LISTEN);
  assert.equal(listen.stdout, 'ok', listen.stderr);
  const write = await py(B.server, a.id, `open('/workspace/pass_ptys.py', 'w').write(${JSON.stringify(PASS_PTYS)})`);
  assert.equal(write.return_code, 0, write.stderr);
  // Before: each command had a devpts of its own, capped anew, kept by the masters it
  // passed out after it ended: 6 commands, 6 × SANDBOX_SESSION_PTYS_MAX ptys held.
  const COMMANDS = 6;
  const said: string[] = [];
  for (let i = 0; i < COMMANDS; i++) {
    const b = await sh(B.server, a.id, 'python3 /workspace/pass_ptys.py');
    assert.equal(b.return_code, 0, `command ${i}: ${b.stdout} ${b.stderr}`);
    said.push(b.stdout.trim());
  }
  const drain = 'print(len(held), len({os.fstat(m).st_dev for m in held}))';
  const r = await py(B.server, a.id, drain);
  assert.equal(r.return_code, 0, r.stderr);
  const [held, instances] = r.stdout.split(' ').map(Number);
  assert.ok(held! <= PTYS, `the session holds ${held} ptys from ${instances} devpts instances, more than its cap of ${PTYS} (the commands said: ${said.join('; ')})`);
  // (how: a bash command beside the living interpreter finds no pty device at all)
  assert.deepEqual(said, Array<string>(COMMANDS).fill('0 EACCES'), 'no command opened a pty');
  // The interpreter's own devpts still gives it the session's cap.
  const own = await py(B.server, a.id, OPEN_PTYS);
  assert.equal(own.stdout, `${PTYS - held!} ENOSPC`, own.stderr);
  // Another session still opens one.
  const v = await py(B.server, B.victim, ONE_PTY);
  assert.match(v.stdout, /^\/dev\/pts\/\d+$/, `the victim opens a pty: ${v.stdout} ${v.stderr}`);
  await finishCase(B, a);
});

/** Connections each written once (64 KiB, never read), once 16 connections filled until
 * EAGAIN took the session to its TCP limit: past the limit, each end may still take one
 * packet (a socket with nothing queued is let through), which the sandbox's loopback
 * (spec.ts SandboxNetwork: MTU 1500, one segment per GSO packet) keeps small. */
const CONNECTIONS = 400;
const ONE_WRITE_EACH = [
  'import socket',
  'ls = socket.socket()',
  "ls.bind(('127.0.0.1', 0))",
  'ls.listen(64)',
  'held = []',
  'for _ in range(16):',
  '    c = socket.create_connection(ls.getsockname())',
  '    s, _ = ls.accept()',
  '    c.setblocking(False)',
  '    held.append((c, s))',
  '    try:',
  '        while True:',
  "            c.send(b'x' * 65536)",
  '    except OSError:',
  '        pass',
  'full = len(held)',
  `for _ in range(${CONNECTIONS}):`,
  '    c = socket.create_connection(ls.getsockname())',
  '    s, _ = ls.accept()',
  '    c.setblocking(False)',
  '    try:',
  "        c.send(b'x' * 65536)",
  '    except OSError:',
  '        pass',
  '    held.append((c, s))',
  'print(len(held) - full)',
].join('\n');

/** lo's MTU and the namespace's somaxconn, seen from inside (bash runs it with python3). */
const LOOPBACK = [
  'import fcntl, socket, struct',
  's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
  "mtu = struct.unpack('16si20x', fcntl.ioctl(s.fileno(), 0x8921, struct.pack('16si20x', b'lo', 0)))[1]",
  "print(mtu, open('/proc/sys/net/core/somaxconn').read().strip())",
].join('\n');

/** Slack past the limit per connection: one page at each end, and the sender's packet (measured
 * 14 KiB on Linux 6.18; before, on a 65,536-byte MTU with 64 KiB GSO packets, 76 KiB). */
const SLACK_PER_CONNECTION = 16 * 1024;

async function tcpOverrunCase(suite: Suite, t: TestContext, kind: string): Promise<void> {
  const a = await attacker(suite, t);
  const cg = await sessionCgroups(a.id, suite);
  const inside = await py(suite.server, a.id, LOOPBACK);
  assert.equal(inside.stdout.trim(), '1500 64', `${kind}: lo's MTU and somaxconn inside are the spec's`);
  const bash = await sh(suite.server, a.id, `python3 -c "${LOOPBACK.replace(/"/g, '\\"')}"`);
  assert.equal(bash.stdout.trim(), '1500 64', `${kind}: a bash command sees the same loopback`);
  if (!cg.memory || cg.v2) {
    t.diagnostic(`${kind}: no cgroup v1 TCP limit here; only the loopback is checked`);
    await finishCase(suite, a, [cg.marker]);
    return;
  }
  const r = await py(suite.server, a.id, ONE_WRITE_EACH, { timeout_seconds: 60 });
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal(r.stdout.trim(), String(CONNECTIONS));
  const limit = await num(`${cg.memory}/memory.kmem.tcp.limit_in_bytes`);
  const peak = await num(`${cg.memory}/memory.kmem.tcp.max_usage_in_bytes`);
  const slack = CONNECTIONS * SLACK_PER_CONNECTION;
  t.diagnostic(
    `${kind}: ${CONNECTIONS} connections took ${(peak / MiB).toFixed(1)} MiB of TCP memory at most; limit ${(limit / MiB).toFixed(1)} MiB, + slack ${(slack / MiB).toFixed(1)} MiB`,
  );
  assert.ok(peak <= limit + slack, `${kind}: the session's TCP memory reached ${peak} bytes, past its limit ${limit} + ${slack}`);
  await finishCase(suite, a, [cg.marker]);
}

test("#K11 TCP past the limit: a session's many connections, each written once and never read, stay within its TCP limit plus a small slack per connection (template interpreter and its bash command)", async (t) => {
  await tcpOverrunCase(S, t, 'template');
});

test('#K11 the same in bubblewrap sandboxes (SANDBOX_PYTHON_TEMPLATE=off), whose network namespace is set up while bwrap waits', async (t) => {
  const B = await startSuite({ SANDBOX_PYTHON_TEMPLATE: 'off', SANDBOX_RUNNER_NOFILE: '1024' });
  t.after(() => stopSuite(B));
  await tcpOverrunCase(B, t, 'bubblewrap');
});

/** Orphans: client sockets filled against a peer that never reads (an unaccepted
 * connection with a 1-byte receive buffer), then closed, on LISTENERS listeners; a connect
 * whose listener's queue is full times out and moves on. Prints the connections made, the
 * orphans of this network namespace right after (no inode, FIN_WAIT1/FIN_WAIT2/LAST_ACK/
 * CLOSING, not a time-wait entry) and what TCP_LINGER2 gives. */
const LISTENERS = 4;
const PER_LISTENER = 300;
const ORPHANS = [
  'import errno, socket',
  'def orphans():',
  '    n = 0',
  "    for line in open('/proc/net/tcp').read().splitlines()[1:]:",
  '        f = line.split()',
  "        if f[3] in ('04', '05', '09', '0B') and f[9] == '0' and not f[5].startswith('03'):",
  '            n += 1',
  '    return n',
  'made = 0',
  'keep = []',
  `for _ in range(${LISTENERS}):`,
  '    ls = socket.socket()',
  '    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)',
  "    ls.bind(('127.0.0.1', 0))",
  '    ls.listen(4096)',
  '    keep.append(ls)',
  `    for _ in range(${PER_LISTENER}):`,
  '        c = socket.socket()',
  '        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)',
  '        c.settimeout(0.25)',
  '        try:',
  '            c.connect(ls.getsockname())',
  '        except OSError:',
  '            c.close()',
  '            break',
  '        c.setblocking(False)',
  '        try:',
  '            while True:',
  "                c.send(b'x' * 4096)",
  '        except OSError:',
  '            pass',
  '        c.close()',
  '        made += 1',
  'peak = orphans()',
  'try:',
  '    socket.socket().setsockopt(socket.IPPROTO_TCP, 8, 120)',
  "    linger2 = 'ok'",
  'except OSError as e:',
  '    linger2 = errno.errorcode[e.errno]',
  'print(made, peak, linger2)',
].join('\n');

test('#K12 TCP orphans are counted host-wide (net.ipv4.tcp_max_orphans): a session holds at most one listen backlog of them per listening socket (somaxconn 64 in its namespace), and TCP_LINGER2 is refused', async (t) => {
  const a = await attacker(S, t);
  const r = await py(S.server, a.id, ORPHANS, { timeout_seconds: 60 });
  assert.equal(r.return_code, 0, r.stderr);
  const [made, peak, linger2] = r.stdout.trim().split(' ') as [string, string, string];
  const bound = LISTENERS * (64 + 1);
  t.diagnostic(`connections made and closed: ${made}; orphans held right after: ${peak} (bound ${bound}; with the host's somaxconn 4096 it was ${LISTENERS * PER_LISTENER})`);
  assert.ok(Number(made) <= bound, `${made} connections were queued, past ${bound}`);
  assert.ok(Number(peak) <= bound, `the session held ${peak} orphans, past ${bound}`);
  assert.equal(linger2, 'EPERM', 'TCP_LINGER2 (which outlives tcp_fin_timeout) is refused');
  await finishCase(S, a, []);
});

/** Makes `n` loopback connections, the client closing first (its socket then waits in
 * TIME_WAIT); prints how many were made, how many TIME_WAIT sockets the namespace holds
 * (/proc/net/sockstat), and what asking for an IPv6 flow label, attaching a socket filter,
 * joining a multicast group and loading a seccomp filter of its own give. */
const TIME_WAITS = (n: number) =>
  [
    'import errno, socket, struct',
    'ls = socket.socket()',
    "ls.bind(('127.0.0.1', 0))",
    'ls.listen(64)',
    'made = 0',
    `for _ in range(${n}):`,
    '    c = socket.socket()',
    '    c.connect(ls.getsockname())',
    '    a, _ = ls.accept()',
    '    c.close()',
    '    a.close()',
    '    made += 1',
    "tw = [l.split() for l in open('/proc/net/sockstat') if l.startswith('TCP:')][0]",
    'import ctypes',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'def outcome(f):',
    '    try:',
    '        f()',
    "        return 'ok'",
    '    except OSError as e:',
    '        return errno.errorcode[e.errno]',
    'def seccomp_filter():',
    '    insn = struct.pack("HBBI", 6, 0, 0, 0x7FFF0000)',  // ret ALLOW
    '    buf = ctypes.create_string_buffer(insn, len(insn))',
    '    prog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", 1, ctypes.addressof(buf)))',
    '    if libc.syscall(317, 1, 0, prog) < 0:',
    '        raise OSError(ctypes.get_errno(), "seccomp")',
    'u6 = lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)',
    "label = struct.pack('16sIBBHHHI', socket.inet_pton(socket.AF_INET6, '::1'), 0, 0, 255, 1, 0, 0, 0)",
    "bpf = ctypes.create_string_buffer(struct.pack('HBBI', 6, 0, 0, 0xFFFF))",
    "fprog = struct.pack('HxxxxxxQ', 1, ctypes.addressof(bpf))",
    "group = socket.inet_pton(socket.AF_INET6, 'ff05::1') + struct.pack('@I', 1)",
    'refused = {',
    "    'flow_label': outcome(lambda: u6().setsockopt(41, 32, label)),",
    "    'socket_filter': outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).setsockopt(socket.SOL_SOCKET, 26, fprog)),",
    "    'multicast_join': outcome(lambda: u6().setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)),",
    "    'seccomp_filter': outcome(seccomp_filter),",
    '}',
    "print(made, tw[tw.index('tw') + 1], ','.join(f'{k}={v}' for k, v in refused.items()))",
  ].join('\n');

test("#K20 kernel memory no cgroup counts: TIME_WAIT sockets are at most 1,024 in a sandbox's network namespace (tcp_max_tw_buckets); IPv6 flow labels (a host-wide pool), socket filters and the session's own seccomp filters (the host-wide BPF JIT budget) and multicast joins are refused", async (t) => {
  const a = await attacker(S, t);
  const r = await py(S.server, a.id, TIME_WAITS(3000), { timeout_seconds: 120 });
  const b = await sh(S.server, a.id, `python3 -c '${TIME_WAITS(10).replace(/'/g, '"')}'`, { timeout_seconds: 120 });
  const refused = 'flow_label=EPERM,socket_filter=EPERM,multicast_join=EPERM,seccomp_filter=EPERM';
  assert.equal(r.return_code, 0, r.stderr);
  const [made, tw, outcomes] = r.stdout.trim().split(' ') as [string, string, string];
  t.diagnostic(`connections: ${made}; TIME_WAIT sockets held: ${tw} (before the bound: one per connection, up to 131,072)`);
  assert.equal(made, '3000');
  assert.ok(Number(tw) <= 1024, `the namespace holds ${tw} TIME_WAIT sockets, past 1,024`);
  assert.equal(outcomes, refused, 'from the interpreter');
  assert.equal(b.stdout.trim().split(' ')[2], refused, `from a bash command: ${b.stdout} ${b.stderr}`);
  await finishCase(S, a, []);
});

/** Run anywhere (the host, a sandbox): for each path in argv, whether an exclusive flock
 * and a POSIX write lock could be taken now (the flock is taken and let go; the POSIX lock
 * is asked about, F_GETLK, which needs no write access). */
const LOCK_PROBE = [
  'import errno, fcntl, os, struct, sys',
  'out = []',
  'for p in sys.argv[1:]:',
  '    fd = os.open(p, os.O_RDONLY)',
  '    try:',
  '        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)',
  "        f = 'free'",
  '    except OSError as e:',
  '        f = errno.errorcode[e.errno]',
  "    held = struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0)))[0]",
  "    out.append(f + ' ' + ('free' if held == fcntl.F_UNLCK else 'posix-held'))",
  '    os.close(fd)',
  "print(' | '.join(out))",
].join('\n');

/** Files of the sandbox's /usr, /etc, driver folder and /dev, and where the host has them. */
const SYSTEM_FILES = [
  '/usr/bin/bash',
  '/usr/lib/python3.11/os.py',
  '/etc/ld.so.cache',
  '/opt/sandbox/driver.py',
  '/dev/null',
  '/dev/zero',
  '/dev/urandom',
  '/proc/sys/kernel/cap_last_cap',
];
const HOST_FILES = SYSTEM_FILES.map((p) => (p === '/opt/sandbox/driver.py' ? fileURLToPath(new URL('../../../sandbox-python/driver.py', import.meta.url)) : p));

/** A session holds a flock and a POSIX read lock on system files and device nodes: the host
 * and the other session can still take both kinds, while a process of the same sandbox
 * cannot. The device nodes still work, and their times cannot be set. */
async function systemLocksCase(suite: Suite, t: TestContext, victim: string): Promise<void> {
  const h = await api(suite.server, 'GET', '/health');
  assert.match(String(h.body.isolation.system_files), /overlaid in each sandbox/, 'this host mounts overlays in a user namespace (Linux 5.11 or later)');
  assert.match(String(h.body.isolation.device_nodes), /^each session's own/, 'a root server with CAP_MKNOD makes device nodes per session');
  const a = await attacker(suite, t);
  const held = await py(
    suite.server,
    a.id,
    [
      'import fcntl, json, os, subprocess, sys',
      `paths = ${JSON.stringify(SYSTEM_FILES)}`,
      '_held = []',
      'for p in paths:',
      '    fd = os.open(p, os.O_RDONLY)',
      '    fcntl.flock(fd, fcntl.LOCK_SH)',
      '    fd2 = os.open(p, os.O_RDONLY)',
      '    fcntl.lockf(fd2, fcntl.LOCK_SH)',
      '    _held += [fd, fd2]',
      `print(subprocess.run([sys.executable, '-c', ${JSON.stringify(LOCK_PROBE)}, *paths], capture_output=True, text=True).stdout.strip())`,
      "print(len(open('/dev/zero', 'rb').read(7)), open('/dev/null', 'w').write('x'))",
      // (the host-wide lock list, whose reads stalled the host's locking: an empty file)
      // (and the host's cgroup counts, which moved with every session made or deleted)
      "print(len(open('/proc/locks').read()) + len(open('/proc/cgroups').read()), os.stat('/proc/sys/vm/overcommit_memory').st_dev)",
      'try:',
      "    os.utime('/dev/null')",
      "    print('touched')",
      'except OSError as e:',
      '    print(e.errno)',
    ].join('\n'),
  );
  // (the probe can see a lock: in the same sandbox, they are there)
  // (/proc/sys is the sandbox's own proc's, read-only: not the host's inodes)
  const hostDev = String(statSync('/proc/sys/vm/overcommit_memory').dev);
  const lines = held.stdout.split('\n');
  assert.notEqual(lines[2]?.split(' ')[1], hostDev, held.stdout);
  assert.equal(
    [...lines.slice(0, 2), lines[2]?.split(' ')[0], lines[3]].join('\n'),
    [SYSTEM_FILES.map(() => 'EAGAIN posix-held').join(' | '), '7 1', '0', '30'].join('\n'),
    held.stderr,
  );
  const b = await sh(suite.server, a.id, 'cat /proc/locks /proc/cgroups | wc -c; stat -c %d /proc/sys/vm/overcommit_memory; echo 1 > /proc/sys/kernel/shmmni || echo refused');
  assert.deepEqual(b.stdout.split('\n').slice(0, 3), ['0', b.stdout.split('\n')[1], 'refused'], `a bash command has the same covers: ${b.stderr}`);
  assert.notEqual(b.stdout.split('\n')[1], hostDev, "a bash command's /proc/sys is not the host's");
  const { stdout: host } = await execFileP('/usr/bin/python3', ['-c', LOCK_PROBE, ...HOST_FILES]);
  assert.equal(host.trim(), HOST_FILES.map(() => 'free free').join(' | '), "the host sees none of the session's locks");
  const other = await py(
    suite.server,
    victim,
    `import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', ${JSON.stringify(LOCK_PROBE)}, *${JSON.stringify(SYSTEM_FILES)}], capture_output=True, text=True).stdout.strip())`,
  );
  assert.equal(other.stdout, SYSTEM_FILES.map(() => 'free free').join(' | '), `another session sees none of them: ${other.stderr}`);
  // Files reached through procfs links whatever the mount namespace (red team of
  // 2026-12-03): the interpreter's image, bwrap's init's stdin, the program's own stdin.
  // None may be a host inode: a lock on one was seen host-wide. (bwrap's init's image,
  // /proc/1/exe, is still the host's: docs/threat-model.md, "Known limits".)
  const links = await py(
    suite.server,
    a.id,
    [
      'import json, os',
      'seen = {}',
      "for p in ('/proc/self/exe', '/proc/1/fd/0', '/proc/self/fd/0'):",
      '    try:',
      '        st = os.stat(p)',
      "        seen[p] = f'{st.st_dev}:{st.st_ino}'",
      '    except OSError as e:',
      '        seen[p] = e.strerror',
      'print(json.dumps(seen))',
    ].join('\n'),
  );
  const inside = JSON.parse(links.stdout) as Record<string, string>;
  const hostInodes = ['/usr/bin/python3', '/dev/null'].map((p) => {
    const st = statSync(p);
    return `${st.dev}:${st.ino}`;
  });
  for (const [p, v] of Object.entries(inside)) assert.ok(!hostInodes.includes(v), `${p} inside is a host inode (${v}): ${links.stdout}`);
  assert.match(inside['/proc/self/exe'] ?? '', /^\d+:\d+$/, 'the interpreter sees its own image');
  await finishCase(suite, a);
}

test("#K18 locks on system files and device nodes are the sandbox's own (/usr, /etc and the driver are overlays per sandbox, /dev/null and its siblings the session's own nodes): a session's flock and POSIX locks on them are not seen by the host or another session, and the nodes' times cannot be set (template sandbox)", async (t) => {
  await systemLocksCase(S, t, S.victim);
});

test("#K18 the same in bubblewrap sandboxes (SANDBOX_PYTHON_TEMPLATE=off), whose overlays and /proc/sys cover are mounted while bwrap waits and whose device nodes cover bwrap's; with a small memory limit, math libraries run one thread and fork() works", async (t) => {
  // (256 MiB: an OpenBLAS worker thread of the preloaded numpy whose buffer did not fit
  // retried forever, and every fork() waited on it: red team of 2026-12-03)
  const B = await startSuite({ SANDBOX_PYTHON_TEMPLATE: 'off', SANDBOX_RUNNER_MEMORY_MB: '256', SANDBOX_PRELOAD_MODULES: 'numpy' });
  t.after(() => stopSuite(B));
  await systemLocksCase(B, t, B.victim);
  const a = await attacker(B, t);
  const r = await py(
    B.server,
    a.id,
    [
      'import os, subprocess, sys',
      "print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)",
      "print([subprocess.run(['true'], timeout=20).returncode for _ in range(3)])",
    ].join('\n'),
  );
  assert.equal(r.stdout, '1 True\n[0, 0, 0]', r.stderr);
  await finishCase(B, a);
});

/** What a session can do to its sandbox's pid 1 (red team of 2026-12-03: bubblewrap's
 * init runs as the session's uid and is dumpable; its /proc/1/mem was writable, and a
 * rewritten init outlived its sandbox's end). Prints one JSON object per process. */
const INIT_PROBE = [
  'import ctypes, errno, json, os',
  'libc = ctypes.CDLL(None, use_errno=True)',
  'def err(f):',
  '    try:',
  '        f()',
  "        return 'done'",
  '    except OSError as e:',
  '        return errno.errorcode[e.errno]',
  'def getfd():',
  '    pidfd = os.pidfd_open(1)',
  '    if libc.syscall(438, pidfd, 0, 0) < 0:',
  '        e = ctypes.get_errno()',
  '        raise OSError(e, os.strerror(e))',
  "out = {'mem': err(lambda: open('/proc/1/mem', 'r+b').close()), 'exe': err(lambda: os.readlink('/proc/1/exe')), 'fd': err(lambda: os.listdir('/proc/1/fd')), 'getfd': err(getfd)}",
  "out['listing'] = sorted(os.listdir('/proc/1'))[:3]",
  'print(json.dumps(out, sort_keys=True))',
].join('\n');

/** The interpreter and a bash command of `suite` cannot open their init's memory, image or
 * descriptors, nor take one by pidfd_getfd; `covered`: /proc/1 is an empty folder. */
async function initOutOfReachCase(suite: Suite, t: TestContext, covered: boolean): Promise<void> {
  const a = await attacker(suite, t);
  const p = await py(suite.server, a.id, INIT_PROBE);
  const b = await sh(suite.server, a.id, `python3 -c '${INIT_PROBE.replace(/'/g, '"')}'`);
  for (const [who, r] of [
    ['the interpreter', p],
    ['a bash command', b],
  ] as const) {
    assert.equal(r.return_code, 0, `${who}: ${r.stderr}`);
    const seen = JSON.parse(r.stdout) as Record<string, unknown>;
    const refused = covered ? 'ENOENT' : 'EACCES';
    assert.deepEqual(
      { mem: seen.mem, exe: seen.exe, fd: seen.fd, getfd: seen.getfd },
      { mem: refused, exe: refused, fd: refused, getfd: 'EPERM' },
      `${who} reached its init: ${r.stdout}`,
    );
    if (covered) assert.deepEqual(seen.listing, [], `${who}: bubblewrap's init's folder is covered: ${r.stdout}`);
  }
  await finishCase(suite, a);
}

test("#K19 the sandbox's init is out of reach: its memory, image and descriptors cannot be opened (it is not dumpable), and pidfd_getfd is refused (template sandbox)", async (t) => {
  await initOutOfReachCase(S, t, false);
});

test("#K19 the same in bubblewrap sandboxes (SANDBOX_PYTHON_TEMPLATE=off), whose init (bwrap's, the session's uid and dumpable) has its /proc/1 covered by an empty folder while bwrap waits", async (t) => {
  const B = await startSuite({ SANDBOX_PYTHON_TEMPLATE: 'off' });
  t.after(() => stopSuite(B));
  await initOutOfReachCase(B, t, true);
});
