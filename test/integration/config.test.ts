/**
 * Configuration from the environment, validated once at start: invalid values stop the
 * server with exit code 1 and every problem listed; PORT and HOST are honoured; the
 * reference's SANDBOX_* settings keep their meanings (timeouts of sessions, the ceiling
 * of a call's timeout, memory, file size, open files, CPU).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { startServer, api, createSession, py, MAIN, type TestServer } from '../helpers/server.js';

async function freePort(host = '127.0.0.1'): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, host, () => r()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Runs the server with exactly `env` (plus PATH) and collects its exit; a server that
 * comes up is stopped with SIGTERM as soon as it listens. */
async function runMain(env: Record<string, string>, timeoutMs = 120_000): Promise<{ code: number | null; output: string; tookMs: number }> {
  const t0 = Date.now();
  const proc = spawn(process.execPath, [MAIN], { env: { PATH: '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const onData = (d: Buffer) => {
    output += d.toString();
    if (output.includes('Server listening') && proc.exitCode === null && !proc.killed) proc.kill('SIGTERM');
  };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, output, tookMs: Date.now() - t0 };
}

let scratch: string;
let port: number;
let server: TestServer;

before(async () => {
  scratch = await mkdtemp('/tmp/sbx-cfg-');
  await chmod(scratch, 0o711);
  port = await freePort();
  server = await startServer({
    PORT: String(port),
    SANDBOX_SESSION_IDLE_TIMEOUT: '123',
    SANDBOX_SESSION_MAX_LIFETIME: '600',
    SANDBOX_MAX_SESSIONS: '5',
    SANDBOX_RUNNER_WALL_CLOCK_SECONDS: '2',
    SANDBOX_DEFAULT_TIMEOUT_SECONDS: '2',
    SANDBOX_RUNNER_MEMORY_MB: '256',
    SANDBOX_RUNNER_FSIZE_MB: '1',
    SANDBOX_RUNNER_NOFILE: '64',
    SANDBOX_RUNNER_CPU_SECONDS: '3',
  });
});
after(async () => {
  if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) console.error(`server died early:\n${server.logs().slice(-4000)}`);
  await server?.stop();
  await rm(scratch, { recursive: true, force: true });
});

test('invalid settings stop the server with exit code 1 and every problem listed', async () => {
  const r = await runMain({
    SANDBOX_SESSIONS_ROOT: `${scratch}/invalid`,
    HOST: '127.0.0.1',
    SANDBOX_MAX_SESSIONS: 'abc',
    PORT: '99999',
    SANDBOX_SESSION_GC_INTERVAL: '0',
    SANDBOX_RUNNER_MEMORY_MB: '1.5',
  });
  assert.equal(r.code, 1, r.output);
  assert.doesNotMatch(r.output, /interpreter template ready|Server listening/, 'refused before starting anything');
  for (const name of ['SANDBOX_MAX_SESSIONS', 'PORT', 'SANDBOX_SESSION_GC_INTERVAL', 'SANDBOX_RUNNER_MEMORY_MB']) {
    assert.ok(r.output.includes(name), `${name} is listed in:\n${r.output}`);
  }
  assert.match(r.output, /abc/);
  assert.match(r.output, /99999/);
  assert.doesNotMatch(r.output, /Server listening/);
});

test('a single invalid setting is enough to refuse', async () => {
  const r = await runMain({ SANDBOX_SESSIONS_ROOT: `${scratch}/one`, HOST: '127.0.0.1', PORT: '0', SANDBOX_RUNNER_MAX_OUTPUT_BYTES: 'lots' });
  assert.equal(r.code, 1);
  assert.match(r.output, /SANDBOX_RUNNER_MAX_OUTPUT_BYTES/);
});

test('a deployment that sets SANDBOX_RUNNER_WALL_CLOCK_SECONDS below 30 (and nothing else) still starts', async () => {
  // The reference defined this setting and never refused a value; the default call
  // timeout (30 s) is simply capped by it.
  const r = await runMain({
    SANDBOX_SESSIONS_ROOT: `${scratch}/wall`,
    HOST: '127.0.0.1',
    PORT: '0',
    SANDBOX_RUNNER_WALL_CLOCK_SECONDS: '20',
    SANDBOX_WARM_POOL_SIZE: '0',
    SANDBOX_PRELOAD_MODULES: '-',
    SANDBOX_UID_BASE: String(300_000 + Math.floor(Math.random() * 2000) * 1000),
  });
  assert.doesNotMatch(r.output, /invalid configuration/, r.output);
  assert.match(r.output, /Server listening/);
  assert.equal(r.code, 0, r.output);
});

test('PORT is honoured', async () => {
  assert.equal(new URL(server.url).port, String(port));
  const r = await fetch(`http://127.0.0.1:${port}/health`);
  assert.equal(r.status, 200);
});

test('HOST is honoured', async () => {
  const hostPort = await freePort('127.0.0.2').catch(() => null);
  assert.ok(hostPort, '127.0.0.2 is usable on this machine');
  const proc = spawn(process.execPath, [MAIN], {
    env: {
      PATH: '/usr/bin:/bin',
      HOST: '127.0.0.2',
      PORT: String(hostPort),
      SANDBOX_SESSIONS_ROOT: `${scratch}/host`,
      SANDBOX_WARM_POOL_SIZE: '0',
      SANDBOX_PRELOAD_MODULES: '-',
      SANDBOX_UID_BASE: String(300_000 + Math.floor(Math.random() * 2000) * 1000),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  try {
    const deadline = Date.now() + 30_000;
    while (!out.includes('Server listening') && proc.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.match(out, new RegExp(`Server listening at http://127\\.0\\.0\\.2:${hostPort}`), out);
    assert.equal((await fetch(`http://127.0.0.2:${hostPort}/health`)).status, 200);
    await assert.rejects(fetch(`http://127.0.0.1:${hostPort}/health`), 'not listening on another address');
  } finally {
    if (proc.exitCode === null) proc.kill('SIGTERM');
    assert.equal(await exited, 0);
  }
});

test('SANDBOX_SESSION_IDLE_TIMEOUT / _MAX_LIFETIME are the defaults and ceilings; SANDBOX_MAX_SESSIONS is reported', async () => {
  const def = await api(server, 'POST', '/sessions', {});
  assert.equal(def.body.idle_timeout_seconds, 123);
  assert.equal(def.body.max_lifetime_seconds, 600);
  const big = await api(server, 'POST', '/sessions', { idle_timeout_seconds: 1000, max_lifetime_seconds: 5000 });
  assert.equal(big.body.idle_timeout_seconds, 123);
  assert.equal(big.body.max_lifetime_seconds, 600);
  assert.equal((await api(server, 'GET', '/health')).body.max_sessions, 5);
  await api(server, 'DELETE', `/sessions/${def.body.session_id}`);
  await api(server, 'DELETE', `/sessions/${big.body.session_id}`);
});

test('SANDBOX_RUNNER_WALL_CLOCK_SECONDS caps a call timeout (clamped, not refused)', async () => {
  const id = await createSession(server);
  await py(server, id, 'kept = 1');
  const t0 = Date.now();
  const r = await py(server, id, 'import time\ntime.sleep(30)', { timeout_seconds: 60 });
  const took = Date.now() - t0;
  assert.equal(r.status, 200);
  assert.equal(r.limit_exceeded, 'wall_clock');
  // (a lower bound only; "wall_clock" above says the ceiling ended it, not the 60 s asked for)
  assert.ok(took >= 1800, `cut at the 2 s ceiling, not before (${took} ms)`);
  assert.match(r.stderr, /\b2(\.0)?\s*s/, 'the ceiling, not the 60 s asked for');
  assert.match(r.stderr, /\b2(\.0)?\s*s/);
  assert.equal((await py(server, id, 'print(kept)')).stdout, '1');
});

test('SANDBOX_RUNNER_MEMORY_MB: a large allocation fails with MemoryError and is reported as the memory limit', async () => {
  const id = await createSession(server);
  const r = await py(server, id, 'x = bytearray(512 * 1024 * 1024)');
  assert.equal(r.status, 200);
  assert.notEqual(r.return_code, 0);
  assert.match(r.stderr, /MemoryError/);
  assert.equal(r.limit_exceeded, 'memory');
  assert.match(r.stderr, /256/);
  assert.equal((await py(server, id, 'y = bytearray(16 * 1024 * 1024)\nprint(len(y))')).stdout, String(16 * 1024 * 1024));
});

test('SANDBOX_RUNNER_FSIZE_MB: a file larger than the limit cannot be written', async () => {
  const id = await createSession(server);
  const r = await py(server, id, "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (2 * 1024 * 1024))");
  assert.equal(r.status, 200);
  assert.notEqual(r.return_code, 0);
  assert.equal(r.limit_exceeded, 'file_size');
  const small = await py(server, id, "open('ok.bin', 'wb').write(b'x' * 1000)\nprint('ok')");
  assert.equal(small.stdout, 'ok');
});

test('SANDBOX_RUNNER_NOFILE: opening more files than the limit fails', async () => {
  const id = await createSession(server);
  const r = await py(server, id, "fs = []\ntry:\n    for i in range(200):\n        fs.append(open('/dev/null'))\nexcept OSError as e:\n    print(len(fs) < 64, e.errno)");
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal(r.stdout, 'True 24');
});

test('SANDBOX_RUNNER_CPU_SECONDS sets the CPU-time limit of the session processes', async () => {
  const id = await createSession(server);
  const own = await py(server, id, 'import resource\nprint(resource.getrlimit(resource.RLIMIT_CPU))');
  // soft = the setting (SIGXCPU, reported as the cpu limit); hard one second later (SIGKILL)
  assert.equal(own.stdout, '(3, 4)');
  const child = await py(server, id, 'import subprocess\nr = subprocess.run(["bash", "-c", "ulimit -t"], capture_output=True, text=True)\nprint(r.stdout.strip())');
  assert.equal(child.stdout, '3');
});
