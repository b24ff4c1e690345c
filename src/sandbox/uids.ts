/**
 * Per-box host uids. When the server runs as root, each box runs as its own
 * unprivileged host uid (base + slot), never as root: a process that escaped its
 * namespaces would still be a distinct nobody that owns none of the other sessions'
 * files. It also gives a kill that nothing escapes: every process of that uid.
 * Without root every box runs as the server's uid and this allocator is not used.
 */
import { promises as fsp } from 'node:fs';
import { execFile } from 'node:child_process';
import { setPriority } from 'node:os';

export class UidAllocator {
  private free: number[] = [];
  private next: number;

  constructor(
    private readonly base: number,
    private readonly count: number,
  ) {
    this.next = base;
  }

  /** A uid never handed out yet, else the one released longest ago: a box's processes are
   * gone from its cgroup when its uid is released, but one may still be finishing its exit
   * in the kernel for a moment (state running, nothing of it left but its task), so a
   * released uid goes to the back of the queue. */
  allocate(): number {
    if (this.next < this.base + this.count) return this.next++;
    const reused = this.free.shift();
    if (reused !== undefined) return reused;
    throw new Error('no free sandbox uid');
  }

  release(uid: number): void {
    if (uid >= this.base && uid < this.base + this.count && !this.free.includes(uid)) this.free.push(uid);
  }

  /** Every uid this allocator may hand out, for the start-up sweep. */
  range(): { first: number; last: number } {
    return { first: this.base, last: this.base + this.count - 1 };
  }
}

/** Live (not zombie) host pids whose owner is in [first, last]. A zombie cannot be
 * killed and is only waiting for its new parent to reap it, so it does not count. */
export async function pidsOfUids(first: number, last: number): Promise<Map<number, number[]>> {
  const byUid = new Map<number, number[]>();
  const names = await fsp.readdir('/proc');
  await Promise.all(
    names.map(async (n) => {
      if (!/^\d+$/.test(n)) return;
      const st = await fsp.stat(`/proc/${n}`).catch(() => null);
      if (!st || st.uid < first || st.uid > last) return;
      const stat = await fsp.readFile(`/proc/${n}/stat`, 'utf8').catch(() => '');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state === 'Z' || state === 'X' || state === '') return;
      const list = byUid.get(st.uid) ?? [];
      list.push(Number(n));
      byUid.set(st.uid, list);
    }),
  );
  return byUid;
}

/** SIGKILL every process of `uid` (kill(-1) run as that uid), until none is left. */
export async function killUid(uid: number): Promise<number> {
  let seen = 0;
  for (let round = 0; round < 50; round++) {
    const pids = (await pidsOfUids(uid, uid)).get(uid) ?? [];
    if (pids.length === 0) return seen;
    seen = Math.max(seen, pids.length);
    await new Promise<void>((resolve) => {
      execFile('/bin/kill', ['-9', '-1'], { uid, gid: uid, env: { PATH: '/usr/bin:/bin' } }, () => resolve());
    });
    await new Promise((r) => setTimeout(r, round < 5 ? 5 : 50));
  }
  return seen;
}

/** Sets the niceness of every thread of the given processes (needs root to lower it). */
export async function renice(pids: number[], nice: number): Promise<void> {
  for (const pid of pids) {
    const tids = await fsp.readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
    for (const tid of tids) {
      try {
        setPriority(Number(tid), nice);
      } catch {
        /* gone meanwhile */
      }
    }
  }
}
