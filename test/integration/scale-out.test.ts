/**
 * Scale-out by session id on a standard proxy: three real servers (SANDBOX_REPLICA_ID r0,
 * r1, r2) behind Debian's nginx on loopback, with the shipped routes
 * (deploy/nginx/otari-routes.conf) and a loopback version of the replica map. Every
 * contract operation goes through the proxy; then one replica is SIGKILLed: its sessions
 * answer 404, the others keep working, and new sessions land on live replicas.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { api, startServer, type TestServer } from '../helpers/server.js';

const ROUTES = fileURLToPath(new URL('../../../deploy/nginx/otari-routes.conf', import.meta.url));
const NAMES = ['r0', 'r1', 'r2'];
const replicas = new Map<string, TestServer>();
let nginx: ChildProcess;
let dir: string;
let proxy: string;
let sweeper: TestServer | undefined;

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

before(async () => {
  for (const name of NAMES) replicas.set(name, await startServer({ SANDBOX_REPLICA_ID: name, SANDBOX_WARMUP: '0', SANDBOX_MAX_SESSIONS: '16' }));
  dir = await mkdtemp(`${tmpdir()}/sbx-nginx-`);
  const port = await freePort();
  const hostPort = (s: TestServer) => new URL(s.url).host;
  const conf = `daemon off;
master_process on;
worker_processes 1;
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  map $otari_replica $otari_backend {
${NAMES.map((n) => `    ${n} ${hostPort(replicas.get(n)!)};`).join('\n')}
    default "";
  }
  upstream otari_any {
${NAMES.map((n) => `    server ${hostPort(replicas.get(n)!)};`).join('\n')}
  }
  map $host $otari_any { default otari_any; }
  server {
    listen 127.0.0.1:${port};
    include ${ROUTES};
  }
}
`;
  await writeFile(`${dir}/nginx.conf`, conf);
  nginx = spawn('/usr/sbin/nginx', ['-p', dir, '-c', `${dir}/nginx.conf`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  nginx.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  proxy = `http://127.0.0.1:${port}`;
  // Up when /health answers through it (or nginx exits, with its complaint).
  for (;;) {
    if (nginx.exitCode !== null) throw new Error(`nginx exited: ${out}`);
    const ok = await fetch(`${proxy}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
});

after(async () => {
  if (nginx && nginx.exitCode === null) {
    const exited = new Promise((r) => nginx.once('exit', r));
    nginx.kill('SIGQUIT');
    await exited;
  }
  // The sweeper first: it runs on the dead replica's root, which that replica's stop removes.
  await sweeper?.stop();
  await Promise.all([...replicas.values()].map((s) => s.stop()));
  if (dir) await rm(dir, { recursive: true, force: true });
});

const call = (method: string, path: string, body?: unknown) => api({ url: proxy }, method, path, body);

const replicaOf = (id: string) => /^sbx_([a-z0-9-]+)_[0-9a-f]{24}$/.exec(id)?.[1];
const sessions: string[] = [];

test('creates spread over the replicas, and every contract operation works through the proxy', async () => {
  for (let i = 0; i < 6; i++) {
    const r = await call('POST', '/sessions', {});
    assert.equal(r.status, 201);
    sessions.push(r.body.session_id);
  }
  assert.deepEqual([...new Set(sessions.map(replicaOf))].sort(), NAMES, 'round robin reaches every replica');
  const health = await call('GET', '/health');
  assert.ok(NAMES.includes(health.body.replica), `/health names its replica: ${health.body.replica}`);

  for (const name of NAMES) {
    const id = sessions.find((s) => replicaOf(s) === name)!;
    const handle = await call('GET', `/sessions/${id}`);
    assert.equal(handle.status, 200);
    assert.equal(handle.body.session_id, id);
    const ran = await call('POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code: `x = '${name}'\nprint(x)` } });
    assert.equal(ran.body.result_block.content.stdout.trim(), name);
    // State persists on the one replica that holds the session.
    const again = await call('POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code: 'print(x * 2)' } });
    assert.equal(again.body.result_block.content.stdout.trim(), name + name);
    const bash = await call('POST', `/sessions/${id}/exec`, { tool: 'bash_code_execution', input: { command: 'echo hi > b.txt && cat b.txt' } });
    assert.equal(bash.body.result_block.content.stdout.trim(), 'hi');
    const edit = await call('POST', `/sessions/${id}/exec`, { tool: 'text_editor_code_execution', input: { command: 'create', path: 'e.txt', file_text: 'edited\n' } });
    assert.equal(edit.status, 200);
    const form = new FormData();
    form.append('path', 'up.txt');
    form.append('file', new Blob([`uploaded to ${name}`]), 'up.txt');
    assert.equal((await fetch(`${proxy}/sessions/${id}/files`, { method: 'POST', body: form })).status, 201);
    const down = await fetch(`${proxy}/sessions/${id}/files?path=up.txt`);
    assert.equal(await down.text(), `uploaded to ${name}`);
    const list = await call('GET', `/sessions/${id}/files/list`);
    assert.equal(list.status, 200);
    assert.ok(JSON.stringify(list.body).includes('e.txt'));
    const tools = await call('POST', `/sessions/${id}/programmatic-tools/register`, { callback_url: 'http://127.0.0.1:9/none', tools: [] });
    assert.notEqual(tools.status, 404, JSON.stringify(tools.body));
  }
  // Ids of no replica, and of a replica that never existed: 404, never a 5xx.
  assert.equal((await call('GET', '/sessions/nope')).status, 404);
  const unknown = await call('GET', `/sessions/sbx_r9_${'0'.repeat(24)}`);
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body.code, 'SBX_SESSION_NOT_FOUND');
  const spare = sessions.pop()!;
  assert.equal((await call('DELETE', `/sessions/${spare}`)).status, 204);
  assert.equal((await call('GET', `/sessions/${spare}`)).status, 404);
});

test('a SIGKILLed replica takes only its own sessions; new sessions land on live replicas', async () => {
  const dead = replicas.get('r1')!;
  dead.proc.kill('SIGKILL');
  await new Promise((r) => (dead.proc.exitCode !== null || dead.proc.signalCode !== null ? r(null) : dead.proc.once('exit', r)));
  for (const id of sessions) {
    const r = await call('POST', `/sessions/${id}/exec`, { tool: 'code_execution', input: { code: 'print("alive")' } });
    if (replicaOf(id) === 'r1') {
      assert.equal(r.status, 404, `${id}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, 'SBX_SESSION_NOT_FOUND');
      assert.equal((await call('GET', `/sessions/${id}`)).status, 404);
    } else {
      assert.equal(r.status, 200, `${id}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.result_block.content.stdout.trim(), 'alive');
    }
  }
  const fresh: string[] = [];
  for (let i = 0; i < 6; i++) {
    const r = await call('POST', '/sessions', {});
    assert.equal(r.status, 201, JSON.stringify(r.body));
    fresh.push(r.body.session_id);
  }
  assert.deepEqual([...new Set(fresh.map(replicaOf))].sort(), ['r0', 'r2']);
  for (const id of fresh) assert.equal((await call('DELETE', `/sessions/${id}`)).status, 204);
  // What the dead replica left (folders, mounts, cgroups) is swept by the next server on
  // its root and uid range, as after any SIGKILL.
  sweeper = await startServer({ SANDBOX_SESSIONS_ROOT: dead.sessionsRoot, SANDBOX_UID_BASE: String(dead.uidBase), SANDBOX_WARM_POOL_SIZE: '0', SANDBOX_WARMUP: '0' });
});
