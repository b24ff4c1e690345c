/**
 * The sandbox description (src/sandbox/spec.ts) and the two launchers that carry it out,
 * checked without starting a sandbox: the bubblewrap options parse back to exactly the
 * spec, and the template's builder (sandbox-python/zygote.py, run against a recording
 * model of the mount table) leaves the mount table the spec describes; the probe's
 * comparison finds a difference in a dump and between kinds.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import {
  DEVICE_NODES,
  DEVPTS_OPTIONS,
  SANDBOX_NETWORK,
  ETC_ALLOW_LIST,
  NAMESPACES,
  NO_PTYS_ERROR,
  SANDBOX_PATHS,
  sandboxEnv,
  sandboxSpec,
  type MountOp,
  type SandboxRole,
  type SandboxSpec,
} from '../../src/sandbox/spec.js';
import { FD, renderBwrap } from '../../src/sandbox/bwrap-args.js';
import { sandboxRlimits, RLIMIT_NAMES, type Rlimit } from '../../src/limits.js';
import {
  compareKinds,
  compareWithSpec,
  expectedDump,
  expectedMounts,
  expectedOpenpty,
  normaliseDump,
  parseLimits,
  parseMountinfo,
  type HostFacts,
  type MountLine,
} from '../../src/sandbox/probe-compare.js';

const repo = (rel: string) => fileURLToPath(new URL(`../../../${rel}`, import.meta.url));
const limits = { addressSpaceBytes: 512 << 20, cpuSeconds: 30, fileSizeBytes: 1 << 20, openFiles: 64, processes: 32 };

/** `overlays` false: a host where overlays cannot be mounted (the system is bound) and the
 * server cannot make device nodes (the host's are bound). */
function withFolders<T>(fn: (spec: SandboxSpec, base: string) => T, role: SandboxRole = { kind: 'interpreter', preload: ['json'] }, overlays = true): T {
  const root = mkdtempSync(`${tmpdir()}/spec-test-`);
  try {
    for (const d of ['workspace', 'tmp', 'lib', 'base', 'system', 'system/etc', 'system/empty', 'devices']) mkdirSync(`${root}/${d}`);
    // (plain files: what the builders' models look at is the mount they are on)
    for (const node of DEVICE_NODES) writeFileSync(`${root}/devices/${node}`, '');
    symlinkSync('/usr', `${root}/system/usr`);
    symlinkSync(repo('sandbox-python'), `${root}/system/driver`);
    const system = overlays ? { dir: `${root}/system` } : null;
    const folders = {
      workspaceDir: `${root}/workspace`,
      tmpDir: `${root}/tmp`,
      libDir: `${root}/lib`,
      driverDir: repo('sandbox-python'),
      shmBytes: 1 << 20,
      ptysMax: 12,
      system,
      devicesDir: overlays ? `${root}/devices` : null,
    };
    const etc = ETC_ALLOW_LIST.filter((p) => {
      try {
        realpathSync(p);
        return true;
      } catch {
        return false;
      }
    });
    return fn(sandboxSpec(folders, sandboxRlimits(limits), role, etc), `${root}/base`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** The mount table the template's builder (zygote.py) makes of `spec`, against a recording
 * model of the kernel's (test/fixtures/template_dry_run.py). */
function dryRun(spec: SandboxSpec, base: string): MountLine[] {
  const out = execFileSync('/usr/bin/python3', ['-I', repo('test/fixtures/template_dry_run.py')], {
    input: JSON.stringify({ zygote: repo('sandbox-python/zygote.py'), mounts: spec.mounts, base }),
    encoding: 'utf8',
  });
  return out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as MountLine);
}

/** bwrap's options back into spec fields (only the flags renderBwrap uses); `--dev`'s pty
 * cap is not a bwrap option but what the launcher applies while bwrap waits (`devpts`). */
function parseBwrap(
  options: string[],
  dataFds: { fd: number; content: string }[],
  devpts: { max: number; overlays: { dir: string; lowers: readonly string[]; dest: string }[]; selfBinds: string[]; covers: string[] } | null,
) {
  const mounts: MountOp[] = [];
  const env: Record<string, string> = {};
  const unshare: string[] = [];
  const seen: Record<string, string> = {};
  let perms = 0;
  let size = 0;
  for (let i = 0; i < options.length; i++) {
    const o = options[i]!;
    const arg = () => options[++i]!;
    switch (o) {
      case '--ro-bind':
      case '--bind':
      case '--ro-bind-try':
      case '--bind-try': {
        const m: MountOp = { op: 'bind', source: arg(), dest: arg(), readonly: o.startsWith('--ro-') };
        if (o.endsWith('-try')) m.optional = true;
        mounts.push(m);
        break;
      }
      case '--dir': {
        // (where the launcher's helper mounts an overlay)
        const dest = arg();
        const overlay = devpts?.overlays.find((v) => v.dest === dest);
        assert.ok(overlay, `a bare folder at ${dest}`);
        assert.equal(perms, 0o755, 'its mode');
        mounts.push({ op: 'overlay', dir: overlay.dir, lowers: overlay.lowers, dest: overlay.dest });
        break;
      }
      case '--ro-bind-data': {
        const fd = Number(arg());
        mounts.push({ op: 'data', dest: arg(), content: dataFds.find((d) => d.fd === fd)!.content });
        break;
      }
      case '--symlink':
        mounts.push({ op: 'symlink', target: arg(), dest: arg() });
        break;
      case '--proc': {
        const dest = arg();
        mounts.push({ op: 'proc', dest });
        // (its sys cover, part of the spec's "proc", is a bind of itself the launcher's helper makes)
        assert.ok(devpts?.selfBinds.includes(`${dest}/sys`), `${dest}/sys is bound over itself`);
        // (and bubblewrap's init, dumpable and the sandbox's uid, is covered: spec "proc")
        assert.ok(devpts?.covers.includes(`${dest}/1`), `${dest}/1 is covered`);
        break;
      }
      case '--dev': {
        assert.ok(devpts, '--dev comes with a pty cap for the launcher');
        const dest = arg();
        // (the box's own nodes bound over those bwrap's --dev binds from the host)
        let nodes: string | null = null;
        if (options[i + 1] === '--dev-bind') {
          nodes = options[i + 2]!.slice(0, -'/null'.length);
          for (const node of DEVICE_NODES) assert.deepEqual([arg(), arg(), arg()], ['--dev-bind', `${nodes}/${node}`, `${dest}/${node}`]);
        }
        mounts.push({ op: 'dev', dest, ptysMax: devpts.max, nodes });
        break;
      }
      case '--perms':
        perms = parseInt(arg(), 8);
        break;
      case '--size':
        size = Number(arg());
        break;
      case '--tmpfs':
        mounts.push({ op: 'tmpfs', dest: arg(), sizeBytes: size, mode: perms });
        break;
      case '--remount-ro':
        mounts.push({ op: 'remount-ro', dest: arg() });
        break;
      case '--setenv':
        env[arg()] = arg();
        break;
      case '--uid':
      case '--gid':
      case '--hostname':
      case '--chdir':
      case '--seccomp':
      case '--json-status-fd':
      case '--block-fd':
      case '--cap-drop':
        seen[o] = arg();
        break;
      default:
        if (o.startsWith('--unshare-')) unshare.push(o.slice('--unshare-'.length).replace(/-try$/, ''));
        else seen[o] = 'yes';
    }
  }
  return { mounts, env, unshare, seen };
}

function parsePrlimit(prefix: string[]): Rlimit[] {
  assert.equal(prefix[0], '/usr/bin/prlimit');
  assert.equal(prefix.at(-1), '--');
  const v = (s: string) => (s === 'unlimited' ? -1 : Number(s));
  return prefix.slice(1, -1).map((a) => {
    const m = /^--([a-z]+)=([^:]+):(.+)$/.exec(a);
    assert.ok(m, a);
    return { resource: m[1] as Rlimit['resource'], soft: v(m[2]!), hard: v(m[3]!) };
  });
}

function hostFacts(): HostFacts {
  return {
    mountinfo: readFileSync('/proc/self/mountinfo', 'utf8'),
    limits: readFileSync('/proc/self/limits', 'utf8'),
    namespaces: { user: 'user:[1]', mnt: 'mnt:[2]', pid: 'pid:[3]', time: 'time:[4]' },
    realpath: (p) => realpathSync(p),
    privileged: true,
  };
}

describe('the sandbox description', () => {
  for (const overlays of [true, false])
    it(`is carried out in full by the bubblewrap options: every mount in order, env, ids, namespaces, cwd, rlimits (${overlays ? 'system overlaid' : 'system bound'})`, () => {
      withFolders(
        (spec) => {
          const { options, dataFds, prefix, devpts } = renderBwrap(spec);
          const back = parseBwrap(options, dataFds, devpts);
          assert.deepEqual(back.mounts, spec.mounts);
          assert.deepEqual(back.env, spec.env);
          assert.equal(back.seen['--clearenv'], 'yes', 'nothing of the server environment');
          assert.deepEqual([back.seen['--uid'], back.seen['--gid']], [String(spec.user.uid), String(spec.user.gid)]);
          assert.equal(back.seen['--hostname'], spec.hostname);
          assert.equal(back.seen['--chdir'], spec.cwd);
          assert.equal(back.seen['--seccomp'], String(FD.seccomp));
          // bwrap waits for the devpts cap before it loads the filter and runs the program
          assert.equal(back.seen['--block-fd'], String(FD.block));
          const overlaid = spec.mounts.flatMap((m) => (m.op === 'overlay' ? [{ dir: m.dir, lowers: m.lowers, dest: m.dest }] : []));
          assert.deepEqual(devpts, {
            max: 12,
            options: DEVPTS_OPTIONS,
            network: SANDBOX_NETWORK,
            ipc: spec.ipc,
            overlays: overlaid,
            selfBinds: ['/proc/sys'],
            covers: ['/proc/1'],
          });
          assert.deepEqual(
            overlaid.map((o) => o.dest),
            overlays ? ['/usr', '/etc', SANDBOX_PATHS.driver] : [],
            'the system files are overlaid (inodes of the sandbox own) where the host can',
          );
          assert.equal(back.seen['--cap-drop'], 'ALL');
          assert.equal(back.seen['--new-session'], 'yes');
          assert.equal(back.seen['--disable-userns'], 'yes');
          assert.deepEqual(back.unshare.sort(), NAMESPACES.filter((n) => n !== 'mnt').sort(), 'every namespace (bwrap always makes the mount namespace)');
          assert.deepEqual(parsePrlimit(prefix), spec.rlimits);
          // data descriptors stay clear of the program's control channel and of bwrap's own
          for (const d of dataFds) assert.ok(d.fd >= FD.firstData && ![3, 4, FD.args, FD.seccomp, FD.status, FD.block].includes(d.fd));
        },
        undefined,
        overlays,
      );
    });

  for (const overlays of [true, false])
    it(`is carried out to the same mount table by the template builder (zygote.py, against a recording mount table) (${overlays ? 'system overlaid' : 'system bound'})`, () => {
      withFolders(
        (spec, base) => {
          const built = dryRun(spec, base);
          assert.deepEqual(built, expectedMounts(spec.mounts, hostFacts()));
          if (overlays)
            assert.deepEqual(
              built.find((m) => m[0] === '/usr'),
              ['/usr', 'overlay', ['ro', 'nosuid', 'nodev']],
            );
        },
        undefined,
        overlays,
      );
    });

  it('the template builder hardens a submount the host has below a read-only bind (noexec kept), and refuses one it may not look at', () => {
    withFolders(
      (spec, base) => {
        let runs = 0;
        const dryRun = (extra: object) =>
          execFileSync('/usr/bin/python3', ['-I', repo('test/fixtures/template_dry_run.py')], {
            input: JSON.stringify({ zygote: repo('sandbox-python/zygote.py'), mounts: spec.mounts, base: mkdtempSync(`${base}/run${runs++}-`), ...extra }),
            encoding: 'utf8',
            stdio: ['pipe', 'pipe', 'pipe'],
          });
        const sub = '/usr/share/otari-test-submount';
        const built = dryRun({ extra_host: [[sub, 'tmpfs', ['noexec']]] })
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as MountLine);
        const host = hostFacts();
        const line = `999 1 0:99 / ${sub} rw,noexec,relatime - tmpfs otari rw\n`;
        assert.deepEqual(built, expectedMounts(spec.mounts, { ...host, mountinfo: host.mountinfo + line }));
        assert.deepEqual(
          built.find((m) => m[0] === sub),
          [sub, 'tmpfs', ['ro', 'nosuid', 'nodev', 'noexec']],
        );
        assert.throws(
          () => dryRun({ extra_host: [[sub, 'tmpfs', []]], deny: [sub] }),
          (e: Error & { stderr?: string }) => /mount \/usr\/share\/otari-test-submount (is not nosuid|lacks ro, nosuid or nodev)/.test(String(e.stderr)),
        );
      },
      undefined,
      false,
    ); // (a bind of /usr: an overlay of it has no submounts)
  });

  it('gives a command without ptys a cover on /dev/pts/ptmx (read-only, nodev), carried out alike by bubblewrap and the template builder, and expects openpty() to fail there', () => {
    const withPtys = withFolders((spec) => spec, { kind: 'command' });
    assert.equal(expectedOpenpty(withPtys.mounts), 'ok');
    withFolders(
      (spec, base) => {
        const dev = spec.mounts.findIndex((m) => m.op === 'dev');
        const cover = spec.mounts.findIndex((m) => m.op === 'bind' && m.dest === '/dev/pts/ptmx');
        assert.ok(dev >= 0 && cover > dev, 'the cover comes after the devpts');
        assert.deepEqual(spec.mounts[cover], { op: 'bind', source: '/dev/null', dest: '/dev/pts/ptmx', readonly: true }, 'read-only, and nodev as every bind');
        const shape = (ms: readonly MountOp[]) => ms.map((m) => `${m.op} ${'dest' in m ? m.dest : ''}`);
        assert.deepEqual(shape(spec.mounts.filter((_, i) => i !== cover)), shape(withPtys.mounts), 'the same sandbox otherwise');
        assert.equal(expectedOpenpty(spec.mounts), NO_PTYS_ERROR);
        const { options, dataFds, devpts } = renderBwrap(spec);
        assert.deepEqual(parseBwrap(options, dataFds, devpts).mounts, spec.mounts);
        assert.deepEqual(devpts?.max, 12, 'the devpts under the cover is capped all the same');
        const ptmx = expectedMounts(spec.mounts, hostFacts()).find((m) => m[0] === '/dev/pts/ptmx');
        assert.ok(ptmx?.[2].includes('nodev') && ptmx[2].includes('ro'), JSON.stringify(ptmx));
        const built = dryRun(spec, base);
        assert.deepEqual(built, expectedMounts(spec.mounts, hostFacts()));
      },
      { kind: 'command', ptys: false },
    );
  });

  it('names every rlimit once, the paths once, and gives commands the same sandbox as interpreters but for the driver variables', () => {
    assert.deepEqual(
      sandboxRlimits(limits).map((r) => r.resource),
      [...RLIMIT_NAMES],
    );
    assert.deepEqual(sandboxRlimits({ ...limits, addressSpaceBytes: 0 })[0], { resource: 'as', soft: -1, hard: -1 });
    const cmd = sandboxEnv({ kind: 'command' });
    const interp = sandboxEnv({ kind: 'interpreter', preload: ['a', 'b'] });
    assert.deepEqual({ ...cmd, SANDBOX_PRELOAD: 'a,b', SANDBOX_SESSION_LIB: SANDBOX_PATHS.sessionLib }, interp);
    assert.equal(interp.HOME, SANDBOX_PATHS.workspace);
  });
});

describe('the probe comparison', () => {
  const host = hostFacts();
  const dumpOf = (spec: SandboxSpec): Record<string, unknown> => {
    const expected = expectedDump(spec, host, { rlimits: Object.fromEntries(RLIMIT_NAMES.map((n) => [n, 0])), namespaces: { user: 'x', mnt: 'x', pid: 'x', time: 'x' } });
    const files = { '/': (expected.symlinks as string[]).concat(['dev', 'etc']) };
    const { symlinks: _s, ...rest } = expected;
    void _s;
    return { ...rest, files, namespaces: { user: 'user:[9]', mnt: 'mnt:[9]', pid: 'pid:[9]', time: 'time:[4]' }, init_environ: ['PATH'] };
  };

  it('finds nothing in a dump that is what the spec says, and each change as one line', () => {
    withFolders((spec) => {
      const good = normaliseDump(dumpOf(spec), host);
      assert.deepEqual(compareWithSpec('bwrap', good, expectedDump(spec, host, good)), []);
      const bad = structuredClone(good) as Record<string, any>;
      bad.mounts = (bad.mounts as MountLine[]).map((m) => (m[0] === '/usr' ? [m[0], m[1], m[2].filter((f) => f !== 'ro')] : m));
      bad.rlimits.nproc = [-1, -1];
      bad.env.LEAK = '1';
      bad.seccomp_checks['unshare(0)'] = 'ok';
      bad.capabilities.CapBnd = '000001ffffffffff';
      bad.namespaces.net = 'host';
      delete bad.devpts.max;
      const lines = compareWithSpec('template', bad, expectedDump(spec, host, bad));
      assert.equal(lines.length, 7, lines.join('\n'));
      assert.ok(lines.includes('template: devpts.max: expected "12", saw nothing'), lines.join('\n'));
      assert.ok(
        lines.some((l) => /^template: mounts: expected \/usr \S+ ro,nosuid,nodev, saw \/usr \S+ nosuid,nodev$/.test(l)),
        lines.join('\n'),
      );
      assert.ok(lines.includes('template: rlimits.nproc: expected [32,32], saw [-1,-1]'), lines.join('\n'));
      assert.ok(lines.includes('template: env.LEAK: expected nothing, saw "1"'));
      assert.ok(lines.includes('template: seccomp_checks.unshare(0): expected "EPERM", saw "ok"'));
      assert.ok(lines.includes('template: namespaces.net: expected "new", saw "host"'));
    });
  });

  it('compares kinds on every field, those the spec does not decide included', () => {
    withFolders((spec) => {
      const a = normaliseDump(dumpOf(spec), host);
      const b = structuredClone(a) as Record<string, any>;
      assert.deepEqual(compareKinds({ kind: 'bwrap', dump: a }, { kind: 'template', dump: b }), []);
      b.umask = '0002';
      b.mounts = [...(b.mounts as MountLine[]), ['/proc/irq', 'proc', ['ro', 'nosuid', 'nodev', 'noexec']]];
      assert.deepEqual(compareKinds({ kind: 'bwrap', dump: a }, { kind: 'template', dump: b }), [
        'mounts: template has /proc/irq proc ro,nosuid,nodev,noexec, bwrap has no mount there',
        'umask: bwrap has nothing, template has "0002"',
      ]);
    });
  });

  it('counts only reachable mounts, from the root down, in TypeScript and in the template alike', () => {
    // id parent point, in mountinfo order (which is not mount order)
    const tables: Record<string, [string, string, string][]> = {
      'stack: C over A, B inside A': [
        ['1', '0', '/'],
        ['2', '1', '/x'],
        ['3', '2', '/x/inner'],
        ['4', '2', '/x'],
      ],
      'a sibling above: S under P, in T (propagated), W in P at the same point': [
        ['1', '0', '/'],
        ['10', '1', '/usr/src'],
        ['11', '10', '/usr/src/A'],
        ['12', '11', '/usr/src/A/B'],
        ['13', '10', '/usr/src/A/B'],
      ],
      'children listed before their parent, an overmounted /dev/pts': [
        ['22', '27', '/proc'],
        ['24', '27', '/dev'],
        ['26', '24', '/dev/pts'],
        ['27', '1', '/'],
        ['29', '26', '/dev/pts'],
      ],
    };
    const expected: Record<string, string[]> = {
      'stack: C over A, B inside A': ['1', '4'],
      'a sibling above: S under P, in T (propagated), W in P at the same point': ['1', '10', '11', '12'],
      'children listed before their parent, an overmounted /dev/pts': ['22', '24', '27', '29'],
    };
    for (const [name, rows] of Object.entries(tables)) {
      const text = rows.map(([id, parent, point]) => `${id} ${parent} 0:${id} / ${point} rw,nosuid - fs${id} src rw`).join('\n');
      const seen = [...parseMountinfo(text).values()].map((m) => m.fstype.slice(2)).sort();
      assert.deepEqual(seen, [...expected[name]!].sort(), `TypeScript, ${name}`);
      const py = execFileSync(
        '/usr/bin/python3',
        [
          '-I',
          '-c',
          'import importlib.util, json, sys\ns = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)\nprint(json.dumps(sorted(e[0] for e in z.reachable([tuple(r) for r in json.loads(sys.argv[2])]))))',
          repo('sandbox-python/zygote.py'),
          JSON.stringify(rows),
        ],
        { encoding: 'utf8' },
      );
      assert.deepEqual(JSON.parse(py), [...expected[name]!].sort(), `the template's builder, ${name}`);
    }
    // two reachable mounts on one point (cannot be; a table that says so): the weaker flags
    const dup = parseMountinfo('1 0 0:1 / / rw - a x rw\n2 1 0:2 / /m ro,nosuid,nodev - b x rw\n3 1 0:3 / /m rw,nosuid - c x rw');
    assert.deepEqual([...dup.get('/m')!.flags], ['nosuid']);
  });

  it('reads /proc/<pid>/limits', () => {
    const l = parseLimits(
      'Limit                     Soft Limit           Hard Limit           Units\nMax cpu time              10                   11                   seconds\nMax stack size            8388608              unlimited            bytes\n',
    );
    assert.deepEqual(l, { cpu: [10, 11], stack: [8388608, -1] });
  });
});
