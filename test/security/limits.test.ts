/**
 * Hostile inputs 25-28 of docs/threat-model.md (processes and lifecycle), plus the CPU-time and open-files
 * limits of the issue: each limit is crossed on purpose, and the result must carry
 * `limit_exceeded` with its kind and a plain-English stderr line naming the limit and its
 * setting. The limits are set low for this file so crossing them is quick and harmless:
 * 64 MiB of disk per session, 8 MiB per file, 16 MiB of /dev/shm, 2 CPU seconds per
 * process, 64 open files, 256 KiB of output per stream.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { waitFor } from '../helpers/server.js';
import { api, attacker, editor, finishCase, py, serverErrors, serverRssKb, sh, startSuite, stopSuite, upload, type Suite } from './support.js';

const MiB = 1024 * 1024;
const OUTPUT_CAP = 256 * 1024;
const BASH_READ_MAX_MB = 32;
let S: Suite;
let cgroupMemory = false;

before(async () => {
  S = await startSuite({
    SANDBOX_WORKSPACE_MB: '64',
    SANDBOX_RUNNER_FSIZE_MB: '8',
    SANDBOX_SHM_MB: '16',
    SANDBOX_RUNNER_CPU_SECONDS: '2',
    SANDBOX_RUNNER_NOFILE: '64',
    SANDBOX_RUNNER_MAX_OUTPUT_BYTES: String(OUTPUT_CAP),
    SANDBOX_BASH_OUTPUT_READ_MAX_MB: String(BASH_READ_MAX_MB),
  });
  const h = await api(S.server, 'GET', '/health');
  cgroupMemory = /cgroup/.test(String(h.body.isolation?.memory_limit ?? ''));
});

after(async () => {
  await stopSuite(S);
});

test('#25 memory: bytearray(8<<30), " "*10**11, np.ones((10**6,10**6)) -> MemoryError, limit "memory", state kept', async (t) => {
  const a = await attacker(S, t);
  await py(S.server, a.id, 'kept = 99');
  for (const code of ['bytearray(8 << 30)', "' ' * 10**11", 'import numpy as np\nnp.ones((10**6, 10**6))']) {
    const r = await py(S.server, a.id, code);
    assert.equal(r.return_code, 1, `${code}: ${r.stderr}`);
    assert.match(r.stderr, /MemoryError|Unable to allocate/, code);
    assert.equal(r.limit_exceeded, 'memory', `${code}: limit_exceeded`);
    assert.match(r.stderr, /memory.*SANDBOX_RUNNER_MEMORY_MB/, `${code}: a plain-English line names the limit`);
    assert.equal(r.interpreter_restarted, false);
    assert.equal((await py(S.server, a.id, 'print(kept)')).stdout, '99', `${code}: state kept`);
  }
  await finishCase(S, a);
});

test('#25 memory of the whole session: four processes touching 700 MiB each are bounded per session', async (t) => {
  // A server of its own with the default CPU limit: with this file's 2 CPU seconds the
  // hogs, reclaiming pages near the cgroup limit, could die of RLIMIT_CPU before the
  // cgroup's OOM killer picked one, and the case would test the CPU limit instead.
  const M = await startSuite({});
  t.after(() => stopSuite(M));
  const a = await attacker(M, t);
  // Each holds its memory until all four have touched theirs (a marker each), so they are
  // all resident at once however slowly a loaded machine runs them; 20 s only bounds the
  // wait of survivors whose sibling was killed.
  const hog =
    'import os, sys, time\nb = bytearray(700 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nopen("/tmp/touched-" + sys.argv[1], "w").close()\nend = time.monotonic() + 20\nwhile len([n for n in os.listdir("/tmp") if n.startswith("touched-")]) < 4 and time.monotonic() < end: time.sleep(0.05)\nprint("survived")';
  const r = await sh(M.server, a.id, `for i in 1 2 3 4; do python3 -c '${hog}' $i & done; wait`, { timeout_seconds: 60 });
  const survivors = (r.stdout.match(/survived/g) ?? []).length;
  t.diagnostic(`cgroup memory limit: ${cgroupMemory}; survivors: ${survivors}; limit: ${r.limit_exceeded}; stderr: ${r.stderr.slice(0, 2000)}`);
  if (cgroupMemory) {
    assert.ok(survivors < 4, 'a per-session memory limit stops 2.8 GiB of touched memory');
    assert.equal(r.limit_exceeded, 'memory');
    assert.match(r.stderr, /memory limit.*SANDBOX_RUNNER_MEMORY_MB|memory.*SANDBOX_RUNNER_MEMORY_MB/);
  } else {
    // Without a cgroup only RLIMIT_AS bounds each process: /health must not claim more.
    assert.equal(survivors, 4, 'without a cgroup each process gets its own RLIMIT_AS');
  }
  assert.equal((await py(M.server, a.id, 'print(1)')).stdout, '1', 'the session works after the memory kill');
  await finishCase(M, a);
});

test('#26 tmpfs caps: /tmp (session quota) and /dev/shm (16 MiB) -> ENOSPC; /, /dev, /usr, /etc, /opt -> read-only', async (t) => {
  const a = await attacker(S, t);
  const shm = await sh(S.server, a.id, 'for i in 1 2 3 4; do head -c 7M /dev/zero > /dev/shm/f$i || { echo "stopped at $i"; break; }; done; du -sk /dev/shm');
  assert.match(shm.stdout, /stopped at 3/, `/dev/shm is capped at 16 MiB: ${shm.stdout}`);
  assert.match(shm.stderr, /No space left on device/);
  const tmp = await sh(S.server, a.id, 'for i in $(seq 1 12); do head -c 7M /dev/zero > /tmp/f$i || { echo "stopped at $i"; break; }; done');
  assert.match(tmp.stdout, /stopped at (8|9|10)/, `/tmp shares the 64 MiB session quota: ${tmp.stdout}`);
  assert.equal(tmp.limit_exceeded, 'disk');
  assert.match(tmp.stderr, /disk space \(64 MiB.*SANDBOX_WORKSPACE_MB\)/);
  const ro = await sh(
    S.server,
    a.id,
    'for p in /x /dev/x /usr/x /etc/x /etc/passwd /opt/sandbox/x /opt/session-lib/x /bin/x; do touch $p 2>&1; done; echo pwned > /etc/passwd; mkdir /newdir; true',
  );
  assert.equal((ro.stdout.match(/Read-only file system/g) ?? []).length, 8, ro.stdout);
  assert.match(ro.stderr, /Read-only file system/);
  const pyRo = await py(
    S.server,
    a.id,
    "import errno\nres = []\nfor p in ('/x', '/dev/x', '/usr/lib/x'):\n    try:\n        open(p, 'w')\n    except OSError as e:\n        res.append(errno.errorcode[e.errno])\nprint(res)",
  );
  assert.equal(pyRo.stdout, "['EROFS', 'EROFS', 'EROFS']");
  await finishCase(S, a);
});

test('#27 disk fill of the workspace stops with a clear error; the victim still writes; the API answers 4xx, not 5xx', async (t) => {
  const a = await attacker(S, t);
  await py(S.server, a.id, 'kept = 5');
  const fill = await sh(S.server, a.id, 'for i in $(seq 1 20); do head -c 7M /dev/zero > /workspace/f$i || { echo "stopped at $i"; break; }; done');
  assert.match(fill.stdout, /stopped at/, 'the fill stopped');
  assert.match(fill.stderr, /No space left on device/);
  assert.equal(fill.limit_exceeded, 'disk');
  assert.match(fill.stderr, /disk space \(64 MiB for the workspace and \/tmp together, SANDBOX_WORKSPACE_MB\)/);
  const fa = await sh(S.server, a.id, 'fallocate -l 100G /workspace/huge; echo rc=$?');
  assert.doesNotMatch(fa.stdout, /rc=0/, 'fallocate of 100G fails');
  const p = await py(S.server, a.id, "with open('/workspace/more', 'wb') as f:\n    for i in range(100):\n        f.write(b'x' * (1 << 20))");
  assert.equal(p.return_code, 1);
  assert.equal(p.limit_exceeded, 'disk', p.stderr);
  assert.equal(p.interpreter_restarted, false);
  assert.equal((await py(S.server, a.id, 'print(kept)')).stdout, '5');
  // The file API on a full workspace: refused with a 4xx, never an internal error.
  const up = await upload(S.server, a.id, Buffer.alloc(4 * MiB, 0x61), { path: 'up.bin' });
  assert.equal(up.status, 413, `upload into a full workspace: ${up.status} ${JSON.stringify(up.body)}\n${serverErrors(S)}`);
  const ed = await editor(S.server, a.id, { command: 'create', path: 'ed.txt', file_text: 'y'.repeat(100_000) });
  assert.equal(ed.status, 200, `editor create in a full workspace: ${JSON.stringify(ed.body)}\n${serverErrors(S)}`);
  assert.equal(ed.return_code, 1);
  // Registering tools writes a module into the session's folder: a full disk is a 413 too
  // (found by a red-team review: it was a 500).
  const reg = await api(S.server, 'POST', `/sessions/${a.id}/programmatic-tools/register`, {
    callback_url: 'http://127.0.0.1:9/x',
    token: 'tok-123456',
    tools: [{ name: 'big', doc: 'd'.repeat(16_000) }, ...Array.from({ length: 300 }, (_, i) => ({ name: `t${i}`, doc: 'x'.repeat(4000) }))],
  });
  assert.equal(reg.status, 413, `register into a full disk: ${reg.status} ${JSON.stringify(reg.body)}`);
  // Other sessions are untouched.
  const v = await sh(S.server, S.victim, 'head -c 7M /dev/zero > /workspace/victim.bin && stat -c %s /workspace/victim.bin && rm /workspace/victim.bin');
  assert.equal(v.stdout, `${7 * MiB}\n`, `the victim still writes: ${v.stderr}`);
  // Freeing space makes the workspace usable again.
  const again = await sh(S.server, a.id, 'rm -f /workspace/f* /workspace/more && echo ok > /workspace/n && cat /workspace/n');
  assert.equal(again.stdout, 'ok\n');
  await finishCase(S, a);
});

test('#27b an upload refused for a full disk before its body has arrived: the client can finish sending, gets the 413, and the connection carries its next request', async (t) => {
  const a = await attacker(S, t);
  const fill = await sh(S.server, a.id, 'for i in $(seq 1 20); do head -c 7M /dev/zero > /workspace/f$i || break; done');
  assert.equal(fill.limit_exceeded, 'disk', fill.stderr);
  // 4 MiB announced, 1 MiB sent first: the disk is full, so the server refuses within that
  // MiB. (Before: the rest was never read, and the next request on the connection waited for
  // an answer that could not come: seen under load in #27.)
  const u = new URL(S.server.url);
  const boundary = 'sbx27b';
  const head = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`;
  const tail = `\r\n--${boundary}--\r\n`;
  const total = head.length + 4 * 1024 * 1024 + tail.length;
  const sock = net.connect(Number(u.port), u.hostname);
  t.after(() => sock.destroy());
  sock.on('error', () => {});
  let got = '';
  sock.on('data', (c: Buffer) => (got += c.toString('latin1')));
  sock.write(`POST /sessions/${a.id}/files HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${total}\r\n\r\n${head}`);
  sock.write(Buffer.alloc(1024 * 1024, 0x61));
  assert.ok(await waitFor(() => got.includes('\r\n\r\n'), 60_000), 'an answer arrives before the body is complete');
  assert.match(got, /^HTTP\/1\.1 413 /);
  // The rest of the body, then a second request on the same connection: it is answered.
  sock.write(Buffer.alloc(3 * 1024 * 1024, 0x61));
  sock.write(`${tail}GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  assert.ok(await waitFor(() => /HTTP\/1\.1 200 /.test(got), 60_000), `the next request on the connection is answered: ${got.slice(0, 300)}`);
  await finishCase(S, a);
});

test('file size limit (SANDBOX_RUNNER_FSIZE_MB=8): bash gets SIGXFSZ, Python EFBIG; limit "file_size"', async (t) => {
  const a = await attacker(S, t);
  const ok = await sh(S.server, a.id, 'head -c 7M /dev/zero > /workspace/ok && stat -c %s /workspace/ok');
  assert.equal(ok.stdout, `${7 * MiB}\n`);
  const b = await sh(S.server, a.id, 'head -c 20M /dev/zero > /workspace/big');
  assert.notEqual(b.return_code, 0);
  assert.equal(b.limit_exceeded, 'file_size', b.stderr);
  assert.match(b.stderr, /file size \(8 MiB per file, SANDBOX_RUNNER_FSIZE_MB\)/);
  await py(S.server, a.id, 'kept = 3');
  const p = await py(S.server, a.id, "open('/workspace/big2', 'wb').write(b'0' * (20 << 20))");
  assert.equal(p.return_code, 1);
  assert.match(p.stderr, /File too large|Errno 27/);
  assert.equal(p.limit_exceeded, 'file_size');
  assert.equal(p.interpreter_restarted, false);
  assert.equal((await py(S.server, a.id, 'print(kept)')).stdout, '3');
  const yes = await sh(S.server, a.id, 'yes > /workspace/yes');
  assert.equal(yes.limit_exceeded, 'file_size', 'yes > f stops at the file size limit');
  const size = await sh(S.server, a.id, 'stat -c %s /workspace/yes');
  assert.equal(size.stdout, `${8 * MiB}\n`);
  // The limit fired even when the command goes on afterwards (bash says so on stderr).
  const cont = await sh(S.server, a.id, 'yes > /workspace/yes3; echo went on');
  assert.match(cont.stderr, /File size limit exceeded/);
  assert.equal(cont.limit_exceeded, 'file_size', `a command that goes on after SIGXFSZ: ${JSON.stringify(cont.stderr)}`);
  await finishCase(S, a);
});

test('#28 output floods (20 MB on stdout, 100 MB in one line, 10 MB on stderr) are capped with a marker; server RSS stays bounded', async (t) => {
  const a = await attacker(S, t);
  const rss0 = await serverRssKb(S.server);
  const floods = [
    { tool: 'sh', code: "head -c 20000000 /dev/zero | tr '\\0' x", stream: 'stdout', total: 20_000_000 },
    { tool: 'sh', code: "head -c 10000000 /dev/zero | tr '\\0' e >&2", stream: 'stderr', total: 10_000_000 },
    { tool: 'py', code: "print('x' * 10**8, end='')", stream: 'stdout', total: 100_000_000 },
    { tool: 'py', code: "import sys\nfor i in range(200):\n    sys.stderr.write('e' * 100000)", stream: 'stderr', total: 20_000_000 },
  ] as const;
  for (const f of floods) {
    const t0 = performance.now();
    // (60 s: the backstop of a flood the server could not keep up with, not a speed check;
    // return code 0 below says each flood ran to its end, not into that limit)
    const r = f.tool === 'sh' ? await sh(S.server, a.id, f.code, { timeout_seconds: 60 }) : await py(S.server, a.id, f.code, { timeout_seconds: 60 });
    t.diagnostic(`${f.code}: ${Math.round(performance.now() - t0)} ms`);
    const text = f.stream === 'stdout' ? r.stdout : r.stderr;
    assert.equal(r.status, 200);
    assert.equal(r.return_code, 0, `${f.code}: the flood ran to its end (${JSON.stringify(r.stderr.slice(-300))})`);
    assert.ok(text.length >= OUTPUT_CAP && text.length < OUTPUT_CAP + 2048, `${f.code}: ${f.stream} is ${text.length} chars`);
    assert.match(text, /truncat/i, `${f.code}: a truncation marker`);
    assert.equal(r.limit_exceeded, 'output_bytes', f.code);
    const dropped = f.stream === 'stdout' ? r.body.stdout_dropped_bytes : r.body.stderr_dropped_bytes;
    assert.equal(dropped, f.total - OUTPUT_CAP, `${f.code}: dropped bytes are counted`);
  }
  const rss1 = await serverRssKb(S.server);
  t.diagnostic(`server RSS ${rss0} kB -> ${rss1} kB`);
  assert.ok(rss1 - rss0 < 100 * 1024, `server RSS grew by ${rss1 - rss0} kB during 150 MB of output`);
  assert.equal((await py(S.server, a.id, 'print(1)')).stdout, '1');
  await finishCase(S, a);
});

test('#28c a bash command that writes more than SANDBOX_BASH_OUTPUT_READ_MAX_MB in all (the server reads every byte) is killed with limit "output_bytes", on either stream or from a background writer; the next command runs', async (t) => {
  // (red team: `cat /dev/zero` made the server read 7 GB in 10 s, a core outside the
  // session's CPU share, for the whole timeout)
  const a = await attacker(S, t);
  for (const code of ['cat /dev/zero', 'yes e >&2', '(cat /dev/zero &); sleep 1000']) {
    const r = await sh(S.server, a.id, code, { timeout_seconds: 120 });
    assert.equal(r.status, 200);
    assert.equal(r.limit_exceeded, 'output_bytes', `${code}: rc ${r.return_code}, stderr tail ${JSON.stringify(r.stderr.slice(-300))}`);
    assert.equal(r.return_code, -1, code);
    assert.match(
      r.stderr,
      new RegExp(`more than ${BASH_READ_MAX_MB} MiB of output in all \\(SANDBOX_BASH_OUTPUT_READ_MAX_MB\\); the command and every process it started were killed`),
      code,
    );
    const dropped = Number(r.body.stdout_dropped_bytes) + Number(r.body.stderr_dropped_bytes);
    assert.ok(dropped >= BASH_READ_MAX_MB * MiB - 2 * OUTPUT_CAP, `${code}: ${dropped} bytes dropped`);
  }
  const next = await sh(S.server, a.id, 'head -c 3000000 /dev/zero | wc -c');
  assert.equal(next.stdout, '3000000\n', next.stderr);
  await finishCase(S, a);
});

test('CPU time (SANDBOX_RUNNER_CPU_SECONDS=2): busy loops in bash, a bash child and the REPL are stopped with limit "cpu"', async (t) => {
  const a = await attacker(S, t);
  for (const [tool, code] of [
    ['sh', 'while :; do :; done'],
    ['sh', "python3 -c 'while True: pass'"],
    ['py', 'while True: pass'],
  ] as const) {
    // No clock: limit "cpu" below says the CPU limit stopped it, not the wall clock (2 s of
    // CPU can take a while on a loaded machine: the 60 s wall clock is only a backstop).
    const r = tool === 'sh' ? await sh(S.server, a.id, code, { timeout_seconds: 60 }) : await py(S.server, a.id, code, { timeout_seconds: 60 });
    assert.notEqual(r.return_code, 0, code);
    assert.equal(r.limit_exceeded, 'cpu', `${code}: limit_exceeded (rc ${r.return_code}, stderr ${JSON.stringify(r.stderr)})`);
    assert.match(r.stderr, /CPU.*2.*SANDBOX_RUNNER_CPU_SECONDS/, `${code}: a plain-English line names the limit`);
    if (tool === 'py') assert.equal(r.interpreter_restarted, true);
  }
  const back = await py(S.server, a.id, 'print(1)');
  assert.equal(back.stdout, '1', `the REPL is back after a CPU kill: ${back.status} ${JSON.stringify(back.body).slice(0, 400)}\n${serverErrors(S)}`);
  await finishCase(S, a);
});

test('open files (SANDBOX_RUNNER_NOFILE=64): EMFILE at the limit, cannot be raised, the session survives fd exhaustion', async (t) => {
  const a = await attacker(S, t);
  const u = await sh(S.server, a.id, 'ulimit -n; ulimit -Hn; ulimit -n 4096; echo raise=$?');
  assert.match(u.stdout, /^64\n64\n/);
  assert.match(u.stdout, /raise=1/);
  const r = await py(S.server, a.id, "fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\nexcept OSError as e:\n    print(e.errno, len(fs) < 64)\nfs.clear()");
  assert.equal(r.stdout, '24 True', r.stderr);
  assert.equal((await py(S.server, a.id, 'print(1)')).stdout, '1');
  // Exhaustion kept across calls: the next call still runs (the driver keeps a reserve
  // of descriptors for its pipes), says which limit is reached, and keeps the state, so
  // the code can close its files.
  await py(S.server, a.id, "kept = 7\nhold = []\ntry:\n    while True:\n        hold.append(open('/dev/null'))\nexcept OSError:\n    pass");
  const next = await py(S.server, a.id, 'print(kept, len(hold) > 40)\nfor f in hold: f.close()\nhold = []', { timeout_seconds: 10 });
  assert.equal(next.status, 200);
  assert.equal(next.stdout, '7 True', `fd exhaustion: ${JSON.stringify(next.body).slice(0, 300)}`);
  assert.equal(next.interpreter_restarted, false);
  assert.match(next.stderr, /open-files limit \(SANDBOX_RUNNER_NOFILE\).*state was kept/);
  const after = await py(S.server, a.id, 'print(3, kept)');
  assert.equal(after.stdout, '3 7');
  assert.equal(after.stderr, '', 'the reserve is back once files are closed');
  const b = await sh(S.server, a.id, 'for i in $(seq 10 80); do eval "exec $i</dev/null" || { echo "stopped at $i"; break; }; done');
  assert.match(b.stdout, /stopped at 6\d/);
  await finishCase(S, a);
});

test("#K4 one session's processes and threads together stop at SANDBOX_SESSION_PIDS_MAX (pids cgroup), in cpu and pids cgroups of its own", async (t) => {
  const { readFile } = await import('node:fs/promises');
  const { existsSync } = await import('node:fs');
  const { startServer, createSession, pidsWithMarker, waitFor } = await import('../helpers/server.js');
  // (8 sessions: 8 x 48 fits this server's part of the host's tasks even beside other
  // servers, which would otherwise lower the 48 in force)
  const srv = await startServer({ SANDBOX_SESSION_PIDS_MAX: '48', SANDBOX_RUNNER_NPROC: '400', SANDBOX_MAX_SESSIONS: '8' });
  t.after(() => srv.stop());
  const h = await api(srv, 'GET', '/health');
  const protections = (h.body.isolation?.protections ?? []) as string[];
  const v1 = existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes');
  if (v1) {
    // this machine's kind (cgroup v1 with pids and cpu hierarchies): both must be in force
    assert.ok(protections.includes('at most 48 processes and threads per session (pids cgroup)'), JSON.stringify(protections));
    assert.ok(protections.includes('an equal CPU share per session (cpu cgroup)'), JSON.stringify(protections));
  }
  if (!protections.some((p) => p.includes('pids cgroup'))) return; // no pids controller here: /health says so
  const id = await createSession(srv);
  const marker = `555.${String(Math.floor(Math.random() * 1e9)).padStart(9, '1')}`;
  const r = await py(
    srv,
    id,
    `import subprocess\nprocs = []\ntry:\n    for i in range(200):\n        procs.append(subprocess.Popen(['sleep', '${marker}']))\nexcept (BlockingIOError, OSError) as e:\n    print('stopped at', len(procs), type(e).__name__)\n`,
    { timeout_seconds: 60 },
  );
  assert.match(r.stdout, /^stopped at \d+ BlockingIOError/, r.stderr);
  const started = Number(/stopped at (\d+)/.exec(r.stdout)![1]);
  assert.ok(started > 10 && started < 48, `the session total stopped the processes (NPROC is 400): ${started}`);
  // a bash command of the same session counts against the same total
  const b = await sh(srv, id, 'sleep 1 & echo $?');
  assert.notEqual(b.stdout, '0\n', `no room left for a bash command's processes: ${b.stdout} ${b.stderr}`);
  const pid = (await pidsWithMarker(marker))[0]!;
  const cg = await readFile(`/proc/${pid}/cgroup`, 'utf8');
  for (const c of ['pids', 'cpu']) assert.match(cg, new RegExp(`^\\d+:[^:]*\\b${c}\\b[^:]*:.*/otari-[0-9a-f]+/box_[0-9a-f]+$`, 'm'), `a ${c} cgroup of its own:\n${cg}`);
  await api(srv, 'DELETE', `/sessions/${id}`);
  assert.ok(await waitFor(async () => (await pidsWithMarker(marker)).length === 0, 10_000));
});
