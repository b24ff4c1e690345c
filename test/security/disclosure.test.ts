/**
 * Hostile inputs 40-43 of docs/threat-model.md (information disclosure): what sandboxed code can learn about
 * the host and the server. The server is started with a secret in its environment
 * (SECRET_TOKEN_MARKER) and a programmatic-tools registration carries a second secret
 * (the bearer token and a secret path in the callback URL); neither may be readable from
 * inside a sandbox, through any file, environment or process listing.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { api, attacker, download, finishCase, listFiles, py, randomText, sh, startSuite, stopSuite, upload, type Suite } from './support.js';

const SECRET = randomText('SECRETENV');
const TOKEN = randomText('BEARERTOKEN');
const URL_SECRET = randomText('URLSECRET');
let S: Suite;
let router: http.Server;
let routerUrl: string;
const routerCalls: { auth: string | undefined; body: string }[] = [];

before(async () => {
  S = await startSuite({ SECRET_TOKEN_MARKER: SECRET });
  router = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      routerCalls.push({ auth: req.headers.authorization, body });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ content: 'pong' }));
    });
  });
  await new Promise<void>((r) => router.listen(0, '127.0.0.1', r));
  routerUrl = `http://127.0.0.1:${(router.address() as { port: number }).port}/${URL_SECRET}`;
});

after(async () => {
  await stopSuite(S);
  await new Promise((r) => router?.close(r));
});

/** Greps every readable file the sandbox sees that could carry a secret. The needle is
 * passed reversed, so the command line of the grep itself never contains it. */
const GREP_ALL = (needle: string) =>
  `N="$(echo '${[...needle].reverse().join('')}' | rev)"; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline /proc/self/mountinfo /proc/1/mountinfo; do if grep -qaF "$N" "$f" 2>/dev/null; then echo "FOUND in $f"; fi; done; grep -rlasF "$N" /etc /opt /tmp /workspace /dev/shm /usr/local 2>/dev/null | sed 's/^/FOUND in /'; echo scanned`;

test('#40 the server environment is nowhere inside: env, os.environ, /proc/*/environ, /proc/1/environ', async (t) => {
  const serverEnv = await readFile(`/proc/${S.server.proc.pid}/environ`, 'utf8');
  assert.ok(serverEnv.includes(SECRET), 'the secret really is in the server environment');
  const a = await attacker(S, t);
  const b = await sh(S.server, a.id, `env; echo ---; tr '\\0' '\\n' < /proc/1/environ; echo ---; ${GREP_ALL(SECRET)}`);
  assert.doesNotMatch(b.stdout, new RegExp(SECRET));
  assert.doesNotMatch(b.stdout, /FOUND/);
  assert.match(b.stdout, /scanned/);
  const [env, init] = b.stdout.split('---\n') as [string, string];
  const names = env
    .trim()
    .split('\n')
    .map((l) => l.split('=')[0]);
  for (const n of names) assert.doesNotMatch(n ?? '', /^(SANDBOX_|SECRET|PORT|HOST$|NODE)/, `server setting ${n} leaked into the sandbox`);
  // A command's init is the command template's, which is not dumpable (its environ cannot
  // be read at all), or bwrap's, out of view (its /proc/1 is covered: test #K19).
  assert.equal(init.trim(), '', `the init's environment is readable: ${init}`);
  assert.match(b.stderr, /\/proc\/1\/environ: (Permission denied|No such file)/);
  const p = await py(
    S.server,
    a.id,
    "import os\nprint(sorted(k for k in os.environ if k.startswith(('SANDBOX', 'SECRET', 'NODE', 'PORT'))), any('${SECRET}' in v for v in os.environ.values()))\ntry:\n  print(open('/proc/1/environ').read().replace(chr(0), ' ').strip())\nexcept (PermissionError, FileNotFoundError):\n  print('init environ unreadable')",
  );
  // The interpreter's init is bwrap's (out of view: its /proc/1 is covered) or, forked
  // from the template, not dumpable (its environ cannot be read at all).
  assert.match(p.stdout, /^\[\] False\ninit environ unreadable$/);
  await finishCase(S, a);
});

test('#41 /proc/1/cmdline and mountinfo show no options, secrets or other sessions; API errors carry no host paths', async (t) => {
  const a = await attacker(S, t);
  const victimName = S.victimBox.dir.slice(S.sessionsRoot.length + 1);
  const b = await sh(S.server, a.id, "tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/self/mountinfo");
  const [cmdline, mountinfo] = [b.stdout.split('\n')[0]!, b.stdout.split('\n').slice(1).join('\n')];
  // the command template's (no option at all), or bwrap's, out of view (its /proc/1 is
  // covered: test #K19)
  assert.match(
    cmdline,
    /^(|\/usr\/bin\/python3 -I -u -X faulthandler -c .*"\/opt\/sandbox\/zygote\.py".* commands )$/,
    `init's command line: ${cmdline}`,
  );
  for (const opt of ['--bind', '--setenv', '--seccomp', '--ro-bind', '--uid']) assert.ok(!cmdline.includes(opt), `bwrap option ${opt} visible`);
  for (const s of [SECRET, victimName, S.sessionsRoot, S.hostDir]) {
    assert.ok(!b.stdout.includes(s), `${s} visible in /proc/1/cmdline or mountinfo`);
  }
  assert.match(mountinfo, / \/workspace /);
  // Error bodies of the API never name host paths.
  const errors = [await download(S.server, a.id, 'missing.txt'), await download(S.server, a.id, '../../etc/passwd'), await download(S.server, a.id, '.')];
  await sh(S.server, a.id, 'ln -s /etc/passwd /workspace/l; mkfifo /workspace/f; head -c 100 /dev/zero > /workspace/z');
  errors.push(await download(S.server, a.id, 'l'), await download(S.server, a.id, 'f'), await download(S.server, a.id, 'z/x'));
  const bodies = errors.map((e) => e.body.toString());
  bodies.push(JSON.stringify((await listFiles(S.server, a.id, 'nope')).body));
  bodies.push(JSON.stringify((await upload(S.server, a.id, 'x', { path: 'z/x' })).body));
  bodies.push(JSON.stringify((await api(S.server, 'POST', `/sessions/${a.id}/exec`, { tool: 'text_editor_code_execution', input: { command: 'view', path: 'missing' } })).body));
  for (const body of bodies) {
    for (const s of [S.sessionsRoot, S.hostDir, victimName, '/proc/self/fd', 'box_']) assert.ok(!body.includes(s), `an error body names ${s}: ${body.slice(0, 300)}`);
    assert.doesNotMatch(body, /at .*\.js:\d+/, 'no stack trace');
  }
  await finishCase(S, a);
});

test("#41b an interpreter's own memory holds nothing of the host's mount table: no other session's box, though its template read the table to build it", async (t) => {
  // (red team C: the whole host table, every session of every server on the host, stayed
  // in the freed memory of each interpreter and could be read back from /proc/self/mem)
  const a = await attacker(S, t);
  const own = a.box.dir.slice(S.sessionsRoot.length + 1);
  // a new interpreter, built while the victim's box (and any other) is mounted
  assert.equal((await py(S.server, a.id, 'import os\nos._exit(3)')).interpreter_restarted, true);
  const scan = await py(
    S.server,
    a.id,
    [
      'import os, re',
      'names = set()',
      "fd = os.open('/proc/self/mem', os.O_RDONLY)",
      "for line in open('/proc/self/maps'):",
      '    f = line.split()',
      "    if 'r' not in f[1] or (len(f) > 5 and not f[5].startswith('[heap')):",
      '        continue',
      "    lo, hi = (int(x, 16) for x in f[0].split('-'))",
      '    try:',
      '        data = os.pread(fd, hi - lo, lo)',
      '    except OSError:',
      '        continue',
      // (the pattern is spelt so that this cell's own code does not match it)
      "    names.update(m.group(0).decode() for m in re.finditer(b'bo' + b'x_[0-9a-f]{24}', data))",
      'print(sorted(names))',
    ].join('\n'),
  );
  assert.equal(scan.return_code, 0, scan.stderr);
  const others = (JSON.parse(scan.stdout.replaceAll("'", '"')) as string[]).filter((n) => n !== own);
  assert.deepEqual(others, [], `other boxes' names in the interpreter's memory (the victim is ${S.victimBox.dir.slice(S.sessionsRoot.length + 1)})`);
  await finishCase(S, a);
});

test('#42 only the sandbox processes, no /sys, no secrets files, a synthetic /etc, the server port invisible', async (t) => {
  const a = await attacker(S, t);
  const port = Number(new URL(S.server.url).port);
  const b = await sh(
    S.server,
    a.id,
    [
      "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo",
      "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '[n]ode'; true",
      'ls /sys 2>&1; ls /etc/shadow /root/.ssh /home /etc/ssh /etc/sudoers /run /var/run/docker.sock 2>&1 | grep -c "No such file"',
      'ls /etc | tr "\\n" " "; echo',
      'cat /etc/passwd',
      'cat /proc/sys/kernel/hostname',
      'cat /proc/net/tcp /proc/net/tcp6 2>/dev/null',
    ].join('\n'),
  );
  const lines = b.stdout.split('\n');
  const pids = lines[0]!.trim().split(/\s+/).map(Number);
  assert.ok(pids.length <= 8 && pids.includes(1) && pids.every((p) => p < 100), `only sandbox pids: ${lines[0]}`);
  assert.equal(lines[1], '0', 'no node process is visible');
  assert.match(b.stdout, /ls: cannot access '\/sys': No such file or directory/);
  assert.match(b.stdout, /^7$/m, 'shadow, ssh keys, /home, sudoers, /run and the docker socket are absent');
  for (const f of ['shadow', 'hostname', 'hosts', 'resolv.conf', 'ssh', 'sudoers', 'machine-id', 'environment']) {
    assert.ok(!` ${lines[3]} `.includes(` ${f} `), `/etc/${f} is visible: ${lines[3]}`);
  }
  assert.equal(b.stdout.split('\n').filter((l) => /^\w[\w-]*:x:\d+:/.test(l)).length, 2, 'passwd has the sandbox user and nobody only');
  assert.match(b.stdout, /^sandbox$/m, 'own uts namespace');
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')} `;
  assert.ok(!b.stdout.includes(hexPort), "the server's listening socket is not in the sandbox's /proc/net/tcp");
  const p = await py(S.server, a.id, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))");
  const replPids = JSON.parse(p.stdout) as number[];
  assert.ok(replPids.length <= 4 && replPids[0] === 1, `REPL sandbox pids: ${p.stdout}`);
  await finishCase(S, a);
});

test('#43 open descriptors: only stdio, the REPL control channel and its own pipes; nothing inherited from the server', async (t) => {
  const a = await attacker(S, t);
  // fds 0-2 are /dev/null and the stdout/stderr channels to the server (pipes or socket
  // pairs, as Node makes them); ls's own directory fd is the only other one expected.
  const b = await sh(S.server, a.id, "ls -l /proc/self/fd/ | awk 'NR>1{print $9, $11}'; echo ---; ls -l /proc/1/fd/ | awk 'NR>1{print $9, $11}'");
  const [own, init] = b.stdout.split('---\n').map((x) =>
    x
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  ) as [[string, string][], [string, string][]];
  const extra = own.filter(([fd, target]) => Number(fd) > 2 && !/^\/proc\/\d+\/fd$/.test(target));
  assert.deepEqual(extra, [], `descriptors a bash command inherited beyond stdio (a server or launcher descriptor leaks into every sandbox):\n${b.stdout}`);
  for (const [fd, target] of init) {
    if (Number(fd) > 2) assert.match(target, /^anon_inode:/, `the sandbox init holds ${fd} -> ${target}`);
  }
  const p = await py(
    S.server,
    a.id,
    "import os\nfor fd in sorted(os.listdir('/proc/self/fd'), key=int):\n    try:\n        print(fd, os.readlink('/proc/self/fd/' + fd))\n    except OSError:\n        pass",
  );
  const entries = p.stdout.split('\n').map((l) => l.split(' ') as [string, string]);
  const sockets = entries.filter(([fd, x]) => Number(fd) > 2 && x.startsWith('socket:'));
  assert.ok(sockets.length <= 2, `the REPL holds ${sockets.length} sockets beyond stdio (only its control channel is expected): ${p.stdout}`);
  // (an interpreter the template did not build in time, under load, runs in bubblewrap: its
  // control channel is a pair of the server's FIFOs and its stdin the session's null device,
  // named under the sessions root)
  for (const [fd, x] of entries)
    assert.ok(
      /^(\/dev\/null|pipe:\[\d+\]|socket:\[\d+\]|\/proc\/\d+\/fd|anon_inode:.*)$/.test(x) ||
        new RegExp(`^${S.sessionsRoot}/(\\.pipes/[0-9a-f-]+|box_[0-9a-f]+/devices/null)$`).test(x),
      `unexpected REPL descriptor ${fd} -> ${x}`,
    );
  // Nothing in the sandbox's network namespace listens or connects over TCP.
  const net = await py(S.server, a.id, "print(open('/proc/net/tcp').read().count('\\n') - 1, open('/proc/net/tcp6').read().count('\\n') - 1)");
  assert.equal(net.stdout, '0 0');
  await finishCase(S, a);
});

test('#40 programmatic tools: the token and callback URL never enter the sandbox; another session cannot call them', async (t) => {
  const a = await attacker(S, t);
  const reg = await api(S.server, 'POST', `/sessions/${a.id}/programmatic-tools/register`, { callback_url: routerUrl, token: TOKEN, tools: [{ name: 'ping', doc: 'ping' }] });
  assert.equal(reg.status, 200, JSON.stringify(reg.body));
  const call = await py(S.server, a.id, 'from _platform_tools import ping\nprint(ping(x=1))');
  assert.equal(call.stdout, 'pong', call.stderr);
  assert.equal(routerCalls.at(-1)?.auth, `Bearer ${TOKEN}`, 'the server adds the token itself');
  for (const needle of [TOKEN, URL_SECRET]) {
    const g = await sh(S.server, a.id, GREP_ALL(needle));
    assert.doesNotMatch(g.stdout, /FOUND/, `${needle} readable inside: ${g.stdout}`);
    assert.match(g.stdout, /scanned/);
    const p = await py(S.server, a.id, `import gc, sys\nhit = any('${needle}' in repr(o) for o in gc.get_objects() if isinstance(o, (str, bytes, dict)))\nprint(hit)`);
    assert.equal(p.stdout, 'False', `${needle} is in the interpreter's memory`);
  }
  // The victim (another session) has no tools and cannot reach this registration.
  const v = await py(S.server, S.victim, 'try:\n    from _platform_tools import ping\n    print(ping(x=1))\nexcept Exception as e:\n    print(type(e).__name__)');
  assert.match(v.stdout, /ImportError|ModuleNotFoundError|ToolError/);
  assert.equal(routerCalls.length, 1, 'the router was called once, by the registered session only');
  await finishCase(S, a);
});
