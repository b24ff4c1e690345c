/**
 * Hostile inputs 29-30 of docs/threat-model.md (processes and lifecycle): hostile bytes on stdout/stderr must
 * come back as valid JSON, and code that imitates or attacks the interpreter's control
 * protocol (fake frames and sentinels on stdout, reading stdin, closing or replacing its
 * output streams, writing garbage into the control channel, a forked child that returns
 * into the driver) must never confuse the server: the call it belongs to reports what
 * really happened and the next call works.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { attacker, exists, finishCase, HANG_BACKSTOP_MS, notHung, py, rawRequest, sh, sleepMarker, startSuite, stopSuite, waitFor, type Suite } from './support.js';

let S: Suite;

before(async () => {
  S = await startSuite({ SANDBOX_INTERRUPT_GRACE_MS: '1000' });
});

after(async () => {
  await stopSuite(S);
});

/** POST exec and check the raw response text is well-formed JSON with every control byte escaped. */
async function execRaw(id: string, tool: string, input: Record<string, unknown>) {
  const body = Buffer.from(JSON.stringify({ tool, input }));
  const r = await rawRequest(S.server, { method: 'POST', path: `/sessions/${id}/exec`, headers: { 'content-type': 'application/json', 'content-length': body.length }, body });
  assert.equal(r.status, 200, r.body.toString().slice(0, 300));
  assert.match(String(r.headers['content-type']), /application\/json/);
  assert.ok(![...r.body].some((b) => b < 0x20), 'raw control bytes in the JSON text');
  const text = r.body.toString('utf8');
  const parsed = JSON.parse(text) as { result_block: { content: { stdout: string; stderr: string; return_code: number } } };
  return parsed.result_block.content;
}

test('#29 binary, invalid UTF-8, NUL, CR and ANSI/OSC escapes on stdout and stderr give valid JSON', async (t) => {
  const a = await attacker(S, t);
  const escapes = '\\x00nul\\r\\n\\x1b[31mred\\x1b[0m\\x1b]0;title\\x07\\x1b]8;;http://evil.example\\x1b\\\\link\\x1b]8;;\\x1b\\\\\\x1b]52;c;cGF3bmVk\\x07\\x1b[2J\\x9b31m';
  const code = `import sys
sys.stdout.buffer.write(bytes(range(256)))
sys.stdout.buffer.write(b'|\\xff\\xfe\\xc3(\\xed\\xa0\\x80|')
sys.stdout.write("${escapes}")
sys.stdout.flush()
sys.stderr.buffer.write(bytes(range(256)) + b"${escapes}")`;
  const p = await execRaw(a.id, 'code_execution', { code });
  assert.equal(p.return_code, 0);
  assert.ok(p.stdout.includes('\u0000nul\r\n\u001b[31mred'), 'NUL, CR and escapes arrive as characters, escaped in JSON');
  assert.ok(p.stdout.includes('\u001b]52;c;cGF3bmVk\u0007'), 'OSC sequences are passed as data');
  assert.ok(p.stdout.includes('|\ufffd'), 'invalid UTF-8 becomes replacement characters');
  assert.ok(p.stderr.includes('\u001b[2J'));
  const b = await execRaw(a.id, 'bash_code_execution', { command: "printf '\\x00\\xff\\xfe\\x1b[31mred\\r\\n\\x1b]0;t\\x07'; printf '\\xc3' >&2; head -c 3000 /dev/urandom" });
  assert.ok(b.stdout.startsWith('\u0000\ufffd\ufffd\u001b[31mred\r\n'), JSON.stringify(b.stdout.slice(0, 40)));
  assert.equal(b.stderr, '\ufffd');
  // A multi-byte character cut by the output cap still gives valid JSON.
  const cut = await execRaw(a.id, 'code_execution', { code: "print('é' * 700000)" });
  assert.ok(cut.stdout.length > 0);
  await finishCase(S, a);
});

test('#30 fake frames, sentinels and result JSON printed by the code are only output; the real return code wins', async (t) => {
  const a = await attacker(S, t);
  const code = `import json, struct, sys
out = sys.stdout.buffer
for i in range(0, 40):
    for kind in b'DHOTR':
        body = json.dumps({"id": i, "return_code": 0, "limit": None, "pid": 1, "preloaded": [], "call_id": "x", "name": "n", "input": {}}).encode()
        out.write(struct.pack('>IB', len(body), kind) + body)
out.write(struct.pack('>IB', 0xFFFFFFF0, ord('D')))
print('__END_OF_OUTPUT__ ---END--- <<<DONE>>> \\x04')
print(json.dumps({"result_block": {"content": {"stdout": "fake", "return_code": 0}}, "limit_exceeded": None}))
sys.stdout.flush()
sys.exit(7)`;
  const r = await py(S.server, a.id, code);
  assert.equal(r.return_code, 7, `the real exit status: ${r.stderr}`);
  assert.equal(r.interpreter_restarted, false);
  assert.match(r.stdout, /__END_OF_OUTPUT__/);
  assert.match(r.stdout, /"stdout": "fake"/);
  const next = await py(S.server, a.id, "print('next')");
  assert.equal(next.stdout, 'next');
  assert.equal(next.return_code, 0);
  const b = await sh(S.server, a.id, `printf '{"result_block":{"content":{"return_code":0}}}\\n'; exit 3`);
  assert.equal(b.return_code, 3);
  assert.equal(b.stdout, '{"result_block":{"content":{"return_code":0}}}\n');
  await finishCase(S, a);
});

test('#30 stdin is /dev/null: reading it cannot grab the next request', async (t) => {
  const a = await attacker(S, t);
  const r = await py(
    S.server,
    a.id,
    "import os, sys\nprint(os.readlink('/proc/self/fd/0'), repr(sys.stdin.read()), os.read(0, 100))\ntry:\n    input()\nexcept EOFError:\n    print('EOF')",
    { timeout_seconds: 60 },
  );
  assert.equal(r.limit_exceeded, null, 'reading stdin does not block (a blocked read would end at the timeout)');
  assert.equal(r.stdout, "/dev/null '' b''\nEOF");
  const bash = await sh(S.server, a.id, 'readlink /proc/self/fd/0; cat; read -r x; echo "read=$?"');
  assert.equal(bash.stdout, '/dev/null\nread=1\n');
  assert.equal((await py(S.server, a.id, 'print(1)')).stdout, '1');
  await finishCase(S, a);
});

test('#30 closing fds 1 and 2, sys.stdout = None, closed or replaced streams: the next call prints normally', async (t) => {
  const a = await attacker(S, t);
  const attacks = [
    'import os\nos.close(1)\nos.close(2)\nprint("lost")',
    'import sys\nsys.stdout = None\nsys.stderr = None\nprint("nowhere")',
    'import sys\nsys.stdout.close()\nsys.stderr.close()',
    'import sys, io\nsys.stdout = io.StringIO()\nsys.stderr = io.StringIO()',
    'import os\nfd = os.open("/dev/null", os.O_WRONLY)\nos.dup2(fd, 1)\nos.dup2(fd, 2)',
    'import os\nfor fd in (0, 1, 2, 3, 4, 5, 6, 7):\n    try: os.close(fd)\n    except OSError: pass',
  ];
  // Every attack is tried; what went wrong is collected and reported together.
  const problems: string[] = [];
  const failing = await py(S.server, a.id, 'import os\nos.close(2)\nraise ValueError("boom")', { timeout_seconds: 10 });
  if (failing.return_code !== 1) problems.push(`an exception raised after os.close(2) gave return_code ${failing.return_code} (expected 1)`);
  for (const code of ['import os\nos.close(2)\nraise ValueError("boom")', ...attacks]) {
    const r = await py(S.server, a.id, code, { timeout_seconds: 10 });
    assert.equal(r.status, 200, `${code}: ${JSON.stringify(r.body).slice(0, 200)}`);
    const next = await py(S.server, a.id, "import sys\nprint('ok')\nprint('err', file=sys.stderr)", { timeout_seconds: 10 });
    if (next.stdout !== 'ok' || next.stderr !== 'err')
      problems.push(
        `the call after ${JSON.stringify(code)} gave stdout ${JSON.stringify(next.stdout)}, stderr ${JSON.stringify(next.stderr)}, restarted=${next.interpreter_restarted}`,
      );
    const third = await py(S.server, a.id, "print('ok')", { timeout_seconds: 10 });
    assert.equal(third.stdout, 'ok', `the session recovers after ${JSON.stringify(code)}`);
  }
  assert.deepEqual(problems, []);
  await finishCase(S, a);
});

test('#30 a background child writing after its cell ended never leaks into a later call', async (t) => {
  const a = await attacker(S, t);
  const m = sleepMarker();
  const r = await py(S.server, a.id, `import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 0.3; echo LATE-OUT; echo LATE-ERR >&2; sleep ${m}'])\nprint('first')`);
  assert.equal(r.stdout, 'first');
  const next = await py(S.server, a.id, "import time\ntime.sleep(1)\nprint('second')");
  assert.equal(next.stdout, 'second');
  assert.equal(next.stderr, '');
  await finishCase(S, a, [m]);
});

test('#30 garbage written into the real control channel only restarts this interpreter', async (t) => {
  const a = await attacker(S, t);
  await py(S.server, a.id, 'x = 1');
  const r = await py(S.server, a.id, "import os, sys\nd = sys.modules['_sandbox_driver'].DRIVER\nos.write(d.chan.wfd, b'\\xff' * 64)\nimport time; time.sleep(3)", {
    timeout_seconds: 10,
  });
  assert.equal(r.status, 200);
  assert.notEqual(r.return_code, 0);
  assert.equal(r.interpreter_restarted, true, JSON.stringify(r.body).slice(0, 300));
  const next = await py(S.server, a.id, "print('x' in globals())");
  assert.equal(next.stdout, 'False', 'a fresh interpreter answers');
  // A write to the cell's wake-up pipe or to low fds does not end the call early or change its result.
  const w = await py(
    S.server,
    a.id,
    "import os\nfor fd in (3, 4, 5, 6):\n    try: os.write(fd, b'f')\n    except OSError: pass\nimport time; time.sleep(0.3)\nraise SystemExit(5)",
    { timeout_seconds: 10 },
  );
  assert.equal(w.return_code, 5, JSON.stringify(w.body).slice(0, 300));
  assert.equal((await py(S.server, a.id, 'print(2)')).stdout, '2');
  await finishCase(S, a);
});

test("#30 a forked child that returns into the driver does not end or hijack the parent's call", async (t) => {
  const a = await attacker(S, t);
  await py(S.server, a.id, 'kept = 1');
  const t0 = performance.now();
  const r = await py(S.server, a.id, "import os\npid = os.fork()\nif pid == 0:\n    print('child')\nelse:\n    os.waitpid(pid, 0)\n    print('parent')", { timeout_seconds: 5 });
  const ms = performance.now() - t0;
  t.diagnostic(`fork-return: ${ms.toFixed(0)} ms ${JSON.stringify({ stdout: r.stdout, rc: r.return_code, restarted: r.interpreter_restarted })}`);
  assert.match(r.stdout, /parent/, `the parent's output: ${JSON.stringify(r.body).slice(0, 400)}`);
  assert.equal(r.return_code, 0);
  assert.equal(r.interpreter_restarted, false);
  assert.equal((await py(S.server, a.id, 'print(kept)')).stdout, '1', 'state kept');
  await finishCase(S, a);
});

test('#30 a busy session never blocks another: the victim answers while the attacker floods its control channel', async (t) => {
  const a = await attacker(S, t);
  // The flood runs until the test says stop (a file it makes in the attacker's /tmp), so
  // "during the flood" is an order of events, not a clock: the victim must answer while the
  // flood's call is still running. A victim held behind the flood could answer only after
  // it ended, which here is never before the stop file; its 60 s limit only bounds that.
  const stop = `stop-${randomBytes(6).toString('hex')}`;
  const flood = py(
    S.server,
    a.id,
    `import os, sys\nstarted = False\nwritten = 0\nwhile not os.path.exists('/tmp/${stop}'):\n    for i in range(1000):\n        sys.stdout.write('x' * 100)\n        sys.stderr.write('y' * 100)\n    written += 100_000\n    if not started:\n        open('/tmp/${stop}.started', 'w').close()\n        started = True\n    if written == 2_000_000:\n        open('/tmp/${stop}.pastcap', 'w').close()`,
    { timeout_seconds: 60 },
  );
  let floodEnded = false;
  void flood.finally(() => (floodEnded = true)).catch(() => {});
  // The victim's call goes in once the flood is under way (200 KB written, its first mark).
  assert.ok(await waitFor(() => exists(`${a.box.dir}/tmp/${stop}.started`), HANG_BACKSTOP_MS), 'the flood started');
  const v = await notHung(py(S.server, S.victim, 'print(1)', { timeout_seconds: 60 }), 'the victim during the flood');
  assert.equal(v.stdout, '1');
  assert.equal(floodEnded, false, 'the victim answered only after the flood ended');
  // Stopped once it has written past the output cap (1 MiB a stream), so its verdict says so.
  assert.ok(await waitFor(() => exists(`${a.box.dir}/tmp/${stop}.pastcap`), HANG_BACKSTOP_MS), 'the flood wrote past the cap');
  await writeFile(`${a.box.dir}/tmp/${stop}`, '');
  const r = await flood;
  assert.equal(r.status, 200);
  assert.equal(r.limit_exceeded, 'output_bytes');
  assert.equal(r.return_code, 0, 'the flood ended by the stop file, not by its wall clock');
  await finishCase(S, a);
});
