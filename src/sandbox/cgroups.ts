/**
 * Per-session cgroups, where the machine lets us make them: memory, and where available
 * a process-and-thread total (pids) and a CPU share of its own (cpu: by default every
 * session weighs the same, so one session's many busy processes get one session's share,
 * not one share each).
 *
 * Detection, never assumption (docs/threat-model.md, "Cgroup detection, never assumption"): cgroup v2 with the memory controller
 * in a subtree we may write (root, or a delegated subtree), else cgroup v1's memory
 * hierarchy when we are root, else none (RLIMIT_AS per process stays the only memory
 * bound, and /health says so).
 *
 * A leaf per box: memory limit = memory + the box's tmpfs quota + its /dev/shm, since
 * tmpfs pages are charged to the cgroup of the process that writes them; swap 0 where
 * the kernel lets us say so; v2 also kills the whole group on OOM. Every sandbox of the
 * box (interpreter and bash commands) joins the leaf before bwrap forks, through a
 * one-line shell wrapper that writes its own pid to cgroup.procs and execs bwrap.
 *
 * Memory the kernel holds for a session (docs/threat-model.md, "Host-wide kernel
 * resources"): on v2 socket buffers and kernel objects are charged to the leaf like any
 * page. On v1 kernel objects are too (since Linux 4.6, unless booted with
 * cgroup.memory=nokmem), Unix socket buffers with them, but TCP and UDP buffers only once
 * the leaf's memory.kmem.tcp.limit_in_bytes is set, which also turns that accounting on
 * (for every socket with memory accounting, UDP included, despite its name): each leaf
 * gets it (a second budget next to the memory one, not a share of it), at its memory
 * limit or less: TCP memory is host-wide (net.ipv4.tcp_mem), so the leaf's is a share of
 * it small enough that all sessions together stay below its pressure point (tcp-memory.ts;
 * v2 cannot say so, and `tcpMemory` reports whether its memory limits keep below it).
 * memory.kmem.limit_in_bytes is written too where the kernel honours it (before 4.6
 * that is what turns kernel-object accounting on; since 6.1 it is ignored). Which of
 * these the kernel honours is found once, on a probe leaf, and reported (`socketMemory`,
 * `kernelMemory`); test/security/kernel-resources.test.ts checks each charge.
 *
 * The server's parent cgroup (one per sessions root) is bounded too, to the number of
 * sessions times a leaf's limits (`boundParent`): all sessions together stay within what
 * the settings promise even if a leaf's own limit did not apply.
 */
import { closeSync, existsSync, openSync, promises as fsp, readFileSync, readSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { hostTcpMem, tcpMemoryBound, type TcpMemoryBound } from './tcp-memory.js';

const execFileP = promisify(execFile);

export interface CgroupLeaf {
  /** The files a process writes its pid to, to join (one per hierarchy on v1). */
  procsFiles: string[];
  /** OOM kills in this leaf so far. */
  oomKills(): number;
  /** Sends SIGKILL to every process in the leaf now (cgroup.kill where the kernel has it;
   * else each pid its cgroup.procs lists: pids of our own sandboxes, read just before). */
  killAll(): void;
  /** Whether no process is left in the leaf, in any hierarchy (false when a list cannot be
   * read). Every process of a box starts in its leaf (it joins before it takes the box's
   * uid) and none can leave it (the other cgroups' files are root's), so an empty leaf
   * means no process of the box's uid is left anywhere on the host. */
  empty(): boolean;
  remove(): Promise<void>;
}

export interface Cgroups {
  version: 'v1' | 'v2';
  describe: string;
  /** The server's parent cgroup (in the memory hierarchy on v1): every leaf is below it. */
  parent: string;
  /** Whether a session's socket buffers count against a limit of its own, in words. */
  socketMemory: string;
  /** Whether memory the kernel holds for a session (its objects) counts, in words. */
  kernelMemory: string;
  /** What bounds a session's TCP buffers against the host-wide net.ipv4.tcp_mem, for a
   * leaf of `memoryBytes` (tcp-memory.ts): v1's per-session TCP limit, or v2's memory limit. */
  tcpMemory(memoryBytes: number): TcpMemoryBound;
  /** Bounds the parent cgroup to `sessions` leaves of `leaf`, its memory to at most
   * `memoryCapBytes` (this server's part of the host's memory, host-tasks.ts), called once
   * the stale leaves of an earlier run are swept: what is in force, and what the kernel
   * refused. */
  boundParent(leaf: LeafLimits, sessions: number, memoryCapBytes: number): Promise<ParentBound>;
  /** Removes leaves (box_*) an earlier run left; their processes must be dead. */
  sweep(): Promise<number>;
  /** Removes this server's parent cgroup (at shutdown, every leaf gone). */
  close(): Promise<void>;
  create(name: string, limits: LeafLimits): Promise<CgroupLeaf>;
  /** Which of memory, pids and cpu a leaf gets. */
  controllers: string[];
}

export interface LeafLimits {
  memoryBytes: number;
  /** Processes and threads of the session together. */
  pidsMax: number;
}

/** The limits of the server's parent cgroup as read back after writing them (null: not
 * set), and a line for each one the kernel refused. */
export interface ParentBound {
  memoryBytes: number | null;
  pidsMax: number | null;
  /** TCP buffers of all sessions together (v1; on v2 they are part of memory). */
  tcpBytes: number | null;
  problems: string[];
}

/** `leaf` times `n`, exactly (the product may pass 2^53), as the decimal a cgroup file takes. */
function times(leaf: number, n: number): string {
  return (BigInt(leaf) * BigInt(n)).toString();
}

/** `n` leaves of `leaf`, at most `cap` (whole pages). */
function capped(leaf: number, n: number, cap: number): string {
  const all = BigInt(leaf) * BigInt(n);
  const most = (BigInt(Math.max(0, Math.floor(cap))) / 4096n) * 4096n;
  return (all < most ? all : most).toString();
}

/** A number a cgroup file holds, or null ("max", unreadable). */
async function readNumber(file: string): Promise<bigint | null> {
  const text = (await fsp.readFile(file, 'utf8').catch(() => '')).trim();
  return /^\d+$/.test(text) ? BigInt(text) : null;
}

/** Writes `value` to `file` and reads it back: null when both agree (byte limits are
 * rounded down to whole pages by the kernel), otherwise a line saying what it did. */
async function writeChecked(file: string, value: string, bytes: boolean): Promise<string | null> {
  try {
    await fsp.writeFile(file, value);
  } catch (e) {
    return `${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`;
  }
  const back = await readNumber(file);
  const want = BigInt(value);
  const ok = back !== null && (bytes ? want - back >= 0n && want - back < 65536n : back === want);
  return ok ? null : `${file}: wrote ${value}, reads ${back ?? 'nothing'}`;
}

/** Writes each limit of the parent cgroup (in order) and reads back what is in force. */
async function boundFiles(writes: { file: string; value: string; bytes: boolean; field?: 'memoryBytes' | 'pidsMax' | 'tcpBytes' }[]): Promise<ParentBound> {
  const bound: ParentBound = { memoryBytes: null, pidsMax: null, tcpBytes: null, problems: [] };
  for (const w of writes) {
    if (w.value === '-1') {
      await tryWrite(w.file, w.value); // a reset on the way, not a limit
      continue;
    }
    const problem = await writeChecked(w.file, w.value, w.bytes);
    if (problem) bound.problems.push(problem);
    if (w.field && !problem) bound[w.field] = Number(await readNumber(w.file));
  }
  return bound;
}

/** Kernel objects (slab, pipe buffers, page tables) of a v1 cgroup count against its memory
 * limit since Linux 4.6, unless the kernel was booted with cgroup.memory=nokmem. */
function v1KernelMemoryCounted(): boolean {
  return !/\bcgroup\.memory=(\S*,)?nokmem\b/.test(readFileSync('/proc/cmdline', 'utf8'));
}

function ownPath(controllerLine: (fields: string[]) => boolean): string | null {
  const text = readFileSync('/proc/self/cgroup', 'utf8');
  for (const line of text.split('\n')) {
    const fields = line.split(':');
    if (fields.length >= 3 && controllerLine(fields)) return fields.slice(2).join(':');
  }
  return null;
}

/** A `key N` line of a cgroup file, read on every exec: the file stays open and is
 * re-read from offset 0 (one pread instead of open, read, close). */
function counter(file: string, key: string): { read: () => number; close: () => void } {
  const pattern = new RegExp(`^${key} (\\d+)$`, 'm');
  const buf = Buffer.alloc(4096);
  let fd: number | null = null;
  return {
    read() {
      try {
        fd ??= openSync(file, 'r');
        const n = readSync(fd, buf, 0, buf.length, 0);
        const m = pattern.exec(buf.toString('utf8', 0, n));
        return m ? Number(m[1]) : 0;
      } catch {
        return 0;
      }
    },
    close() {
      if (fd !== null) closeSync(fd);
      fd = null;
    },
  };
}

function leaf(dirs: string[], oomFile: string): CgroupLeaf {
  const oom = counter(`${dirs[0]}/${oomFile}`, 'oom_kill');
  return {
    procsFiles: dirs.map((d) => `${d}/cgroup.procs`),
    oomKills: oom.read,
    killAll() {
      try {
        writeFileSync(`${dirs[0]}/cgroup.kill`, '1');
        return;
      } catch {
        /* v1, or a kernel before 5.14 */
      }
      let pids: string[];
      try {
        pids = readFileSync(`${dirs[0]}/cgroup.procs`, 'utf8').split('\n');
      } catch {
        return;
      }
      for (const pid of pids) {
        if (!/^\d+$/.test(pid)) continue;
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
      }
    },
    empty() {
      try {
        return dirs.every((d) => readFileSync(`${d}/cgroup.procs`, 'utf8').trim() === '');
      } catch {
        return false;
      }
    },
    remove: async () => {
      oom.close();
      await Promise.all(dirs.map((d) => removeLeaf(d)));
    },
  };
}

async function tryWrite(file: string, value: string): Promise<boolean> {
  try {
    await fsp.writeFile(file, value);
    return true;
  } catch {
    return false;
  }
}

async function removeLeaf(dir: string): Promise<void> {
  // A cgroup can only be removed once empty; its processes are being killed by the
  // caller, so retry briefly.
  for (let i = 0; i < 50; i++) {
    // Pages still charged to it (page cache of files its processes read first, /usr's
    // among them) would keep it as a dying cgroup after rmdir, one per session (red team:
    // 38 per 40 sessions that read an uncached file): reclaim them first (v1
    // memory.force_empty, v2 memory.reclaim; refused while a process is left, then retried).
    if (existsSync(`${dir}/memory.force_empty`)) await tryWrite(`${dir}/memory.force_empty`, '0');
    else if (existsSync(`${dir}/memory.reclaim`)) await tryWrite(`${dir}/memory.reclaim`, String(1 << 30));
    try {
      await fsp.rmdir(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function sweepLeaves(base: string): Promise<number> {
  const names = await fsp.readdir(base).catch(() => [] as string[]);
  const stale = names.filter((n) => n.startsWith('box_'));
  await Promise.all(stale.map((n) => removeLeaf(`${base}/${n}`)));
  return stale.length;
}

async function detectV2(privileged: boolean, scope: string, maxSessions: number, olderTcpNeeds: readonly number[]): Promise<Cgroups | null> {
  const mount = existsSync('/sys/fs/cgroup/cgroup.controllers') ? '/sys/fs/cgroup' : existsSync('/sys/fs/cgroup/unified/cgroup.controllers') ? '/sys/fs/cgroup/unified' : null;
  if (!mount) return null;
  const own = ownPath((f) => f[0] === '0' && f[1] === '');
  if (own === null) return null;
  const base = `${mount}${own === '/' ? '' : own}`;
  const controllers = await fsp.readFile(`${base}/cgroup.controllers`, 'utf8').catch(() => '');
  if (!controllers.split(/\s+/).includes('memory')) return null;
  // v2's no-internal-process rule: move ourselves into a leaf before giving
  // controllers to children.
  const serverLeaf = `${base}/server`;
  // Docker mounts a private cgroup v2 tree read-only; with CAP_SYS_ADMIN it may be
  // remounted read-write (it is the container's own tree).
  if (privileged) {
    const probe = await fsp.mkdir(`${base}/otari-probe-${process.pid}`).then(
      () => fsp.rmdir(`${base}/otari-probe-${process.pid}`).then(() => 'ok'),
      (e: NodeJS.ErrnoException) => e.code ?? 'error',
    );
    if (probe === 'EROFS') await execFileP('/usr/bin/mount', ['-o', 'remount,rw', mount]).catch(() => {});
  }
  const parent = `${base}/${scope}`;
  // pids and cpu where this tree has them: best effort, memory is what must work
  const extra = ['pids', 'cpu'].filter((c) => controllers.split(/\s+/).includes(c));
  const enabled = ['memory'];
  try {
    await fsp.mkdir(serverLeaf, { recursive: true });
    await fsp.writeFile(`${serverLeaf}/cgroup.procs`, String(process.pid));
    await fsp.writeFile(`${base}/cgroup.subtree_control`, '+memory');
    await fsp.mkdir(parent, { recursive: true });
    await fsp.writeFile(`${parent}/cgroup.subtree_control`, '+memory');
    for (const c of extra) if ((await tryWrite(`${base}/cgroup.subtree_control`, `+${c}`)) && (await tryWrite(`${parent}/cgroup.subtree_control`, `+${c}`))) enabled.push(c);
  } catch {
    return null;
  }
  return {
    version: 'v2',
    controllers: enabled,
    describe: `cgroup v2 ${enabled.join(', ')} per session (${parent})`,
    parent,
    socketMemory: "socket buffers are charged to the session's memory limit (cgroup v2)",
    kernelMemory: "kernel objects (slab, pipe buffers, page tables) are charged to the session's memory limit (cgroup v2)",
    tcpMemory: (memoryBytes) => tcpMemoryBound({ memoryBytes, maxSessions, tcpMem: hostTcpMem(), perSessionLimit: false, olderNeeds: olderTcpNeeds }),
    boundParent: (leaf, sessions, memoryCapBytes) =>
      boundFiles([
        { file: `${parent}/memory.max`, value: capped(leaf.memoryBytes, sessions, memoryCapBytes), bytes: true, field: 'memoryBytes' },
        ...(enabled.includes('pids') ? [{ file: `${parent}/pids.max`, value: times(leaf.pidsMax, sessions), bytes: false, field: 'pidsMax' as const }] : []),
      ]),
    sweep: () => sweepLeaves(parent),
    close: async () => {
      await sweepLeaves(parent);
      await removeLeaf(parent);
    },
    async create(name, limits) {
      const dir = `${parent}/${name}`;
      await fsp.mkdir(dir);
      await fsp.writeFile(`${dir}/memory.max`, String(limits.memoryBytes));
      await tryWrite(`${dir}/memory.swap.max`, '0');
      await tryWrite(`${dir}/memory.oom.group`, '1');
      if (enabled.includes('pids')) await fsp.writeFile(`${dir}/pids.max`, String(limits.pidsMax));
      // cpu.weight stays at its default: every session weighs the same
      return leaf([dir], 'memory.events');
    },
  };
}

/** This process's folder in the v1 hierarchy of `controller`, or null. */
function v1Base(controller: string): string | null {
  const own = ownPath((f) => f[1]!.split(',').includes(controller));
  if (own === null) return null;
  // the hierarchy is mounted under its controller list (cpu,cpuacct) or its own name
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => l.split(':')[1]?.split(',').includes(controller));
  const mounts = [controller, line?.split(':')[1] ?? controller].map((m) => `/sys/fs/cgroup/${m}`);
  const mount = mounts.find((m) => existsSync(`${m}/cgroup.procs`));
  return mount ? `${mount}${own === '/' ? '' : own}` : null;
}

async function detectV1(privileged: boolean, scope: string, maxSessions: number, olderTcpNeeds: readonly number[]): Promise<Cgroups | null> {
  if (!privileged || !existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')) return null;
  const base = v1Base('memory');
  if (base === null) return null;
  const parent = `${base}/${scope}`;
  try {
    await fsp.mkdir(parent, { recursive: true });
  } catch {
    return null;
  }
  // pids and cpu in their own hierarchies, where this host has them (best effort)
  const extra: { name: string; parent: string }[] = [];
  for (const c of ['pids', 'cpu']) {
    const b = v1Base(c);
    if (b === null) continue;
    const p = `${b}/${scope}`;
    if (
      await fsp.mkdir(p, { recursive: true }).then(
        () => true,
        () => false,
      )
    )
      extra.push({ name: c, parent: p });
  }
  const parents = [parent, ...extra.map((e) => e.parent)];
  const kmem = await probeV1KernelMemory(parent);
  const pidsParent = extra.find((e) => e.name === 'pids')?.parent;
  // A leaf's TCP limit: a share of the host's tcp_mem, at most its memory limit (tcp-memory.ts).
  const tcpMem = hostTcpMem();
  const tcpMemory = (memoryBytes: number): TcpMemoryBound =>
    kmem.tcp
      ? tcpMemoryBound({ memoryBytes, maxSessions, tcpMem, perSessionLimit: true, olderNeeds: olderTcpNeeds })
      : {
          perSessionBytes: memoryBytes,
          lowered: false,
          hostExhaustible: true,
          text: "TCP buffers are not bounded per session (this kernel refused memory.kmem.tcp.limit_in_bytes): one session can reach the host's net.ipv4.tcp_mem",
        };
  const tcpBytes = (memoryBytes: number) => tcpMemory(memoryBytes).perSessionBytes;
  return {
    version: 'v1',
    controllers: ['memory', ...extra.map((e) => e.name)],
    describe: `cgroup v1 ${['memory', ...extra.map((e) => e.name)].join(', ')} per session (${parent})`,
    parent,
    socketMemory: kmem.tcp
      ? 'TCP and UDP buffers are limited per session, as a budget of their own next to its memory limit, at most that limit and a share of the host-wide net.ipv4.tcp_mem (cgroup v1 memory.kmem.tcp.limit_in_bytes; isolation.tcp_memory says how much); Unix socket buffers count against the memory limit itself'
      : `TCP and UDP buffers are not limited per session: cgroup v1 charges them only through memory.kmem.tcp.limit_in_bytes, which this kernel refused (${kmem.tcpProblem})`,
    kernelMemory: kmem.describe,
    tcpMemory,
    boundParent: (leaf, sessions, memoryCapBytes) =>
      boundFiles([
        // unlimited first: a memsw limit below the new memory limit would refuse it
        ...(existsSync(`${parent}/memory.memsw.limit_in_bytes`) ? [{ file: `${parent}/memory.memsw.limit_in_bytes`, value: '-1', bytes: false }] : []),
        { file: `${parent}/memory.limit_in_bytes`, value: capped(leaf.memoryBytes, sessions, memoryCapBytes), bytes: true, field: 'memoryBytes' },
        ...(existsSync(`${parent}/memory.memsw.limit_in_bytes`)
          ? [{ file: `${parent}/memory.memsw.limit_in_bytes`, value: capped(leaf.memoryBytes, sessions, memoryCapBytes), bytes: true }]
          : []),
        ...(kmem.tcp ? [{ file: `${parent}/memory.kmem.tcp.limit_in_bytes`, value: times(tcpBytes(leaf.memoryBytes), sessions), bytes: true, field: 'tcpBytes' as const }] : []),
        ...(pidsParent ? [{ file: `${pidsParent}/pids.max`, value: times(leaf.pidsMax, sessions), bytes: false, field: 'pidsMax' as const }] : []),
      ]).then(async (bound) => {
        // Without hierarchical accounting (kernels before 6.0 let it be off) the parent's
        // limit would not hold its leaves.
        if ((await readNumber(`${parent}/memory.use_hierarchy`)) === 0n) {
          const problem = await writeChecked(`${parent}/memory.use_hierarchy`, '1', false);
          if (problem) bound.problems.push(`${problem} (the parent's limits do not hold its leaves)`);
        }
        return bound;
      }),
    sweep: async () => (await Promise.all(parents.map((p) => sweepLeaves(p))))[0]!,
    close: async () => {
      for (const p of parents) {
        await sweepLeaves(p);
        await removeLeaf(p);
      }
    },
    async create(name, limits) {
      const dir = `${parent}/${name}`;
      await fsp.mkdir(dir);
      await fsp.writeFile(`${dir}/memory.limit_in_bytes`, String(limits.memoryBytes));
      await tryWrite(`${dir}/memory.memsw.limit_in_bytes`, String(limits.memoryBytes));
      await tryWrite(`${dir}/memory.swappiness`, '0');
      // before any process joins: sockets are accounted from their creation on
      if (kmem.tcp) await fsp.writeFile(`${dir}/memory.kmem.tcp.limit_in_bytes`, String(tcpBytes(limits.memoryBytes)));
      if (kmem.limitHonoured) await tryWrite(`${dir}/memory.kmem.limit_in_bytes`, String(limits.memoryBytes));
      const dirs = [dir];
      for (const e of extra) {
        const d = `${e.parent}/${name}`;
        await fsp.mkdir(d);
        if (e.name === 'pids') await fsp.writeFile(`${d}/pids.max`, String(limits.pidsMax));
        // cpu.shares stays at its default: every session weighs the same
        dirs.push(d);
      }
      return leaf(dirs, 'memory.oom_control');
    },
  };
}

/**
 * What this kernel does with v1's kernel-memory files, tried once on an empty leaf:
 * whether memory.kmem.tcp.limit_in_bytes takes (it is deprecated, and may go), and whether
 * memory.kmem.limit_in_bytes does (since 6.1 it is accepted and ignored).
 */
async function probeV1KernelMemory(parent: string): Promise<{ tcp: boolean; tcpProblem: string; limitHonoured: boolean; describe: string }> {
  const dir = `${parent}/box_probe-${process.pid}`;
  const value = String(256 * 1024 * 1024);
  let tcpProblem: string | null = 'no probe leaf';
  let kmemProblem: string | null = 'no probe leaf';
  try {
    await fsp.mkdir(dir);
    tcpProblem = await writeChecked(`${dir}/memory.kmem.tcp.limit_in_bytes`, value, true);
    kmemProblem = await writeChecked(`${dir}/memory.kmem.limit_in_bytes`, value, true);
  } catch (e) {
    tcpProblem = kmemProblem = `${dir}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`;
  } finally {
    await removeLeaf(dir);
  }
  const counted = kmemProblem === null || v1KernelMemoryCounted();
  const describe = counted
    ? `kernel objects (slab, pipe buffers, page tables) are charged to the session's memory limit (cgroup v1)${kmemProblem === null ? '; memory.kmem.limit_in_bytes is set to it as well' : `; memory.kmem.limit_in_bytes is not used (this kernel ignores it: ${kmemProblem})`}`
    : 'kernel objects are not charged to the session (the kernel was booted with cgroup.memory=nokmem)';
  return { tcp: tcpProblem === null, tcpProblem: tcpProblem ?? '', limitHonoured: kmemProblem === null, describe };
}

/**
 * `scope` names this server's own parent cgroup (one per sessions root, as there is one
 * server per sessions root): its start-up sweep must never touch the leaves of another
 * server on the same host, which share the same base cgroup.
 */
/** `olderTcpNeeds`: the TCP needs of the live servers on the host older than this one,
 * oldest first (host-tasks.ts `serverBudget`). */
export async function detectCgroups(privileged: boolean, scope: string, maxSessions: number, olderTcpNeeds: readonly number[]): Promise<Cgroups | null> {
  return (await detectV2(privileged, scope, maxSessions, olderTcpNeeds)) ?? (await detectV1(privileged, scope, maxSessions, olderTcpNeeds));
}
