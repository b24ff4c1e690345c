/**
 * bash_code_execution over HTTP in the real sandbox: output as written (no newline
 * stripping), cwd /workspace, a minimal environment that never shows the server's own,
 * background processes that do not delay the answer, a timeout that kills every process
 * the command started (nohup, setsid included), and commands longer than argv allows.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api, createSession, py, sh, pidsWithMarker, waitFor, type TestServer } from '../helpers/server.js';

/** A valid `sleep` argument no other process has: 1000.<random digits>. */
const sleepMarker = () => `1000.${String(Math.floor(Math.random() * 1e9)).padStart(9, '0')}${Date.now() % 1000}`;

const SECRET_NAME = 'SECRET_MARKER';
const SECRET_VALUE = `s3cr3t-${Math.random().toString(36).slice(2)}`;

let server: TestServer;
let id: string;

before(async () => {
  server = await startServer({ [SECRET_NAME]: SECRET_VALUE, SANDBOX_WARM_POOL_SIZE: '2' });
  id = await createSession(server);
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
});

test('echo hello answers "hello\\n" in a bash result block', async () => {
  const r = await sh(server, id, 'echo hello');
  assert.equal(r.status, 200);
  assert.equal(r.stdout, 'hello\n');
  assert.equal(r.stderr, '');
  assert.equal(r.return_code, 0);
  assert.equal(r.body.result_block.type, 'bash_code_execution_tool_result');
  assert.equal(r.body.result_block.content.type, 'code_execution_result');
  assert.deepEqual(r.body.result_block.content.content, []);
  assert.equal(r.limit_exceeded, null);
});

test('output is returned as written: no newline is stripped or added', async () => {
  assert.equal((await sh(server, id, 'printf "a\\n\\n"')).stdout, 'a\n\n');
  assert.equal((await sh(server, id, 'printf abc')).stdout, 'abc');
  assert.equal((await sh(server, id, 'true')).stdout, '');
});

test('exit status and stderr are reported separately', async () => {
  const r = await sh(server, id, 'echo out; echo err >&2; exit 3');
  assert.equal(r.status, 200);
  assert.equal(r.return_code, 3);
  assert.equal(r.stdout, 'out\n');
  assert.equal(r.stderr, 'err\n');
  const missing = await sh(server, id, 'no-such-command-xyz');
  assert.equal(missing.return_code, 127);
  assert.match(missing.stderr, /not found/);
});

test('a command killed by a signal reports 128 plus its number, as bash does; its status is its own, not its leftovers', async () => {
  // (the command's status is reported as soon as it ends, before its sandbox is torn down)
  assert.equal((await sh(server, id, 'kill -KILL $$')).return_code, 137);
  assert.equal((await sh(server, id, 'kill -TERM $$')).return_code, 143);
  const r = await sh(server, id, 'sleep 30 >/dev/null 2>&1 & exit 5');
  assert.equal(r.return_code, 5);
  assert.equal(r.limit_exceeded, null);
  // (and the next command runs in a sandbox of its own: the sleep above is gone from it)
  assert.equal((await sh(server, id, 'ps -eo comm= | grep -c "^sleep$" || true')).stdout, '0\n');
});

test("a command cannot change what the session's next commands inherit: limits and priority set on the commands' init are gone in the next command", async () => {
  const before = await sh(server, id, 'ulimit -Hu; ulimit -Hf; ulimit -Hn; nice');
  const set = await sh(server, id, 'prlimit --pid 1 --nproc=6:6 --fsize=8:8 --nofile=64:64 && renice -n 19 -p 1 >/dev/null && echo set');
  assert.equal(set.stdout, 'set\n', set.stderr);
  const after = await sh(server, id, 'ulimit -Hu; ulimit -Hf; ulimit -Hn; nice');
  assert.equal(after.stdout, before.stdout, after.stderr);
  assert.equal((await sh(server, id, 'prlimit --pid 1 --nofile=3:3 && echo set')).stdout, 'set\n');
  const next = await sh(server, id, 'echo ran');
  assert.equal(next.stdout, 'ran\n', next.stderr);
  // (red team C: limits outside the spec, CPU affinity and I/O priority were passed on)
  const others = 'ulimit -Hs; ulimit -Hl; ulimit -Hq; ionice -p $$; taskset -p $$ | cut -d: -f2';
  const base = await sh(server, id, others);
  const changed = await sh(server, id, 'prlimit --pid 1 --stack=65536:65536 --memlock=0:0 --msgqueue=0:0 && ionice -c 3 -p 1 && taskset -p 1 1 >/dev/null && echo set');
  assert.equal(changed.stdout, 'set\n', changed.stderr);
  const later = await sh(server, id, others);
  assert.equal(later.stdout, base.stdout, later.stderr);
});

test('a command with a lone UTF-16 surrogate (valid JSON) runs, the surrogate written as U+FFFD (it never ran on the template path)', async () => {
  const r = await sh(server, id, 'echo \ud800 hi; echo \udc00');
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal(r.stdout, '\ufffd hi\n\ufffd\n');
});

test('a command with a NUL byte runs, as bash runs such a file: the NUL dropped, with a warning (it was refused, and the call said to restart the interpreter: red team)', async () => {
  const r = await sh(server, id, 'echo a\u0000b; echo next');
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal(r.stdout, 'ab\nnext\n');
  assert.match(r.stderr, /null byte/);
  assert.equal((await sh(server, id, 'echo after')).stdout, 'after\n');
});

test('the working directory is /workspace, shared with Python', async () => {
  assert.equal((await sh(server, id, 'pwd')).stdout, '/workspace\n');
  await sh(server, id, 'echo from-bash > shared.txt');
  assert.equal((await py(server, id, "print(open('shared.txt').read().strip(), __import__('os').getcwd())")).stdout, 'from-bash /workspace');
  await py(server, id, "open('from_py.txt', 'w').write('from-python')");
  assert.equal((await sh(server, id, 'cat /workspace/from_py.txt')).stdout, 'from-python');
});

test("the environment is minimal: none of the server's variables reach bash or Python", async () => {
  const env = (await sh(server, id, 'env')).stdout;
  assert.match(env, /^PATH=/m, 'bash has a PATH');
  for (const leak of [SECRET_NAME, SECRET_VALUE, 'SANDBOX_SESSIONS_ROOT', 'SANDBOX_UID_BASE', server.sessionsRoot]) {
    assert.ok(!env.includes(leak), `bash env shows ${leak}`);
  }
  const pyEnv = (await py(server, id, 'import os, json\nprint(json.dumps(dict(os.environ)))')).stdout;
  const parsed = JSON.parse(pyEnv) as Record<string, string>;
  assert.ok(!(SECRET_NAME in parsed));
  assert.ok(!Object.keys(parsed).some((k) => k.startsWith('SANDBOX_')), `python env: ${Object.keys(parsed).join(',')}`);
  assert.ok(!pyEnv.includes(SECRET_VALUE));
  // Nor through any process's environ inside the sandbox.
  const grep = await sh(server, id, `cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c -F '${SECRET_VALUE}' || true`);
  assert.equal(grep.stdout.trim(), '0');
});

test('a background process never delays the response', async () => {
  // (they would outlast the call's timeout: a server that waited for them would answer "wall_clock")
  const m = `120.${String(Math.floor(Math.random() * 1e9)).padStart(9, '1')}`;
  const r = await sh(server, id, `sleep ${m} & (sleep ${m}; echo late) & nohup sleep ${m} >/dev/null 2>&1 & echo started`, { timeout_seconds: 60 });
  assert.equal(r.return_code, 0);
  assert.equal(r.stdout, 'started\n');
  assert.equal(r.limit_exceeded, null, 'answered, not timed out');
});

test('timeout kills the command and everything it started, nohup and setsid included', async () => {
  const [m1, m2, m3, m4] = [sleepMarker(), sleepMarker(), sleepMarker(), sleepMarker()];
  const t0 = Date.now();
  // (5 s leaves the test room to see the processes run on a loaded machine; the call would
  // otherwise run for ever: `sleep ${m4}`)
  const pending = sh(server, id, `nohup sleep ${m1} >/dev/null 2>&1 & setsid sleep ${m2} & (trap '' TERM HUP INT; exec sleep ${m3}) & echo partial; sleep ${m4}`, {
    timeout_seconds: 5,
  });
  let settled = false;
  void pending.finally(() => (settled = true));
  const seen = await waitFor(async () => settled || ((await pidsWithMarker(m4)).length > 0 && (await pidsWithMarker(m2)).length > 0), 10_000);
  assert.ok(seen && !settled, 'the processes were running before the timeout');
  const r = await pending;
  const took = Date.now() - t0;
  assert.equal(r.status, 200);
  // (a lower bound only, which load cannot break; "wall_clock" below says the timeout ended it)
  assert.ok(took >= 4900, `answered at the timeout, not before (${took} ms)`);
  assert.notEqual(r.return_code, 0);
  assert.equal(r.limit_exceeded, 'wall_clock');
  assert.equal(r.stdout, 'partial\n');
  assert.match(r.stderr, /timed out/);
  assert.match(r.stderr, /\b5(\.0)?\s*s/, 'says which limit and its value');
  for (const m of [m1, m2, m3, m4]) {
    // (a backstop: the processes are killed before the answer)
    assert.ok(await waitFor(async () => (await pidsWithMarker(m)).length === 0, 10_000), `no process with ${m} is left`);
  }
  assert.equal((await sh(server, id, 'echo still-works')).stdout, 'still-works\n');
});

test('bash output is capped per stream at SANDBOX_RUNNER_MAX_OUTPUT_BYTES: head and tail, the marker between them naming the spill file', async () => {
  const cap = 1024 * 1024;
  const total = 2_000_000;
  const r = await sh(server, id, `head -c ${total} /dev/zero | tr '\\0' x; head -c 10 /dev/zero | tr '\\0' e >&2`);
  assert.equal(r.status, 200);
  assert.equal(r.body.stdout_dropped_bytes, total - cap);
  assert.equal(r.body.stderr_dropped_bytes, 0);
  const m = /\n\.\.\. \[output truncated by sandbox: (\d+) bytes elided; the complete output is in \/workspace\/(\.output\/call-[0-9a-f]{8}-stdout\.txt)\]\n/.exec(r.stdout);
  assert.ok(m, r.stdout.slice(cap / 2 - 10, cap / 2 + 200));
  assert.equal(Number(m[1]), total - cap);
  assert.equal(r.stdout, 'x'.repeat(cap / 2) + m[0] + 'x'.repeat(cap / 2));
  assert.deepEqual(
    r.body.result_block.content.content.map((f: { filename: string; size_bytes: number }) => [f.filename, f.size_bytes]),
    [[m[2], total]],
    'the complete output, listed',
  );
  // The program's own stderr, then one plain-English line naming the limit and its value.
  assert.ok(r.stderr.startsWith('eeeeeeeeee'), r.stderr);
  const note = r.stderr.slice(10).trim();
  assert.equal(note.split('\n').length, 1, note);
  assert.match(note, /output/);
  assert.match(note, new RegExp(String(cap)));
  assert.equal(r.limit_exceeded, 'output_bytes');
});

test('a command longer than 100 KB runs', async () => {
  const payload = 'a'.repeat(150_000);
  const r = await sh(server, id, `x='${payload}'\necho \${#x}\necho "$x" | md5sum | cut -c1-8`);
  assert.equal(r.status, 200);
  assert.equal(r.return_code, 0, r.stderr);
  const { createHash } = await import('node:crypto');
  assert.equal(r.stdout, `150000\n${createHash('md5').update(`${payload}\n`).digest('hex').slice(0, 8)}\n`);
});

test('bash input errors: empty or missing command is 422', async () => {
  for (const input of [{ command: '' }, {}, { command: 5 }, { code: 'echo hi' }]) {
    const r = await api(server, 'POST', `/sessions/${id}/exec`, { tool: 'bash_code_execution', input });
    assert.equal(r.status, 422, JSON.stringify(input));
    assert.equal(r.body.code, 'SBX_VALIDATION');
  }
});
