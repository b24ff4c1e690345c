/**
 * The interpreter template (sandbox-python/zygote.py): as root, session interpreters are
 * forked from one process that imported the preload modules, and each child builds its
 * own sandbox. These tests check that such an interpreter is as isolated as a
 * bubblewrap one, that nothing of the template (or of other sessions) is reachable from
 * it, that sessions forked from one template share nothing they can observe, that the
 * server survives the template's death, and that SANDBOX_PYTHON_TEMPLATE=off still
 * gives working bubblewrap interpreters.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { startServer, api, createSession, py, sh, waitFor, type TestServer } from '../helpers/server.js';

const TEMPLATE_PROTECTION = 'interpreters forked from a template that has the preload modules imported, each building the same sandbox';

/** Host pids whose real uid is `uid`. */
async function pidsOfUid(uid: number): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    const m = /^Uid:\s+(\d+)/m.exec(status);
    const state = /^State:\s+(\S)/m.exec(status)?.[1];
    if (m && Number(m[1]) === uid && state !== 'Z') out.push(Number(name));
  }
  return out;
}

/** The template: the server's child running zygote.py. */
async function templatePid(server: TestServer): Promise<number | null> {
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    if (Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]) !== server.proc.pid) continue;
    const cmd = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('zygote.py')) return Number(name);
  }
  return null;
}

/** The host uid a session runs as (its user namespace maps 1000 to it). */
async function hostUid(server: TestServer, id: string): Promise<number> {
  const r = await py(server, id, "print(open('/proc/self/uid_map').read().split()[1])");
  assert.equal(r.return_code, 0, r.stderr);
  return Number(r.stdout);
}

describe('interpreters forked from the template', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ SANDBOX_PRELOAD_MODULES: 'numpy,pandas,matplotlib.pyplot', SANDBOX_WARM_POOL_SIZE: '2' });
  });
  after(() => server.stop());

  it('are announced in /health and come with the preload modules imported', async () => {
    const h = await api(server, 'GET', '/health');
    assert.ok(h.body.isolation.protections.includes(TEMPLATE_PROTECTION), JSON.stringify(h.body.isolation.protections));
    const id = await createSession(server);
    const r = await py(
      server,
      id,
      "import sys\nprint(all(m in sys.modules for m in ('numpy', 'pandas', 'matplotlib.pyplot')))\nimport pandas as pd\nprint(pd.DataFrame({'a': [1, 2]}).a.sum())",
    );
    assert.equal(r.stdout, 'True\n3', r.stderr);
  });

  it('run in a sandbox of their own: uid 1000 in a user namespace, no capabilities, no_new_privs, seccomp, own pid namespace, read-only system', async () => {
    const id = await createSession(server);
    const r = await py(
      server,
      id,
      [
        'import os, socket',
        "st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())",
        "print(st['Uid'].split(), st['Gid'].split())",
        "print(st['CapEff'].strip(), st['CapPrm'].strip(), st['CapBnd'].strip(), st['NoNewPrivs'].strip(), st['Seccomp'].strip())",
        "print(os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), socket.gethostname())",
        "for p in ('/x', '/usr/x', '/etc/x', '/opt/sandbox/x'):",
        '    try:',
        "        open(p, 'w')",
        "        print('writable', p)",
        '    except OSError:',
        '        pass',
        "open('/workspace/ok', 'w').write('ok')",
        "print(sorted(os.listdir('/')))",
        's = socket.socket()',
        's.settimeout(1)',
        'try:',
        "    s.connect(('1.1.1.1', 443))",
        "    print('network reachable')",
        'except OSError:',
        "    print('no network')",
        'srv = socket.socket()',
        "srv.bind(('127.0.0.1', 0))",
        'srv.listen()',
        "c = socket.create_connection(srv.getsockname(), timeout=1); print('loopback ok')",
      ].join('\n'),
    );
    assert.equal(r.return_code, 0, r.stderr);
    const lines = r.stdout.split('\n');
    assert.equal(lines[0], "['1000', '1000', '1000', '1000'] ['1000', '1000', '1000', '1000']");
    assert.equal(lines[1], '0000000000000000 0000000000000000 0000000000000000 1 2');
    assert.match(lines[2]!, /^2 \[1, 2\] sandbox$/);
    assert.equal(lines[3], "['bin', 'dev', 'etc', 'lib', 'lib64', 'opt', 'proc', 'sbin', 'tmp', 'usr', 'workspace']");
    assert.deepEqual(lines.slice(4), ['no network', 'loopback ok']);
    // the host uid is the box's own, from the server's range, and not root
    const uid = await hostUid(server, id);
    assert.ok(uid >= server.uidBase && uid < server.uidBase + 1000, `host uid ${uid}`);
  });

  it('reach nothing of the template: no host paths in memory, a fresh __main__, their own environment and matplotlib folders', async () => {
    const id = await createSession(server);
    const reversed = (s: string) => [...s].reverse().join('');
    const code = [
      'def scan():',
      '    import gc, sys, types',
      `    needles = [${JSON.stringify(reversed(server.root))}[::-1], ${JSON.stringify(reversed(process.cwd()))}[::-1]]`,
      '    found = []',
      '    def check(s):',
      '        if isinstance(s, str) and any(n in s for n in needles):',
      '            found.append(s[:100])',
      '    for o in gc.get_objects():',
      '        if o is needles:',
      '            continue',
      '        if isinstance(o, dict):',
      '            for k, v in list(o.items()):',
      '                check(k); check(v)',
      '        elif isinstance(o, (list, tuple)):',
      '            for v in o: check(v)',
      '        elif isinstance(o, types.FunctionType):',
      '            check(o.__code__.co_filename)',
      '            for c in o.__code__.co_consts: check(c)',
      '            for cell in o.__closure__ or ():',
      '                try: check(cell.cell_contents)',
      '                except ValueError: pass',
      '    for m in list(sys.modules.values()):',
      "        check(getattr(m, '__file__', None))",
      '    return found',
      'print(scan())',
      "print(any(n.encode() in open('/proc/self/environ', 'rb').read() for n in ['/']) and all(not v.startswith(b'/') or v.startswith((b'/usr', b'/bin', b'/workspace', b'/tmp', b'/opt')) for kv in open('/proc/self/environ', 'rb').read().split(b'\\0') if b'=' in kv for v in [kv.split(b'=', 1)[1]]))",
      'import sys, os, matplotlib',
      "print(sys.argv, sorted(k for k in globals() if not k.startswith('__')))",
      "print(os.environ['HOME'], os.environ['TMPDIR'], os.environ['MPLCONFIGDIR'], matplotlib.get_configdir(), matplotlib.get_cachedir())",
      'import matplotlib.pyplot as plt',
      'plt.plot([1, 2], [3, 4]); plt.savefig("/workspace/plot.png")',
      "print(os.path.getsize('/workspace/plot.png') > 1000)",
    ].join('\n');
    const r = await py(server, id, code);
    assert.equal(r.return_code, 0, r.stderr);
    const [found, environ, names, dirs, plot] = r.stdout.split('\n');
    assert.equal(found, '[]', 'no string naming the server folders is reachable');
    assert.equal(environ, 'True', 'the inherited environment block names no host folder');
    assert.equal(names, "['/opt/sandbox/driver.py'] ['matplotlib', 'os', 'scan', 'sys']", 'only what this cell defined');
    assert.equal(dirs, '/workspace /tmp /tmp/.matplotlib /tmp/.matplotlib /tmp/.matplotlib');
    assert.equal(plot, 'True');
  });

  it('share nothing they can observe: module changes, variables, /tmp and host uids stay per session', async () => {
    const a = await createSession(server);
    const b = await createSession(server);
    const ra = await py(server, a, "import numpy, json\nnumpy.mark = 'a'\njson.dumps = None\nleft = 1\nopen('/tmp/a.txt', 'w').write('a')");
    assert.equal(ra.return_code, 0, ra.stderr);
    const rb = await py(server, b, "import numpy, json, os\nprint(hasattr(numpy, 'mark'), json.dumps({'x': 1}), 'left' in globals(), os.path.exists('/tmp/a.txt'))");
    assert.equal(rb.stdout, 'False {"x": 1} False False', rb.stderr);
    assert.notEqual(await hostUid(server, a), await hostUid(server, b));
    // Forked from one template, yet numpy's global generator is not shared.
    const draws = await Promise.all([a, b].map(async (id) => (await py(server, id, 'import numpy\nprint(numpy.random.randint(1 << 30))')).stdout));
    assert.notEqual(draws[0], draws[1], `numpy draws differ between sessions: ${draws.join(' ')}`);
    const pa = await sh(server, a, "cat /proc/[0-9]*/comm | sort -u | tr '\\n' ' '");
    assert.doesNotMatch(pa.stdout, /python/, `a bash command sees only its own processes, no interpreter: ${pa.stdout}`);
    assert.match(pa.stdout, /bash/);
  });

  it('have a hardened init: no signal from the session reaches it, seccomp and no_new_privs on, not dumpable', async () => {
    const id = await createSession(server);
    await py(server, id, 'kept = 3');
    const r = await py(
      server,
      id,
      [
        'import os, signal',
        'for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):',
        '    os.kill(1, s)',
        'import time; time.sleep(0.2)',
        "st = dict(l.split(':', 1) for l in open('/proc/1/status').read().splitlines())",
        "print(st['NoNewPrivs'].strip(), st['Seccomp'].strip(), kept)",
        'try:',
        "    open('/proc/1/mem', 'rb')",
        "    print('mem readable')",
        'except OSError:',
        "    print('mem closed')",
      ].join('\n'),
    );
    assert.equal(r.stdout, '1 2 3\nmem closed', r.stderr);
    assert.equal((await py(server, id, 'print(kept)')).stdout, '3', 'the sandbox is still the same');
  });

  it('make every mount below the read-only system read-only, also one the host adds under /usr', async (t) => {
    const dir = `/usr/local/otari-test-${process.pid}-${Date.now()}`;
    const { execFileSync } = await import('node:child_process');
    const { mkdirSync, rmdirSync, writeFileSync, readFileSync, chmodSync } = await import('node:fs');
    mkdirSync(dir);
    t.after(() => {
      try {
        execFileSync('/usr/bin/umount', ['-l', dir]);
      } catch {
        /* not mounted */
      }
      rmdirSync(dir);
    });
    execFileSync('/usr/bin/mount', ['-t', 'tmpfs', '-o', 'size=1m,noexec', 'otari-test', dir]);
    writeFileSync(`${dir}/f`, 'host\n');
    chmodSync(`${dir}/f`, 0o666);
    const id = await createSession(server);
    // A new interpreter, so that it is forked after the mount exists.
    assert.equal((await py(server, id, 'import os; os._exit(3)')).interpreter_restarted, true);
    const r = await py(
      server,
      id,
      `import os\np = ${JSON.stringify(dir)}\nprint(os.path.exists(p + '/f'))\nprint([l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == p])\ntry:\n    open(p + '/f', 'a').write('session')\n    print('written')\nexcept OSError as e:\n    print(e.errno)`,
    );
    assert.equal(r.return_code, 0, r.stderr);
    const [exists, opts, write] = r.stdout.split('\n');
    assert.equal(exists, 'True');
    assert.match(opts!, /^\['ro,nosuid,nodev,noexec/, 'read-only, and noexec kept');
    assert.equal(write, '30', 'EROFS');
    assert.equal(readFileSync(`${dir}/f`, 'utf8'), 'host\n');
  });

  it('survive the template dying: interpreters restart (state lost, said so), new sessions work, nothing is left running', async () => {
    const id = await createSession(server);
    assert.equal((await py(server, id, 'kept = 7')).return_code, 0);
    const uid = await hostUid(server, id);
    assert.equal((await pidsOfUid(uid)).length, 2, 'the namespace init and the interpreter');
    const zygote = await templatePid(server);
    assert.ok(zygote, 'found the template');
    process.kill(zygote, 'SIGKILL');
    // Its forked processes die with it (parent-death signal), the server starts another.
    assert.ok(await waitFor(async () => (await pidsOfUid(uid)).length === 0, 10_000), 'the old interpreter died with the template');
    assert.ok(await waitFor(async () => ((await templatePid(server)) ?? zygote) !== zygote, 20_000), 'a new template was started');
    const r = await py(server, id, 'print(kept)');
    assert.equal(r.interpreter_restarted, true, 'the call says the state is gone');
    assert.match(r.stderr, /NameError/);
    assert.match(r.stderr, /had stopped since the last call; it was restarted and its state was lost/);
    assert.equal((await py(server, id, 'x = 1\nprint(x + 1)')).stdout, '2');
    const fresh = await createSession(server);
    assert.equal((await py(server, fresh, 'print(6 * 7)')).stdout, '42');
    assert.equal((await api(server, 'GET', '/health')).status, 200);
  });
});

describe('SANDBOX_PYTHON_TEMPLATE=off: each interpreter in its own bubblewrap sandbox', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ SANDBOX_PYTHON_TEMPLATE: 'off', SANDBOX_PRELOAD_MODULES: 'json,csv' });
  });
  after(() => server.stop());

  it('starts interpreters with bwrap, preloads imported, state kept, same sandbox view', async () => {
    const h = await api(server, 'GET', '/health');
    assert.ok(!h.body.isolation.protections.includes(TEMPLATE_PROTECTION));
    const id = await createSession(server);
    const r = await py(
      server,
      id,
      "import sys, os\nprint('json' in sys.modules and 'csv' in sys.modules)\nprint(open('/proc/1/cmdline').read().split(chr(0))[0])\nprint(os.getuid(), open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\nv = 5",
    );
    assert.equal(r.stdout, 'True\n/usr/bin/bwrap\n1000 2', r.stderr);
    assert.equal((await py(server, id, 'print(v * 2)')).stdout, '10');
    assert.equal(await templatePid(server), null, 'no template process');
  });
});

describe('without CAP_SYS_ADMIN (a container started without it)', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ SANDBOX_PRELOAD_MODULES: 'json' }, { dropCapabilities: ['sys_admin'] });
  });
  after(() => server.stop());

  it('starts, says the template cannot be used, and runs interpreters in bubblewrap', async () => {
    const h = await api(server, 'GET', '/health');
    assert.ok(!h.body.isolation.protections.includes(TEMPLATE_PROTECTION));
    assert.match(server.logs(), /no CAP_SYS_ADMIN: the interpreter template cannot build sandboxes; interpreters start in bubblewrap instead/);
    const id = await createSession(server);
    const r = await py(server, id, "import sys, os\nprint('json' in sys.modules, open('/proc/1/cmdline').read().split(chr(0))[0], os.getuid())");
    assert.equal(r.stdout, 'True /usr/bin/bwrap 1000', r.stderr);
    assert.equal(await templatePid(server), null);
  });
});
