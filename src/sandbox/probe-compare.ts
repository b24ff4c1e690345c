/**
 * What the start-up probe (sandbox-python/probe.py) must see inside a sandbox, derived from
 * the sandbox description (spec.ts) and the host's own facts, and the comparison of each
 * dump with it and of the kinds with each other. Pure: the facts come in as text.
 *
 * A difference is one line: `<kind>: <field>: expected <x>, saw <y>` against the spec, or
 * `<field>: <kind a> has <x>, <kind b> has <y>` between kinds.
 */
import type { Rlimit } from '../limits.js';
import { DEVICE_NODES, DEVPTS_OPTIONS, NO_PTYS_ERROR, type MountOp, type SandboxSpec } from './spec.js';

const FLAGS = ['ro', 'nosuid', 'nodev', 'noexec'] as const;
type Flag = (typeof FLAGS)[number];
const NO_CAPS = '0000000000000000';

/** A mount as the probe reports it: point, file system type, flags (in FLAGS order). */
export type MountLine = [string, string, Flag[]];

/** The host's facts the expectations depend on, as the server reads them at start. */
export interface HostFacts {
  /** The server's /proc/self/mountinfo. */
  mountinfo: string;
  /** The server's /proc/self/limits (the rlimits a sandbox inherits unless the spec sets them). */
  limits: string;
  /** The server's /proc/self/ns/<name> link targets. */
  namespaces: Record<string, string>;
  /** Real path of a host path (bind sources are resolved, as bubblewrap does). */
  realpath: (p: string) => string;
  /** Root: sandboxes have no supplementary groups (unprivileged, the server's own show). */
  privileged: boolean;
}

export type Dump = Record<string, unknown>;

function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

interface MountEntry {
  id: string;
  parent: string;
  point: string;
  fstype: string;
  flags: Set<Flag>;
}

/** The mounts one can reach by path in a mountinfo text, by point: a mount another one is
 * mounted over (same point, it as parent) is hidden, and so is everything inside it but
 * that overmount (the probe and the template's builder leave them out alike). */
export function parseMountinfo(text: string): Map<string, { fstype: string; flags: Set<Flag> }> {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right = ''] = line.split(' - ');
    const fields = left!.split(' ');
    const options = new Set((fields[5] ?? '').split(','));
    entries.push({
      id: fields[0] ?? '',
      parent: fields[1] ?? '',
      point: unescape(fields[4] ?? ''),
      fstype: right.split(' ')[0] ?? '',
      flags: new Set(FLAGS.filter((f) => options.has(f))),
    });
  }
  const byId = new Map(entries.map((e) => [e.id, e]));
  const children = new Map<string, MountEntry[]>();
  for (const e of entries) if (e.parent !== e.id && byId.has(e.parent)) children.set(e.parent, [...(children.get(e.parent) ?? []), e]);
  const over = new Set(entries.filter((e) => e.parent !== e.id && byId.get(e.parent)?.point === e.point).map((e) => e.parent));
  const memo = new Map<string, boolean>();
  const bottom = (e: MountEntry): MountEntry => {
    for (let i = 0; i < 256; i++) {
      const parent = byId.get(e.parent);
      if (!parent || parent === e || parent.point !== e.point) break;
      e = parent;
    }
    return e;
  };
  // From the root down: not mounted over, and in a reachable mount no other child of
  // which is mounted at a folder above it (the same rule as zygote.py and probe.py).
  const ok = (e: MountEntry, depth = 0): boolean => {
    const known = memo.get(e.id);
    if (known !== undefined) return known;
    memo.set(e.id, false);
    let result = false;
    if (!over.has(e.id) && depth < 256) {
      const b = bottom(e);
      const parent = byId.get(b.parent);
      if (!parent || parent === b) result = true;
      else result = !(children.get(parent.id) ?? []).some((c) => c !== b && c.point !== b.point && under(b.point, c.point)) && ok(parent, depth + 1);
    }
    memo.set(e.id, result);
    return result;
  };
  const out = new Map<string, { fstype: string; flags: Set<Flag> }>();
  for (const e of entries.filter((x) => ok(x))) {
    const had = out.get(e.point);
    // two reachable mounts on one point cannot be; if the table says so, the weaker flags
    out.set(e.point, had ? { fstype: e.fstype, flags: new Set([...e.flags].filter((f) => had.flags.has(f))) } : { fstype: e.fstype, flags: e.flags });
  }
  return out;
}

function under(path: string, top: string): boolean {
  return top === '/' ? path.startsWith('/') : path === top || path.startsWith(`${top}/`);
}

function norm(flags: Set<Flag>): Flag[] {
  return FLAGS.filter((f) => flags.has(f));
}

/** The mounts a sandbox of `mounts` has, as its probe must report them. */
export function expectedMounts(mounts: readonly MountOp[], host: HostFacts): MountLine[] {
  const hostMounts = parseMountinfo(host.mountinfo);
  const inside = new Map<string, { fstype: string; flags: Set<Flag> }>();
  /** The host mount a path is on: the longest mount point above it. */
  const hostMountOf = (path: string) => {
    let best: string | null = null;
    for (const point of hostMounts.keys()) if (under(path, point) && (best === null || point.length > best.length)) best = point;
    return hostMounts.get(best ?? '/') ?? { fstype: '?', flags: new Set<Flag>() };
  };
  const put = (point: string, fstype: string, flags: Iterable<Flag>) => inside.set(point, { fstype, flags: new Set(flags) });
  const bind = (source: string, dest: string, added: Flag[], optional = false) => {
    let src: string;
    try {
      src = host.realpath(source);
    } catch (e) {
      if (optional) return; // gone from the host: skipped by both kinds
      throw e;
    }
    const top = hostMountOf(src);
    put(dest, top.fstype, [...top.flags, ...added]);
    for (const [point, m] of hostMounts) {
      if (point !== src && under(point, src)) put(dest + point.slice(src === '/' ? 0 : src.length), m.fstype, [...m.flags, ...added]);
    }
  };
  put('/', 'tmpfs', ['nosuid', 'nodev']);
  for (const m of mounts) {
    switch (m.op) {
      case 'bind':
        bind(m.source, m.dest, m.readonly ? ['ro', 'nosuid', 'nodev'] : ['nosuid', 'nodev'], m.optional);
        break;
      case 'overlay': {
        // (a bind of the first layer where the host has a mount below it: spec.ts MountOp)
        const first = host.realpath(`${m.dir}/${m.lowers[0]!}`);
        if ([...hostMounts.keys()].some((point) => point !== first && under(point, first))) bind(first, m.dest, ['ro', 'nosuid', 'nodev']);
        else put(m.dest, 'overlay', ['ro', 'nosuid', 'nodev']);
        break;
      }
      case 'data':
        put(m.dest, 'tmpfs', ['ro', 'nosuid', 'nodev']);
        break;
      case 'symlink':
        break;
      case 'proc':
        // sys is always covered; the other read-only covers depend on what the kernel lets
        // the builder write: the kinds are compared with each other on them, and none of
        // them may be writable
        put(m.dest, 'proc', ['nosuid', 'nodev', 'noexec']);
        put(`${m.dest}/sys`, 'proc', ['ro', 'nosuid', 'nodev', 'noexec']); // (a bind of itself)
        break;
      case 'dev':
        put(m.dest, 'tmpfs', ['nosuid', 'nodev']);
        for (const node of DEVICE_NODES) bind(`${m.nodes ?? '/dev'}/${node}`, `${m.dest}/${node}`, ['nosuid']);
        put(`${m.dest}/pts`, 'devpts', ['nosuid', 'noexec']);
        break;
      case 'tmpfs':
        put(m.dest, 'tmpfs', ['nosuid', 'nodev']);
        break;
      case 'remount-ro':
        inside.get(m.dest)?.flags.add('ro');
        break;
      default: {
        const never: never = m;
        throw new Error(`unknown mount op ${JSON.stringify(never)}`);
      }
    }
  }
  return [...inside.keys()].sort().map((p) => [p, inside.get(p)!.fstype, norm(inside.get(p)!.flags)]);
}

const LIMIT_NAMES: Record<string, string> = {
  'Max cpu time': 'cpu',
  'Max file size': 'fsize',
  'Max data size': 'data',
  'Max stack size': 'stack',
  'Max core file size': 'core',
  'Max resident set': 'rss',
  'Max processes': 'nproc',
  'Max open files': 'nofile',
  'Max locked memory': 'memlock',
  'Max address space': 'as',
  'Max file locks': 'locks',
  'Max pending signals': 'sigpending',
  'Max msgqueue size': 'msgqueue',
  'Max nice priority': 'nice',
  'Max realtime priority': 'rtprio',
  'Max realtime timeout': 'rttime',
};

/** /proc/<pid>/limits as {name: [soft, hard]}, -1 for unlimited. */
export function parseLimits(text: string): Record<string, [number, number]> {
  const out: Record<string, [number, number]> = {};
  for (const line of text.split('\n')) {
    const m = /^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)/.exec(line);
    const name = m && LIMIT_NAMES[m[1]!];
    if (!name) continue;
    const v = (s: string) => (s === 'unlimited' ? -1 : Number(s));
    out[name] = [v(m[2]!), v(m[3]!)];
  }
  return out;
}

function expectedRlimits(rlimits: readonly Rlimit[], reported: Record<string, unknown>, host: HostFacts): Record<string, [number, number]> {
  const inherited = parseLimits(host.limits);
  const out: Record<string, [number, number]> = {};
  for (const name of Object.keys(reported).sort()) {
    const set = rlimits.find((r) => r.resource === name);
    out[name] = set ? [set.soft, set.hard] : (inherited[name] ?? [NaN, NaN]);
  }
  return out;
}

/** The dump with what legitimately differs from one sandbox to the next taken out:
 * namespace ids become new/host (against the server's), the init's environment keeps
 * only names other than PATH (bubblewrap's init has the PATH it was started with). */
export function normaliseDump(dump: Dump, host: HostFacts): Dump {
  const ns = (dump.namespaces ?? {}) as Record<string, string>;
  const env = Array.isArray(dump.init_environ) ? (dump.init_environ as string[]) : [];
  return {
    ...dump,
    namespaces: Object.fromEntries(Object.keys(ns).map((k) => [k, ns[k] === host.namespaces[k] ? 'host' : 'new'])),
    init_environ: env.filter((k) => k !== 'PATH'),
  };
}

/** The options of the sandbox's devpts as the probe reports them from the mount table
 * (modes in octal without a leading zero, as the kernel prints them), from its `dev` op. */
export function expectedDevpts(mounts: readonly MountOp[]): Record<string, string> {
  const dev = mounts.find((m) => m.op === 'dev');
  if (!dev || dev.op !== 'dev') return {};
  const out: Record<string, string> = {};
  for (const option of DEVPTS_OPTIONS.split(',')) {
    const [key, value] = option.split('=') as [string, string];
    out[key] = parseInt(value, 8).toString(8);
  }
  out.max = String(dev.ptysMax);
  return out;
}

/** What openpty() must give inside (probe.py "openpty"): "ok" where /dev/pts is the
 * `dev` op's devpts, NO_PTYS_ERROR where a later mount covers it (spec.ts sandboxMounts). */
export function expectedOpenpty(mounts: readonly MountOp[]): string {
  const at = mounts.findIndex((m) => m.op === 'dev');
  const dev = mounts[at];
  if (!dev || dev.op !== 'dev') return NO_PTYS_ERROR;
  const covered = mounts.slice(at + 1).some((m) => (m.op === 'tmpfs' || m.op === 'bind') && (m.dest === `${dev.dest}/pts` || m.dest === `${dev.dest}/pts/ptmx`));
  return covered ? NO_PTYS_ERROR : 'ok';
}

/** Every field the spec decides, as the probe must report it (normalised). */
export function expectedDump(spec: SandboxSpec, host: HostFacts, reported: Dump): Dump {
  const nsReported = Object.keys((reported.namespaces ?? {}) as object);
  const { uid, gid } = spec.user;
  const symlinks = spec.mounts.filter((m) => m.op === 'symlink' && m.dest.lastIndexOf('/') === 0).map((m) => (m.op === 'symlink' ? `${m.dest.slice(1)} -> ${m.target}` : ''));
  return {
    mounts: expectedMounts(spec.mounts, host),
    devpts: expectedDevpts(spec.mounts),
    openpty: expectedOpenpty(spec.mounts),
    rlimits: expectedRlimits(spec.rlimits, (reported.rlimits ?? {}) as Record<string, unknown>, host),
    uid: [uid, uid, uid],
    gid: [gid, gid, gid],
    ...(host.privileged ? { groups: [] } : {}),
    uid_map: `${uid} 0 1`,
    gid_map: `${gid} 0 1`,
    capabilities: { CapInh: NO_CAPS, CapPrm: NO_CAPS, CapEff: NO_CAPS, CapBnd: NO_CAPS, CapAmb: NO_CAPS },
    no_new_privs: spec.noNewPrivs ? '1' : '0',
    seccomp: '2',
    seccomp_checks: spec.seccompChecks,
    env: spec.env,
    cwd: spec.cwd,
    hostname: spec.hostname,
    namespaces: Object.fromEntries(nsReported.map((k) => [k, (spec.namespaces as readonly string[]).includes(k.replace(/_for_children$/, '')) ? 'new' : 'host'])),
    interfaces: { lo: true },
    foreign_sockets: [],
    network: 'ENETUNREACH',
    loopback: { mtu: spec.network.loopbackMtu, sysctls: spec.network.sysctls },
    ipc: { sysctls: spec.ipc.sysctls, writable: [] },
    pids: [1, 2],
    init_environ: [],
    init_memory: 'refused',
    oom_lower: 'refused',
    host_path_visible: false,
    writable: { '/': false, '/usr': false, '/etc': false, [spec.cwd]: true },
    proc_writable: { '/proc/sys': false, '/proc/sysrq-trigger': false, '/proc/irq': false, '/proc/bus': false },
    symlinks,
  };
}

/** JSON with object keys sorted, so equal values print equal. */
function canon(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(canon);
  const o = v as Record<string, unknown>;
  return Object.fromEntries(
    Object.keys(o)
      .sort()
      .map((k) => [k, canon(o[k])]),
  );
}

function show(v: unknown): string {
  const s = JSON.stringify(canon(v));
  return s === undefined ? 'nothing' : s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

function mountDiff(a: MountLine[], b: MountLine[]): { onlyA: string[]; onlyB: string[] } {
  const key = (m: MountLine) => `${m[0]} ${m[1]} ${m[2].join(',') || '-'}`;
  const as = new Set(a.map(key));
  const bs = new Set(b.map(key));
  return { onlyA: [...as].filter((k) => !bs.has(k)), onlyB: [...bs].filter((k) => !as.has(k)) };
}

/** A cover one kind of sandbox needs and another does not: bubblewrap's init is the
 * sandbox's uid and dumpable, so its /proc/1 is covered by an empty tmpfs (spec `proc`);
 * the template's init is not dumpable and stays in view. What the cover protects is
 * compared in every kind (`init_memory`, `pidfd_getfd(init, 0)`). */
const isInitCover = (m: MountLine) => m[0] === '/proc/1' && m[1] === 'tmpfs' && m[2].includes('ro');

/** Lines saying where a normalised dump differs from the spec's expectation. */
export function compareWithSpec(kind: string, dump: Dump, expected: Dump): string[] {
  const out: string[] = [];
  for (const [field, want] of Object.entries(expected)) {
    if (field === 'mounts') {
      // (the covers the kernel decides on; /proc/sys is always expected)
      const isCover = (m: MountLine) => /^\/proc\/(sysrq-trigger|irq|bus)$/.test(m[0]) && m[1] === 'proc' && m[2].includes('ro');
      const seen = ((dump.mounts ?? []) as MountLine[]).filter((m) => !isCover(m) && !isInitCover(m));
      const { onlyA: missing, onlyB: extra } = mountDiff(want as MountLine[], seen);
      for (const m of missing) out.push(`${kind}: mounts: expected ${m}, saw ${extra.find((e) => e.split(' ')[0] === m.split(' ')[0]) ?? 'no mount there'}`);
      for (const e of extra) if (!missing.some((m) => m.split(' ')[0] === e.split(' ')[0])) out.push(`${kind}: mounts: unexpected ${e}`);
      continue;
    }
    if (field === 'symlinks') {
      const root = ((dump.files as Record<string, string[]> | undefined)?.['/'] ?? []) as string[];
      for (const l of want as string[]) if (!root.includes(l)) out.push(`${kind}: symlinks: expected /${l}, saw ${show(root.filter((r) => r.startsWith(l.split(' ')[0]!)))}`);
      continue;
    }
    if (want !== null && typeof want === 'object' && !Array.isArray(want)) {
      const got = (dump[field] ?? {}) as Record<string, unknown>;
      for (const k of new Set([...Object.keys(want), ...Object.keys(got)])) {
        const w = (want as Record<string, unknown>)[k];
        if (show(w) !== show(got[k])) out.push(`${kind}: ${field}.${k}: expected ${show(w)}, saw ${show(got[k])}`);
      }
      continue;
    }
    if (show(want) !== show(dump[field])) out.push(`${kind}: ${field}: expected ${show(want)}, saw ${show(dump[field])}`);
  }
  return out;
}

/** Lines saying where two normalised dumps differ (every field, spec-decided or not). */
export function compareKinds(a: { kind: string; dump: Dump }, b: { kind: string; dump: Dump }): string[] {
  const out: string[] = [];
  for (const field of new Set([...Object.keys(a.dump), ...Object.keys(b.dump)])) {
    const x = a.dump[field];
    const y = b.dump[field];
    if (field === 'mounts') {
      const [mx, my] = [x, y].map((v) => ((v ?? []) as MountLine[]).filter((m) => !isInitCover(m))) as [MountLine[], MountLine[]];
      const { onlyA, onlyB } = mountDiff(mx, my);
      for (const m of onlyA) out.push(`mounts: ${a.kind} has ${m}, ${b.kind} has ${onlyB.find((e) => e.split(' ')[0] === m.split(' ')[0]) ?? 'no mount there'}`);
      for (const m of onlyB) if (!onlyA.some((e) => e.split(' ')[0] === m.split(' ')[0])) out.push(`mounts: ${b.kind} has ${m}, ${a.kind} has no mount there`);
      continue;
    }
    if (x !== null && y !== null && typeof x === 'object' && typeof y === 'object' && !Array.isArray(x)) {
      const xo = x as Record<string, unknown>;
      const yo = y as Record<string, unknown>;
      for (const k of new Set([...Object.keys(xo), ...Object.keys(yo)])) {
        if (show(xo[k]) !== show(yo[k])) out.push(`${field}.${k}: ${a.kind} has ${show(xo[k])}, ${b.kind} has ${show(yo[k])}`);
      }
      continue;
    }
    if (show(x) !== show(y)) out.push(`${field}: ${a.kind} has ${show(x)}, ${b.kind} has ${show(y)}`);
  }
  return out;
}
