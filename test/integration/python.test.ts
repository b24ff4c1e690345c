/**
 * The session's Python interpreter over HTTP, with real Python in the real sandbox:
 * the reference's exact output policy, persistence and isolation of state, failures as
 * results, fd-level capture (children, C code) that never leaks into a later call, the
 * output cap, timeouts (interrupt that keeps state; kill and restart that loses it),
 * crashes, forged frames, and the per-session queue.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { startServer, api, createSession, notHung, py, pidsWithMarker, upload as uploadFile, waitFor, type TestServer } from '../helpers/server.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A valid `sleep` argument no other process has: 1000.<random digits>. */
const sleepMarker = () => `1000.${String(Math.floor(Math.random() * 1e9)).padStart(9, '0')}${Date.now() % 1000}`;
/** The marker between head and tail, naming the spill file (whose call id varies). */
const marker = (dropped: number, stream: 'stdout' | 'stderr') =>
  new RegExp(`\\n\\.\\.\\. \\[output truncated by sandbox: ${dropped} bytes elided; the complete output is in /workspace/\\.output/call-[0-9a-f]{8}-${stream}\\.txt\\]\\n`);

async function rssKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

let server: TestServer;
/** Small output cap and a queue of one, for the cap and queue tests. */
let tight: TestServer;

before(async () => {
  [server, tight] = await Promise.all([startServer({ SANDBOX_WARM_POOL_SIZE: '2' }), startServer({ SANDBOX_RUNNER_MAX_OUTPUT_BYTES: '2048', SANDBOX_EXEC_QUEUE_MAX: '1' })]);
});
after(async () => {
  for (const s of [server, tight]) {
    if (s && (s.proc.exitCode !== null || s.proc.signalCode !== null)) console.error(`server died early:\n${s.logs().slice(-4000)}`);
  }
  await Promise.all([server?.stop(), tight?.stop()]);
});

test('print(2 + 2) answers stdout "4" in a contract v1 result block', async () => {
  const id = await createSession(server);
  const r = await py(server, id, 'print(2 + 2)');
  assert.equal(r.status, 200);
  assert.equal(r.stdout, '4');
  assert.equal(r.stderr, '');
  assert.equal(r.return_code, 0);
  assert.equal(r.body.result_block.type, 'code_execution_tool_result');
  assert.equal(r.body.result_block.content.type, 'code_execution_result');
  assert.deepEqual(r.body.result_block.content.content, []);
  assert.equal(r.body.limit_exceeded, null);
  assert.equal(r.body.interpreter_restarted, false);
  assert.equal(r.body.stdout_dropped_bytes, 0);
  assert.equal(r.body.stderr_dropped_bytes, 0);
  assert.ok(Number.isInteger(r.body.execution_time_ms) && r.body.execution_time_ms >= 0);
});

test('exactly one trailing newline is stripped, as the reference does', async () => {
  const id = await createSession(server);
  assert.equal((await py(server, id, "print('a'); print('b'); print('c')")).stdout, 'a\nb\nc');
  assert.equal((await py(server, id, 'print("x\\n")')).stdout, 'x\n');
  assert.equal((await py(server, id, 'x = 1')).stdout, '');
  assert.equal((await py(server, id, "import sys\nsys.stdout.write('no newline')")).stdout, 'no newline');
  const err = await py(server, id, "import sys\nprint('err', file=sys.stderr)");
  assert.equal(err.stderr, 'err');
  assert.equal(err.stdout, '');
});

test('globals and imports persist across calls', async () => {
  const id = await createSession(server);
  assert.equal((await py(server, id, 'x = 41\nimport math as m\ndef f(a):\n    return a * 2')).return_code, 0);
  const r = await py(server, id, 'print(x + 1, m.floor(2.7), f(21))');
  assert.equal(r.stdout, '42 2 42');
});

test('state never crosses sessions', async () => {
  const [a, b] = await Promise.all([createSession(server), createSession(server)]);
  await py(server, a, 'secret_value = "only-in-a"\nimport json');
  const r = await py(server, b, "print('secret_value' in globals(), 'json' in globals())");
  assert.equal(r.stdout, 'False False');
  const n = await py(server, b, 'print(secret_value)');
  assert.equal(n.return_code, 1);
  assert.match(n.stderr, /NameError/);
  assert.equal((await py(server, a, 'print(secret_value)')).stdout, 'only-in-a');
});

test('an uncaught exception gives return_code 1 and the traceback; the interpreter survives', async () => {
  const id = await createSession(server);
  await py(server, id, 'kept = "yes"');
  const r = await py(server, id, "print('before')\nraise ValueError('boom')");
  assert.equal(r.status, 200);
  assert.equal(r.return_code, 1);
  assert.equal(r.stdout, 'before');
  assert.match(r.stderr, /^Traceback \(most recent call last\):/);
  assert.match(r.stderr, /ValueError: boom/);
  assert.equal(r.body.interpreter_restarted, false);
  const s = await py(server, id, 'def broken(:\n    pass');
  assert.equal(s.return_code, 1);
  assert.match(s.stderr, /SyntaxError/);
  assert.equal((await py(server, id, 'print(kept)')).stdout, 'yes');
});

test('sys.exit(n) gives return_code n and does not end the interpreter', async () => {
  const id = await createSession(server);
  await py(server, id, 'kept = 7');
  const r = await py(server, id, "import sys\nprint('bye')\nsys.exit(3)");
  assert.equal(r.return_code, 3);
  assert.equal(r.stdout, 'bye');
  assert.equal(r.body.interpreter_restarted, false);
  assert.equal((await py(server, id, 'import sys\nsys.exit()')).return_code, 0);
  assert.equal((await py(server, id, 'import sys\nsys.exit(0)')).return_code, 0);
  assert.equal((await py(server, id, "raise SystemExit('message')")).return_code, 1);
  assert.equal((await py(server, id, 'print(kept)')).stdout, '7');
});

test('output of child processes and C code is captured at the fd level, in order, in the same call', async () => {
  const id = await createSession(server);
  const code = [
    'import os, subprocess, sys, ctypes',
    "print('p1')",
    "os.system('echo sys1')",
    "subprocess.run(['echo', 'sub1'])",
    "os.write(1, b'raw1\\n')",
    'libc = ctypes.CDLL(None)',
    "libc.printf(b'c1\\n')",
    'libc.fflush(None)',
    "os.system('echo err1 >&2')",
    "subprocess.run(['bash', '-c', 'echo err2 >&2'])",
    "os.write(2, b'raw2\\n')",
    "print('p2')",
  ].join('\n');
  const r = await py(server, id, code);
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal(r.stdout, 'p1\nsys1\nsub1\nraw1\nc1\np2');
  assert.equal(r.stderr, 'err1\nerr2\nraw2');
});

test('a background child never leaks output into a later call, and does not delay its own call', async () => {
  const id = await createSession(server);
  // The child waits for a flag the next call makes, so the first call can only have
  // answered without waiting for it (no clock).
  const first = await py(
    server,
    id,
    "import subprocess\nsubprocess.Popen(['bash', '-c', 'trap \\\"\\\" PIPE; while [ ! -e /tmp/go ]; do sleep 0.02; done; for i in 1 2 3 4 5 6 7 8; do echo LATE$i; echo LATEERR$i >&2; done; touch /tmp/done'])\nprint('first')",
    { timeout_seconds: 60 },
  );
  assert.equal(first.stdout, 'first');
  assert.equal(first.limit_exceeded, null, 'answered, not timed out: it did not wait for the child');
  // The child writes while this call runs: none of it may show up here.
  const second = await py(server, id, "import os, time\nopen('/tmp/go', 'w').close()\nwhile not os.path.exists('/tmp/done'):\n    time.sleep(0.02)\nprint('second')", {
    timeout_seconds: 60,
  });
  assert.equal(second.stdout, 'second');
  assert.equal(second.stderr, '');
  const third = await py(server, id, "print('third')");
  assert.equal(third.stdout, 'third');
  assert.equal(third.stderr, '');
});

test('100,000 characters of stdout arrive intact', async () => {
  const id = await createSession(server);
  const r = await py(server, id, "print(''.join(str(i % 10) for i in range(100000)))");
  const expected = Array.from({ length: 100000 }, (_, i) => String(i % 10)).join('');
  assert.equal(r.stdout.length, 100000);
  assert.equal(r.stdout, expected);
  assert.equal(r.body.stdout_dropped_bytes, 0);
  assert.equal(r.body.limit_exceeded, null);
});

test('stderr is separate from stdout', async () => {
  const id = await createSession(server);
  const r = await py(server, id, "import sys\nprint('out1')\nprint('err1', file=sys.stderr)\nprint('out2')\nsys.stderr.write('err2\\n')");
  assert.equal(r.stdout, 'out1\nout2');
  assert.equal(r.stderr, 'err1\nerr2');
  assert.equal(r.return_code, 0);
});

test('input() does not hang: stdin is empty', async () => {
  const id = await createSession(server);
  // (no clock: input() that waited for stdin would run into the timeout, limit "wall_clock";
  // 60 s is only that backstop)
  const r = await py(server, id, 'input()', { timeout_seconds: 60 });
  assert.equal(r.limit_exceeded, null, 'answered by EOFError, not by the timeout');
  assert.equal(r.return_code, 1);
  assert.match(r.stderr, /EOFError/);
});

test('timeout: the code is interrupted, its processes stopped, and the interpreter keeps its state', async () => {
  const id = await createSession(server);
  await py(server, id, 'x = 5');
  const m = sleepMarker();
  const t0 = Date.now();
  const r = await py(server, id, `import subprocess, time\nsubprocess.Popen(['sleep', '${m}'], start_new_session=True)\nprint('started')\ntime.sleep(100)`, { timeout_seconds: 1 });
  const took = Date.now() - t0;
  assert.equal(r.status, 200);
  // (a lower bound only: the call cannot end before its timeout; "wall_clock" below says why it ended)
  assert.ok(took >= 900, `answered at the timeout, not before (${took} ms)`);
  assert.notEqual(r.return_code, 0);
  assert.equal(r.limit_exceeded, 'wall_clock');
  assert.equal(r.interpreter_restarted, false);
  assert.equal(r.stdout, 'started');
  assert.match(r.stderr, /timed out/);
  assert.match(r.stderr, /\b1(\.0)?\s*s/);
  assert.match(r.stderr, /kept/);
  assert.ok(await waitFor(async () => (await pidsWithMarker(m)).length === 0, 10_000), 'the child started by the cell is gone');
  const after = await py(server, id, 'print(x)');
  assert.equal(after.stdout, '5');
  assert.equal(after.interpreter_restarted, false);
});

test('timeout of code that ignores the interrupt: the interpreter is restarted, state lost, processes killed', async () => {
  const id = await createSession(server);
  await py(server, id, 'x = 5');
  const m = sleepMarker();
  await py(server, id, `import subprocess\nsubprocess.Popen(['sleep', '${m}'], start_new_session=True)`);
  assert.ok(await waitFor(async () => (await pidsWithMarker(m)).length > 0, 10_000));
  // (no clock: "wall_clock" with a restart says the grace's kill ended it; a server that
  // never escalated past the ignored interrupt would never answer, which notHung names)
  const r = await notHung(
    py(server, id, 'import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass', { timeout_seconds: 1 }),
    'a cell that ignores the interrupt',
  );
  assert.equal(r.status, 200);
  assert.notEqual(r.return_code, 0);
  assert.equal(r.limit_exceeded, 'wall_clock');
  assert.equal(r.interpreter_restarted, true);
  assert.match(r.stderr, /timed out/);
  assert.match(r.stderr, /lost/);
  assert.ok(await waitFor(async () => (await pidsWithMarker(m)).length === 0, 10_000), 'every process of the old interpreter is gone');
  const next = await py(server, id, "print('x' in globals())");
  assert.equal(next.status, 200);
  assert.equal(next.stdout, 'False');
  assert.equal(next.return_code, 0);
});

test('a C loop that never checks signals is also cut (catastrophic regex)', async () => {
  const id = await createSession(server);
  // (no clock: the regex alone would run for ages; an answer with "wall_clock" is the cut)
  const r = await notHung(py(server, id, "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", { timeout_seconds: 1 }), 'a catastrophic regex');
  assert.notEqual(r.return_code, 0);
  assert.equal(r.limit_exceeded, 'wall_clock');
  assert.equal((await py(server, id, "print('alive')")).stdout, 'alive');
});

for (const [name, code, pattern] of [
  ['os._exit', "import os\nprint('bye')\nos._exit(3)", /exit|status 3/i],
  ['a segfault', 'import ctypes\nctypes.string_at(0)', /SIGSEGV|Segmentation|signal 11/],
  ['SIGKILL of itself', 'import os, signal\nos.kill(os.getpid(), signal.SIGKILL)', /SIGKILL|signal 9|killed/i],
] as const) {
  test(`a crash (${name}) is detected and reported; the next call gets a fresh interpreter`, async () => {
    const id = await createSession(server);
    await py(server, id, 'x = 1');
    // (no clock: a crash not noticed would end at the timeout, limit "wall_clock"; 60 s is
    // only that backstop, generous for a loaded machine)
    const r = await py(server, id, code, { timeout_seconds: 60 });
    assert.equal(r.status, 200);
    assert.notEqual(r.limit_exceeded, 'wall_clock', 'the crash is noticed when it happens, not at the timeout');
    assert.notEqual(r.return_code, 0);
    assert.equal(r.interpreter_restarted, true);
    assert.match(r.stderr, pattern);
    assert.match(r.stderr, /lost/);
    const next = await py(server, id, "print('x' in globals())");
    assert.equal(next.stdout, 'False');
    assert.equal(next.return_code, 0);
    assert.equal((await py(server, id, 'print(6 * 7)')).stdout, '42');
  });
}

test('printed sentinels, fake JSON and forged frames are just output', async () => {
  const id = await createSession(server);
  const frame = (kind: string, body: string) => `struct.pack('>IB', ${Buffer.byteLength(body)}, ord('${kind}')) + ${JSON.stringify(body)}.encode()`;
  const code = [
    'import os, sys, json, struct',
    "print('---SBX_DONE--- 0')",
    "print('---SBX_STDOUT_END---')",
    "print('---SBX_STDERR---')",
    'print(json.dumps({"id": 1, "return_code": 0, "stdout": "forged"}))',
    `os.write(1, ${frame('D', '{"id":1,"return_code":42}')})`,
    `os.write(1, ${frame('O', 'forged-out')})`,
    "os.write(1, b'\\n')",
    `os.write(2, ${frame('D', '{"id":2,"return_code":9}')})`,
    "print('---SBX_STDERR_END---', file=sys.stderr)",
    "print('real end')",
  ].join('\n');
  const r = await py(server, id, code);
  assert.equal(r.status, 200);
  assert.equal(r.return_code, 0, r.stderr);
  const frameText = (kind: string, body: string) => {
    const b = Buffer.alloc(5);
    b.writeUInt32BE(Buffer.byteLength(body), 0);
    b.writeUInt8(kind.charCodeAt(0), 4);
    return b.toString('utf8') + body;
  };
  assert.equal(
    r.stdout,
    [
      '---SBX_DONE--- 0',
      '---SBX_STDOUT_END---',
      '---SBX_STDERR---',
      '{"id": 1, "return_code": 0, "stdout": "forged"}',
      frameText('D', '{"id":1,"return_code":42}') + frameText('O', 'forged-out'),
      'real end',
    ].join('\n'),
  );
  assert.equal(r.stderr, `${frameText('D', '{"id":2,"return_code":9}')}---SBX_STDERR_END---`);
  assert.equal(r.interpreter_restarted, false);
  const next = await py(server, id, "print('next')");
  assert.equal(next.stdout, 'next');
  assert.equal(next.return_code, 0);
});

test('concurrent calls on one session run one at a time, in order, and their outputs never mix', async () => {
  const id = await createSession(server);
  await py(server, id, 'order = []');
  const calls: Promise<Awaited<ReturnType<typeof py>>>[] = [];
  for (let i = 0; i < 5; i++) {
    const tag = `T${i}`;
    calls.push(
      py(
        server,
        id,
        `import time, sys\n_t0 = time.monotonic()\nprint('${tag}' * 500)\ntime.sleep(0.2)\nsys.stderr.write('${tag}')\norder.append(${i})\nprint(len(order), _t0, time.monotonic())`,
      ),
    );
    await sleep(40);
  }
  const results = await Promise.all(calls);
  const spans: [number, number][] = [];
  results.forEach((r, i) => {
    assert.equal(r.status, 200);
    const [line1, line2] = r.stdout.split('\n');
    assert.equal(line1, `T${i}`.repeat(500), `call ${i} has only its own output`);
    assert.equal(r.stderr, `T${i}`);
    const [count, t0, t1] = line2!.split(' ').map(Number);
    assert.equal(count, i + 1, `call ${i} ran in the order it was sent`);
    spans.push([t0!, t1!]);
  });
  for (let i = 1; i < spans.length; i++) assert.ok(spans[i]![0] >= spans[i - 1]![1], `call ${i} started after call ${i - 1} ended`);
});

test('the output cap: head and tail kept, the reference marker between them, and the dropped byte counts', async () => {
  const id = await createSession(tight);
  const r = await py(tight, id, "import sys\nsys.stdout.write('x' * 10000)\nsys.stderr.write('e' * 5000)");
  assert.equal(r.status, 200);
  const out = marker(10000 - 2048, 'stdout').exec(r.stdout);
  assert.ok(out, r.stdout.slice(1000, 1200));
  assert.equal(r.stdout, 'x'.repeat(1024) + out[0] + 'x'.repeat(1024));
  const err = marker(5000 - 2048, 'stderr').exec(r.stderr);
  assert.ok(err, r.stderr.slice(1000, 1200));
  const kept = 'e'.repeat(1024) + err[0] + 'e'.repeat(1024);
  assert.equal(r.stderr.slice(0, kept.length), kept);
  // After the program's stderr, at most one plain-English line naming the limit and its value.
  const note = r.stderr.slice(kept.length).trim();
  assert.ok(note === '' || (note.split('\n').length === 1 && /2048/.test(note)), note);
  assert.equal(r.body.stdout_dropped_bytes, 10000 - 2048);
  assert.equal(r.body.stderr_dropped_bytes, 5000 - 2048);
  assert.equal(r.limit_exceeded, 'output_bytes');
  const small = await py(tight, id, "print('y' * 2000)");
  assert.equal(small.stdout, 'y'.repeat(2000));
  assert.equal(small.body.stdout_dropped_bytes, 0);
});

test('an endless flood is capped while it is read: bounded server memory, answer at the timeout', async () => {
  const id = await createSession(tight);
  const rssBefore = await rssKb(tight.proc.pid!);
  // (no clock: "wall_clock" says the timeout ended it; a server that stopped reading at the
  // cap shows no dropped flood below, and one that never answered, notHung names)
  const r = await notHung(py(tight, id, "while True:\n    print('x' * 10000)", { timeout_seconds: 2 }), 'an endless flood');
  const rssAfter = await rssKb(tight.proc.pid!);
  assert.equal(r.status, 200);
  assert.equal(r.limit_exceeded, 'wall_clock');
  assert.match(r.stderr, /timed out/);
  assert.notEqual(r.return_code, 0);
  assert.ok(r.stdout.startsWith('x'.repeat(1024) + '\n... [output truncated by sandbox: '), r.stdout.slice(1020, 1100));
  assert.ok(r.stdout.length < 2048 + 200, 'no more than the cap is kept');
  assert.ok(r.body.stdout_dropped_bytes > 1_000_000, `a flood was dropped (${r.body.stdout_dropped_bytes} bytes)`);
  assert.ok(rssAfter - rssBefore < 100 * 1024, `server RSS grew by ${rssAfter - rssBefore} KiB`);
  assert.equal((await py(tight, id, "print('calm')")).stdout, 'calm');
});

test('past the per-session queue bound a call is refused with 429', async () => {
  const id = await createSession(tight);
  // Events, not sleeps: the first call holds the session until the test uploads a flag.
  const running = py(tight, id, "import os, time\nopen('/workspace/running', 'w').close()\nwhile not os.path.exists('/workspace/go'):\n    time.sleep(0.02)\nprint('A')", {
    timeout_seconds: 60,
  });
  assert.ok(await waitFor(async () => (await api(tight, 'GET', `/sessions/${id}/files?path=running`)).status === 200, 30_000), 'the first call runs');
  // SANDBOX_EXEC_QUEUE_MAX=1: of two more calls, one waits and the other is refused at once
  // (which one depends on which the server sees first, so neither is assumed). The refusal
  // must come while the first call still holds the session: before the flag.
  const b = py(tight, id, "print('B')");
  const c = py(tight, id, "print('C')");
  const refused = await notHung(Promise.race([b, c]), 'two calls behind a running one');
  assert.equal(refused.status, 429);
  assert.equal(refused.body.code, 'SBX_SESSION_BUSY');
  assert.equal(typeof refused.body.detail, 'string');
  await uploadFile(tight, id, '', { path: 'go' });
  assert.equal((await running).stdout, 'A');
  const [rb, rc] = await Promise.all([b, c]);
  const [waited, name] = rb === refused ? [rc, 'C'] : [rb, 'B'];
  assert.equal(waited.status, 200, 'the other call waited its turn');
  assert.equal(waited.stdout, name);
  assert.equal((await py(tight, id, "print('D')")).stdout, 'D');
});

test("output written after its call: a later call shows what an earlier call's thread writes while it runs, never what an earlier call's process writes", async () => {
  const id = await createSession(server);
  // Both wait for a flag file the next call makes, write, then say so in a file: events, no clocks.
  const first = await py(
    server,
    id,
    [
      'import os, subprocess, sys, threading, time',
      'def late():',
      "    while not os.path.exists('/tmp/go'): time.sleep(0.01)",
      "    print('from the thread of call 1', flush=True)",
      "    open('/tmp/thread-done', 'w').close()",
      'threading.Thread(target=late, daemon=True).start()',
      "child = \"import os, time\\nwhile not os.path.exists('/tmp/go'): time.sleep(0.01)\\ntry:\\n    print('from the process of call 1', flush=True)\\nexcept BrokenPipeError:\\n    pass\\nopen('/tmp/child-done', 'w').close()\"",
      'subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.DEVNULL)',
      "print('call 1')",
    ].join('\n'),
  );
  assert.equal(first.stdout, 'call 1', first.stderr);
  const second = await py(
    server,
    id,
    [
      'import os, time',
      "open('/tmp/go', 'w').close()",
      "while not (os.path.exists('/tmp/thread-done') and os.path.exists('/tmp/child-done')): time.sleep(0.01)",
      "print('call 2')",
    ].join('\n'),
    { timeout_seconds: 60 },
  );
  assert.equal(second.return_code, 0, second.stderr);
  assert.equal(second.stdout, 'from the thread of call 1\ncall 2', 'the thread writes into the running call; the process of call 1 does not');
});
