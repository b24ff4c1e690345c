/**
 * Exclusive per-server uid ranges. A root server runs each session as its own host uid
 * and kills sessions by uid, so two servers on one host must never share a uid: each
 * claims its range in a folder every server on the host reads (CLAIMS_DIR), one file per
 * claim naming its owner (pid and start time, so a claim of a dead server is recognised
 * and taken over) and its range. A claim is made by creating its file (O_EXCL), then
 * reading every other live claim: on an overlap the newer claim gives way (by creation
 * order, ties by pid), so two servers starting at once cannot both keep one range.
 * With the default base a server moves on to the next free range; with a base the
 * operator chose, it refuses to start.
 */
import { promises as fsp, readFileSync } from 'node:fs';

export const CLAIMS_DIR = '/run/otari-sandbox/uid-ranges';

export interface UidClaim {
  first: number;
  /** Inclusive. */
  last: number;
  /** The needs of the live servers on the host that claimed their range before this one
   * (any range), oldest first: by them servers share host-wide budgets (host-tasks.ts). */
  older: HostNeeds[];
  release(): Promise<void>;
}

/** What a server's sessions would take at most of host-wide budgets (host-tasks.ts). */
export interface HostNeeds {
  /** Processes and threads: SANDBOX_MAX_SESSIONS times SANDBOX_SESSION_PIDS_MAX. */
  tasks: number;
  /** TCP buffer bytes: SANDBOX_MAX_SESSIONS times a session's TCP want. */
  tcpBytes: number;
  /** Memory: SANDBOX_MAX_SESSIONS times a session's memory cgroup limit. */
  memoryBytes: number;
}

interface ClaimFile {
  pid: number;
  start: string;
  first: number;
  last: number;
  root: string;
  /** Absent in claims of older builds: taken as unbounded. */
  needs?: HostNeeds;
}

/** Field 22 of /proc/<pid>/stat: the start time, which tells a pid reused from a dead owner. */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

async function readClaims(dir: string): Promise<{ name: string; claim: ClaimFile; created: bigint }[]> {
  const out: { name: string; claim: ClaimFile; created: bigint }[] = [];
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    if (!name.endsWith('.claim')) continue;
    try {
      const path = `${dir}/${name}`;
      const [text, st] = await Promise.all([fsp.readFile(path, 'utf8'), fsp.stat(path, { bigint: true })]);
      const claim = JSON.parse(text) as ClaimFile;
      if (startTime(claim.pid) !== claim.start) {
        await fsp.rm(path, { force: true }); // its server is gone
        continue;
      }
      out.push({ name, claim, created: st.birthtimeNs > 0n ? st.birthtimeNs : st.ctimeNs });
    } catch {
      /* half-written or removed meanwhile: not a claim */
    }
  }
  return out;
}

export class UidRangeTaken extends Error {}

/**
 * Claims `count` uids from `first` on (or, with `pick`, the first free range after it,
 * moving in steps of the range's size rounded up to 1000).
 */
export async function claimUidRange(first: number, count: number, opts: { pick: boolean; root: string; needs: HostNeeds; dir?: string }): Promise<UidClaim> {
  const dir = opts.dir ?? CLAIMS_DIR;
  await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
  const step = Math.ceil(count / 1000) * 1000;
  const me = { pid: process.pid, start: startTime(process.pid) ?? '' };
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = first + attempt * step;
    const claim: ClaimFile = { ...me, first: base, last: base + count - 1, root: opts.root, needs: opts.needs };
    const name = `${base}-${claim.last}-${process.pid}.claim`;
    const path = `${dir}/${name}`;
    // Whole or not at all: written aside, then linked in (fails if the name exists), so a
    // server reading the folder never takes a half-written claim for none.
    const aside = `${dir}/.${name}.${process.pid}.new`;
    await fsp.writeFile(aside, JSON.stringify(claim), { mode: 0o644 });
    try {
      await fsp.link(aside, path);
    } finally {
      await fsp.rm(aside, { force: true });
    }
    const all = await readClaims(dir);
    const mine = all.find((c) => c.name === name);
    const others = all.filter((c) => c.name !== name && c.claim.first <= claim.last && c.claim.last >= claim.first);
    // the older claim keeps the range (ties: the lower pid)
    const yields = others.some((o) => !mine || o.created < mine.created || (o.created === mine.created && o.claim.pid < process.pid));
    if (!yields) {
      const isOlder = (o: (typeof all)[number]) => !mine || o.created < mine.created || (o.created === mine.created && o.claim.pid < process.pid);
      const unbounded: HostNeeds = { tasks: Number.MAX_SAFE_INTEGER, tcpBytes: Number.MAX_SAFE_INTEGER, memoryBytes: Number.MAX_SAFE_INTEGER };
      const older = all
        .filter((o) => o.name !== name && o.claim.pid !== process.pid && isOlder(o))
        .sort((a, b) => (a.created < b.created ? -1 : a.created > b.created ? 1 : a.claim.pid - b.claim.pid))
        .map((o) => ({ ...unbounded, ...o.claim.needs }));
      return {
        first: base,
        last: claim.last,
        older,
        release: () => fsp.rm(path, { force: true }),
      };
    }
    await fsp.rm(path, { force: true });
    if (!opts.pick) {
      const o = others[0]!.claim;
      throw new UidRangeTaken(
        `sandbox uids ${base}-${claim.last} overlap ${o.first}-${o.last}, used by the server with pid ${o.pid} (sessions root ${o.root}): choose another SANDBOX_UID_BASE`,
      );
    }
  }
  throw new UidRangeTaken(`no free range of ${count} sandbox uids from ${first} on`);
}
