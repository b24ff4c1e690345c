/**
 * Hostile inputs 44-45 of docs/threat-model.md (network): no network at all. The test listens
 * on the host (TCP and UDP on loopback and on a non-loopback address when there is one,
 * an abstract Unix socket, a Unix socket file) and counts what arrives: besides every
 * connect failing inside, nothing may reach the host side. All targets but the two
 * unroutable public addresses are loopback or this machine; nothing leaves it.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import dgram from 'node:dgram';
import { networkInterfaces } from 'node:os';
import { attacker, finishCase, py, randomText, sh, startSuite, stopSuite, waitFor, type Suite } from './support.js';

let S: Suite;
const hits = { tcp: 0, udp: 0, abstract: 0, file: 0 };
let tcp: net.Server;
let tcpAll: net.Server;
let udp: dgram.Socket;
let abs: net.Server;
let fileSock: net.Server;
let tcpPort = 0;
let tcpAllPort = 0;
let udpPort = 0;
const ABSTRACT = randomText('secsuite-abstract');
let hostIp: string | null = null;
let sockPath = '';

before(async () => {
  S = await startSuite();
  const listen = (srv: net.Server, count: keyof typeof hits, ...args: unknown[]) =>
    new Promise<void>((resolve) => {
      srv.on('connection', (c) => {
        hits[count]++;
        c.destroy();
      });
      (srv.listen as (...a: unknown[]) => void)(...args, resolve);
    });
  tcp = net.createServer();
  await listen(tcp, 'tcp', 0, '127.0.0.1');
  tcpPort = (tcp.address() as net.AddressInfo).port;
  tcpAll = net.createServer();
  await listen(tcpAll, 'tcp', 0, '0.0.0.0');
  tcpAllPort = (tcpAll.address() as net.AddressInfo).port;
  abs = net.createServer();
  await listen(abs, 'abstract', `\0${ABSTRACT}`);
  sockPath = `${S.hostDir}/host.sock`;
  fileSock = net.createServer();
  await listen(fileSock, 'file', sockPath);
  udp = dgram.createSocket('udp4');
  udp.on('message', () => hits.udp++);
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', r));
  udpPort = udp.address().port;
  hostIp =
    Object.values(networkInterfaces())
      .flat()
      .find((i) => i && i.family === 'IPv4' && !i.internal)?.address ?? null;
});

after(async () => {
  await stopSuite(S);
  for (const s of [tcp, tcpAll, abs, fileSock]) await new Promise((r) => s?.close(r));
  udp?.close();
});

function probeScript(serverPort: number): string {
  const targets: [string, string, number][] = [
    ['public v4', '1.1.1.1', 443],
    ['metadata', '169.254.169.254', 80],
    ['rfc1918', '10.0.0.1', 80],
    ['server port', '127.0.0.1', serverPort],
    ['host listener', '127.0.0.1', tcpPort],
    ['host any-addr listener', '127.0.0.1', tcpAllPort],
    ['server port v6', '::1', serverPort],
    ['public v6', '2606:4700:4700::1111', 443],
  ];
  if (hostIp) targets.push(['host address', hostIp, tcpAllPort], ['server via host address', hostIp, serverPort]);
  return `import socket, errno, json
res = {}
for name, host, port in ${JSON.stringify(targets)}:
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port)); res[name] = 'CONNECTED'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
for name, host, port in (('udp dns', '8.8.8.8', 53), ('udp host listener', '127.0.0.1', ${udpPort})):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b'x', (host, port)); res[name] = 'SENT'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e))
    u.close()
try:
    socket.getaddrinfo('example.com', 443); res['dns'] = 'RESOLVED'
except socket.gaierror as e:
    res['dns'] = 'gaierror'
for name, path in (('abstract host socket', '\\0${ABSTRACT}'), ('x11 abstract', '\\0/tmp/.X11-unix/X0'), ('host socket file', ${JSON.stringify(sockPath)}), ('docker', '/run/docker.sock'), ('dbus', '/run/dbus/system_bus_socket')):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path); res[name] = 'CONNECTED'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e))
    s.close()
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); res['raw icmp'] = 'OPENED'
except OSError as e:
    res['raw icmp'] = errno.errorcode.get(e.errno)
res['interfaces'] = sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:])
print(json.dumps(res))`;
}

function assertNoNetwork(res: Record<string, unknown>, where: string): void {
  const unreachable = ['ENETUNREACH', 'EHOSTUNREACH', 'EADDRNOTAVAIL'];
  for (const k of ['public v4', 'metadata', 'rfc1918', 'public v6', 'host address', 'server via host address', 'udp dns']) {
    if (k in res) assert.ok(unreachable.includes(String(res[k])), `${where}: ${k} -> ${String(res[k])}`);
  }
  for (const k of ['server port', 'host listener', 'host any-addr listener']) assert.equal(res[k], 'ECONNREFUSED', `${where}: ${k} (loopback is the sandbox's own)`);
  assert.ok(['ECONNREFUSED', 'EADDRNOTAVAIL', 'ENETUNREACH'].includes(String(res['server port v6'])), `${where}: server port v6 -> ${String(res['server port v6'])}`);
  assert.equal(res.dns, 'gaierror', `${where}: DNS`);
  assert.equal(res['abstract host socket'], 'ECONNREFUSED', `${where}: the host's abstract socket namespace is not shared`);
  assert.equal(res['x11 abstract'], 'ECONNREFUSED');
  for (const k of ['host socket file', 'docker', 'dbus']) assert.equal(res[k], 'ENOENT', `${where}: ${k}`);
  assert.equal(res['raw icmp'], 'EPERM');
  assert.deepEqual(res.interfaces, ['lo'], `${where}: only loopback`);
}

test('#44 #45 no network from the REPL: public, metadata, RFC 1918, the server port, host listeners, DNS, abstract and host Unix sockets', async (t) => {
  const a = await attacker(S, t);
  const port = Number(new URL(S.server.url).port);
  const r = await py(S.server, a.id, probeScript(port), { timeout_seconds: 60 });
  assert.equal(r.return_code, 0, r.stderr);
  assertNoNetwork(JSON.parse(r.stdout) as Record<string, unknown>, 'REPL');
  await finishCase(S, a);
});

test('#44 #45 no network from bash: a child Python, curl, /dev/tcp', async (t) => {
  const a = await attacker(S, t);
  const port = Number(new URL(S.server.url).port);
  const r = await sh(S.server, a.id, `cat > /tmp/net.py <<'PYEOF'\n${probeScript(port)}\nPYEOF\npython3 /tmp/net.py`, { timeout_seconds: 60 });
  assert.equal(r.return_code, 0, r.stderr);
  assertNoNetwork(JSON.parse(r.stdout) as Record<string, unknown>, 'bash');
  const c = await sh(
    S.server,
    a.id,
    `curl -sS -m 3 http://127.0.0.1:${port}/health; echo curl=$?; curl -sS -m 3 https://example.com; echo curl2=$?; (exec 3<>/dev/tcp/127.0.0.1/${port}) 2>&1; echo tcp=$?; (exec 3<>/dev/tcp/1.1.1.1/80) 2>&1; echo tcp2=$?`,
    { timeout_seconds: 30 },
  );
  assert.match(c.stdout, /curl=7\n/, c.stdout + c.stderr);
  assert.match(c.stdout, /curl2=6\n/, 'no DNS for curl');
  assert.match(c.stdout, /Connection refused[\s\S]*tcp=1\n/);
  assert.match(c.stdout, /Network is unreachable[\s\S]*tcp2=1\n/);
  assert.doesNotMatch(c.stdout, /"status"/, 'the server API answered inside the sandbox');
  await finishCase(S, a);
});

/** Every inherited socket of the process (stdio, the control channel): its network
 * namespace against one made inside, and an abstract name bound on it. */
function inheritedSocketsScript(marker: string): string {
  return `import json, os, socket
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
mine = own.getsockopt(socket.SOL_SOCKET, 71, 8)
res = {'sockets': 0, 'foreign': [], 'bound': []}
for name in os.listdir('/proc/self/fd'):
    fd = int(name)
    try:
        if fd == own.fileno() or not os.readlink(f'/proc/self/fd/{fd}').startswith('socket:'):
            continue
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    res['sockets'] += 1
    if s.getsockopt(socket.SOL_SOCKET, 71, 8) != mine:
        res['foreign'].append(fd)
    if s.family == socket.AF_UNIX:
        try:
            s.bind(b'\\0${marker}-%d' % fd)
            res['bound'].append(fd)
        except OSError:
            pass
    s.close()
print(json.dumps(res))`;
}

async function hostUnixNames(marker: string): Promise<string[]> {
  const { readFile } = await import('node:fs/promises');
  return (await readFile('/proc/net/unix', 'utf8')).split('\n').filter((l) => l.includes(marker));
}

test('#45 inherited descriptors: no socket of the host network namespace reaches a sandbox (REPL, bash, a bubblewrap interpreter)', async (t) => {
  const a = await attacker(S, t);
  const marker = randomText('secsuite-fdbind');
  const repl = JSON.parse((await py(S.server, a.id, inheritedSocketsScript(marker))).stdout) as { sockets: number; foreign: number[] };
  assert.ok(repl.sockets >= 1, 'the REPL sees its control channel: the check saw a socket');
  assert.deepEqual(repl.foreign, [], 'REPL: every inherited socket is in the sandbox network namespace');
  const b = await sh(S.server, a.id, `cat > /tmp/fds.py <<'PYEOF'\n${inheritedSocketsScript(marker)}\nPYEOF\npython3 /tmp/fds.py`);
  assert.equal(b.return_code, 0, b.stderr);
  assert.deepEqual((JSON.parse(b.stdout) as { foreign: number[] }).foreign, [], 'bash: no inherited socket of another namespace');
  // interpreters in bubblewrap (no template)
  const { startServer, createSession } = await import('../helpers/server.js');
  const plain = await startServer({ SANDBOX_PYTHON_TEMPLATE: 'off' });
  t.after(() => plain.stop());
  const id = await createSession(plain);
  const bw = JSON.parse((await py(plain, id, inheritedSocketsScript(marker))).stdout) as { foreign: number[] };
  assert.deepEqual(bw.foreign, [], 'bubblewrap interpreter: no inherited socket of another namespace');
  assert.deepEqual(await hostUnixNames(marker), [], 'no abstract name bound inside shows up in the host namespace');
  await finishCase(S, a);
});

test('nothing reached the host-side listeners', async () => {
  assert.deepEqual(hits, { tcp: 0, udp: 0, abstract: 0, file: 0 });
  // The listeners do work from the host: the zero above is meaningful.
  await new Promise<void>((resolve, reject) => {
    const c = net.connect(tcpPort, '127.0.0.1', () => {
      c.destroy();
      resolve();
    });
    c.on('error', reject);
  });
  await new Promise<void>((resolve, reject) => {
    const c = net.connect(`\0${ABSTRACT}`, () => {
      c.destroy();
      resolve();
    });
    c.on('error', reject);
  });
  // (the listeners count a connection when they accept it: wait for that event, not a clock)
  assert.ok(await waitFor(() => hits.tcp >= 1 && hits.abstract >= 1, 10_000), `the host's own connections arrive: ${JSON.stringify(hits)}`);
  assert.equal(hits.tcp, 1);
  assert.equal(hits.abstract, 1);
});
