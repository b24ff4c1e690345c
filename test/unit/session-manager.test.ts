/**
 * The session manager over fake boxes (no process, no folder, no root): creation,
 * capacity, deletion, the warm pool (its parallel refills, its target following the
 * create rate), shutdown, and idle and lifetime expiry on an injected clock (no real time
 * passes in these tests: the clock moves when a test moves it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { loadConfig } from '../../src/config.js';
import { SessionManager } from '../../src/sessions/manager.js';
import { DEMAND_WINDOW_SECONDS, PoolDemand } from '../../src/sessions/pool-demand.js';
import type { SessionBox } from '../../src/sessions/session.js';

class FakeBox implements SessionBox {
  readonly undoDir = '/nonexistent/undo';
  readonly undoMaxBytes = 0;
  promoted = 0;
  stopped = 0;
  destroyed = 0;
  /** Its cleanup has ended (it no longer holds a place on the host). */
  cleanedUp = false;
  /** With `holdCleanup`, destroy() resolves only once the test calls finishCleanup(). */
  finishCleanup: () => void = () => {};
  private readonly cleanup: Promise<void>;

  constructor(
    readonly serial: number,
    holdCleanup = false,
  ) {
    const cleanup = holdCleanup ? new Promise<void>((resolve) => (this.finishCleanup = resolve)) : Promise.resolve();
    this.cleanup = cleanup.then(() => {
      this.cleanedUp = true;
    });
  }

  /** Its interpreter died while it waited in the pool. */
  dead = false;
  usable(): boolean {
    return !this.dead;
  }
  promote(): Promise<void> {
    this.promoted++;
    return Promise.resolve();
  }

  stop(): Promise<void> {
    this.stopped++;
    return Promise.resolve();
  }

  destroy(): Promise<void> {
    this.destroyed++;
    return this.stop().then(() => this.cleanup);
  }
}

/** Boxes on demand; with `hold`, each make waits until the test lets it finish or fail.
 * It counts the makes under way (and the most at once) and the boxes that hold a place on
 * the host (being made, or made and not yet cleaned up). */
class Factory {
  readonly made: FakeBox[] = [];
  readonly held: { finish: () => void; fail: (e: Error) => void }[] = [];
  inflight = 0;
  maxInflight = 0;
  private madeCount = 0;
  private onMake: (() => void)[] = [];

  constructor(
    private readonly hold = false,
    private readonly holdCleanup = false,
  ) {}

  /** Boxes being made or made and not yet cleaned up. */
  get onHost(): number {
    return this.inflight + this.made.filter((b) => !b.cleanedUp).length;
  }

  /** Resolves at the next make (an event, not a delay). */
  nextMake(): Promise<void> {
    return new Promise((resolve) => this.onMake.push(resolve));
  }

  /** Lets every held make finish. */
  finishAll(): number {
    const held = this.held.splice(0);
    for (const h of held) h.finish();
    return held.length;
  }

  readonly make = (): Promise<FakeBox> => {
    const box = new FakeBox(++this.madeCount, this.holdCleanup);
    for (const wake of this.onMake.splice(0)) wake();
    if (!this.hold) {
      this.made.push(box);
      return Promise.resolve(box);
    }
    this.inflight++;
    this.maxInflight = Math.max(this.maxInflight, this.inflight);
    return new Promise<FakeBox>((resolve, reject) => {
      this.held.push({
        finish: () => {
          this.inflight--;
          this.made.push(box);
          resolve(box);
        },
        fail: (e: Error) => {
          this.inflight--;
          reject(e);
        },
      });
    });
  };
}

const silent = pino({ level: 'silent' });
/** Lets every settled promise's callbacks run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

function manager(env: Record<string, string>, factory: Factory, clock?: { now: number }) {
  const config = loadConfig({ SANDBOX_WARM_POOL_SIZE: '0', ...env });
  return new SessionManager<FakeBox>(config, factory.make, silent, clock ? () => clock.now : undefined);
}

function assertCode(code: string) {
  return (e: unknown) => {
    assert.equal((e as { code?: string }).code, code, String(e));
    return true;
  };
}

test('create gives each session a box of its own, promoted; get finds it; destroy destroys its box once and forgets it', async () => {
  const factory = new Factory();
  const m = manager({}, factory);
  const a = await m.create({});
  const b = await m.create({});
  assert.notEqual(a.id, b.id);
  assert.notEqual(a.box, b.box);
  assert.equal(m.count, 2);
  assert.equal(m.get(a.id), a);
  assert.equal(a.box.promoted, 1, 'a box taken by a session runs at normal priority');

  assert.equal(await m.destroy(a.id), true);
  assert.equal(a.box.destroyed, 1);
  assert.equal(a.closed, true, 'calls still queued on it see the session gone');
  assert.equal(m.has(a.id), false);
  assert.throws(() => m.get(a.id), assertCode('SBX_SESSION_NOT_FOUND'));
  assert.equal(await m.destroy(a.id), false, 'a second delete is a no-op');
  assert.equal(a.box.destroyed, 1);
  assert.equal(b.box.destroyed, 0, 'the other session is untouched');
  assert.equal(m.count, 1);
});

test('past SANDBOX_MAX_SESSIONS a create is refused with SBX_AT_CAPACITY and a Retry-After; a delete makes room', async () => {
  const factory = new Factory();
  const m = manager({ SANDBOX_MAX_SESSIONS: '2' }, factory);
  const a = await m.create({});
  await m.create({});
  await assert.rejects(m.create({}), (e: unknown) => {
    assertCode('SBX_AT_CAPACITY')(e);
    assert.ok(Number((e as { headers: Record<string, string> }).headers['retry-after']) >= 1);
    return true;
  });
  assert.equal(factory.made.length, 2, 'no box was made for the refused create');
  await m.destroy(a.id);
  await m.create({});
  assert.equal(m.count, 2);
});

test('a delete answers once the processes are killed; the cleanup after it counts against capacity, and a create at capacity waits for it', async () => {
  const factory = new Factory(false, true);
  const m = manager({ SANDBOX_MAX_SESSIONS: '2' }, factory);
  const a = await m.create({});
  await m.create({});
  assert.equal(await m.destroy(a.id), true, 'answered while the cleanup is still under way');
  assert.ok(a.box.stopped > 0, 'every process was sent SIGKILL first');
  assert.equal(m.has(a.id), false);
  assert.equal(m.cleaning, 1);
  let created = false;
  const c = m.create({}).then((s) => {
    created = true;
    return s;
  });
  await settle();
  assert.equal(created, false, 'no room until the cleanup is done');
  assert.equal(factory.made.length, 2, 'and no box made past capacity');
  a.box.finishCleanup();
  assert.equal((await c).box.serial, 3);
  assert.equal(m.cleaning, 0);
  assert.equal(m.count, 2);
});

test('room a cleanup frees goes to the creates waiting for it, not to a pool refill', async () => {
  // The pool wants 1 box; 2 sessions fill capacity; a delete's cleanup is under way. When
  // it ends, the create waiting for that room must get it (a refill taking it first
  // answered that create 503: seen in CI).
  const factory = new Factory(false, true);
  const m = manager({ SANDBOX_MAX_SESSIONS: '2', SANDBOX_WARM_POOL_SIZE: '1' }, factory);
  const a = await m.create({});
  await m.create({});
  await m.destroy(a.id);
  const c = m.create({});
  await settle();
  a.box.finishCleanup();
  const s = await c;
  assert.equal(m.count, 2);
  assert.equal(m.poolState().ready + m.poolState().starting, 0, 'no pool box past capacity');
  assert.notEqual(s.box, a.box);
});

test('a delete racing a reap of the same session stops and destroys its box once', async () => {
  const clock = { now: 1_000 };
  const factory = new Factory();
  const m = manager({ SANDBOX_SESSION_IDLE_TIMEOUT: '60' }, factory, clock);
  const a = await m.create({});
  clock.now += 61;
  const [deleted, reaped] = await Promise.all([m.destroy(a.id), m.reap()]);
  assert.equal(Number(deleted) + reaped, 1, 'one of them took it');
  await settle();
  assert.equal(a.box.destroyed, 1);
});

test('boxes still being made count against capacity; a box that cannot be made frees its room', async () => {
  const factory = new Factory(true);
  const m = manager({ SANDBOX_MAX_SESSIONS: '2' }, factory);
  const first = m.create({});
  const second = m.create({});
  const secondFails = assert.rejects(second, /the sandbox did not start/);
  await settle();
  assert.equal(factory.held.length, 2);
  await assert.rejects(m.create({}), assertCode('SBX_AT_CAPACITY'));
  factory.held[0]!.finish();
  factory.held[1]!.fail(new Error('the sandbox did not start'));
  assert.equal((await first).box.serial, 1);
  await secondFails;
  assert.equal(m.count, 1);
  const third = m.create({});
  await settle();
  factory.held[2]!.finish();
  await third;
  assert.equal(m.count, 2);
});

test('a session idle past its timeout is reaped and its box destroyed; lifetime hints are clamped to the ceilings', async () => {
  const clock = { now: 1_000 };
  const factory = new Factory();
  const m = manager({ SANDBOX_SESSION_IDLE_TIMEOUT: '60', SANDBOX_SESSION_MAX_LIFETIME: '600' }, factory, clock);
  const short = await m.create({ idleTimeoutSeconds: 10 });
  const long = await m.create({ idleTimeoutSeconds: 1_000_000, maxLifetimeSeconds: 1_000_000 });
  assert.equal(long.idleTimeoutSeconds, 60, 'the idle hint is clamped to SANDBOX_SESSION_IDLE_TIMEOUT');
  assert.equal(long.maxLifetimeSeconds, 600, 'the lifetime hint is clamped to SANDBOX_SESSION_MAX_LIFETIME');

  clock.now += 10;
  assert.equal(await m.reap(), 0, 'exactly at the timeout is not past it');
  clock.now += 1;
  assert.equal(await m.reap(), 1);
  assert.equal(m.has(short.id), false);
  assert.equal(short.box.destroyed, 1);
  assert.equal(m.has(long.id), true);

  long.touch(); // activity restarts the idle clock
  clock.now += 60;
  assert.equal(await m.reap(), 0);
  clock.now += 1;
  assert.equal(await m.reap(), 1);
  assert.equal(long.box.destroyed, 1);
});

test('a call in flight keeps an idle session; the lifetime ceiling reaps it all the same', async () => {
  const clock = { now: 1_000 };
  const m = manager({ SANDBOX_SESSION_IDLE_TIMEOUT: '60', SANDBOX_SESSION_MAX_LIFETIME: '600' }, new Factory(), clock);
  const s = await m.create({});
  let endCall!: () => void;
  const call = s.serialize(8, () => new Promise<void>((resolve) => (endCall = resolve)));
  await settle();
  clock.now += 100;
  assert.equal(await m.reap(), 0, 'a running call counts as activity');
  endCall();
  await call;
  assert.equal(s.lastActivityAt, clock.now, 'the call ending is activity');
  clock.now += 61;
  assert.equal(await m.reap(), 1);

  const busy = await m.create({});
  const stuck = busy.serialize(8, () => new Promise<void>(() => {}));
  stuck.catch(() => {});
  await settle();
  clock.now += 601;
  assert.equal(await m.reap(), 1, 'past its lifetime, a session goes even while busy');
  assert.equal(busy.box.destroyed, 1);
  assert.equal(busy.closed, true);
});

test('a warm-pool box goes to the next create, once; shutdown destroys every box and refuses new creates', async () => {
  const factory = new Factory(true);
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '1', SANDBOX_MAX_SESSIONS: '4' }, factory);
  m.start();
  await settle();
  assert.equal(factory.held.length, 1, 'the pool is being filled');
  assert.deepEqual(m.poolState(), { target: 1, ready: 0, starting: 1, min: 1, max: 8 });
  factory.held[0]!.finish();
  await settle();
  assert.deepEqual(m.poolState(), { target: 1, ready: 1, starting: 0, min: 1, max: 8 });

  const s = await m.create({});
  assert.equal(s.box, factory.made[0], 'the pooled box');
  assert.equal(factory.held.length, 1, 'the create made no box of its own');
  assert.equal(m.poolState().ready, 0);
  assert.equal(s.box.promoted, 1);

  await m.shutdown(0);
  assert.equal(s.box.destroyed, 1);
  assert.equal(m.count, 0);
  await assert.rejects(m.create({}), assertCode('SBX_SHUTTING_DOWN'));
});

test('a pooled box whose interpreter died while it waited is not given to a session: it is destroyed and the create gets a box that works', async () => {
  const factory = new Factory();
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '2', SANDBOX_MAX_SESSIONS: '4' }, factory);
  m.start();
  await settle();
  assert.equal(m.poolState().ready, 2);
  const [first, second] = factory.made;
  first!.dead = true; // (the template died, say)
  const s = await m.create({});
  assert.equal(s.box, second, 'the next pooled box, which works');
  assert.equal(first!.destroyed, 1, 'the dead one is destroyed');
  await settle();
  const pooled = factory.made.filter((b) => b !== first && b !== second);
  assert.ok(pooled.length > 0, 'the pool was refilled');
  for (const b of pooled) b.dead = true;
  const t = await m.create({});
  assert.ok(!pooled.includes(t.box) && !t.box.dead, 'with every pooled box dead, the create gets a new one');
  for (const b of pooled) assert.equal(b.destroyed, 1);
  await m.shutdown(0);
});

test('a create waits for a pool refill under way rather than making a second box', async () => {
  const factory = new Factory(true);
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '1', SANDBOX_MAX_SESSIONS: '1' }, factory);
  m.start();
  await settle();
  const create = m.create({});
  await settle();
  assert.equal(factory.held.length, 1, 'only the refill makes a box');
  factory.held[0]!.finish();
  const s = await create;
  assert.equal(s.box, factory.made[0]);
  await m.shutdown(0);
  assert.equal(s.box.destroyed, 1);
});

test('pool demand: the target is the minimum plus the busiest recent second of creates times the refill time, clamped, fading over the window', () => {
  const d = new PoolDemand(2, 10);
  assert.equal(d.target(1_000), 2, 'no create seen: the minimum');
  for (let i = 0; i < 8; i++) d.recordCreate(1_000.2);
  assert.equal(d.target(1_000.5), 2, 'no box made yet: no refill time, so nothing is taken while one is made');
  d.recordRefill(0.5);
  assert.equal(d.refillSeconds, 0.5, 'the first refill time is taken as it is');
  assert.equal(d.target(1_000.5), 2 + 4, '8 creates in one second, 0.5 s per box: 4 taken while one is made');
  d.recordRefill(1.5);
  assert.equal(d.refillSeconds, 0.75, 'a moving average (a quarter of the newest)');
  assert.equal(d.target(1_000.5), 2 + 6);
  for (let i = 0; i < 4; i++) d.recordCreate(1_001.1);
  assert.equal(d.target(1_001.5), 2 + Math.round(8 * (59 / 60) * 0.75), 'the busiest second counts, not the sum');
  for (let i = 0; i < 40; i++) d.recordCreate(1_001.2);
  assert.equal(d.target(1_001.5), 10, 'at most the maximum');
  // When creates stop, the burst weighs less with each second and nothing after a window.
  const at = (age: number) => d.target(1_001 + age);
  const decay = [1, 10, 30, 50, 59, DEMAND_WINDOW_SECONDS].map(at);
  for (let i = 1; i < decay.length; i++) assert.ok(decay[i]! <= decay[i - 1]!, `the target only falls: ${decay.join(', ')}`);
  assert.equal(at(30), 10, '44 creates/s weighed by half, times 0.75 s, is still past the maximum');
  assert.equal(at(DEMAND_WINDOW_SECONDS), 2, 'one window after the last create: the minimum');
  d.forgetCreates();
  assert.equal(d.target(1_001.5), 2, 'forgotten creates are no demand');
  assert.equal(d.refillSeconds, 0.75, 'the refill time is kept');
  assert.equal(new PoolDemand(3, 3).target(0), 3, 'a fixed pool (max = min)');
});

test('the pool refills in parallel up to SANDBOX_WARM_POOL_PARALLEL, never more at once', async () => {
  const factory = new Factory(true);
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '5', SANDBOX_WARM_POOL_PARALLEL: '2', SANDBOX_MAX_SESSIONS: '10' }, factory);
  m.start();
  await settle();
  assert.equal(factory.inflight, 2, 'two refills at once');
  assert.deepEqual(m.poolState(), { target: 5, ready: 0, starting: 2, min: 5, max: 8 });
  factory.held[0]!.finish();
  factory.held.shift();
  await settle();
  assert.equal(factory.inflight, 2, 'a refill that lands makes room for the next');
  assert.equal(m.poolState().ready, 1);
  while (factory.finishAll() > 0) await settle();
  assert.deepEqual(m.poolState(), { target: 5, ready: 5, starting: 0, min: 5, max: 8 });
  assert.equal(factory.maxInflight, 2, 'never more than two at once');
  await m.shutdown(0);
});

test('while a call is running, refills go one at a time; when it ends they widen again', async () => {
  const factory = new Factory(true);
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '4', SANDBOX_WARM_POOL_PARALLEL: '4', SANDBOX_MAX_SESSIONS: '10' }, factory);
  m.start();
  await settle();
  assert.equal(factory.inflight, 4);
  factory.finishAll();
  await settle();
  const busy = await m.create({});
  await m.create({});
  await m.create({});
  assert.equal(m.poolState().ready, 1);
  let endCall!: () => void;
  const call = busy.serialize(8, () => new Promise<void>((resolve) => (endCall = resolve)));
  await settle();
  m.balancePool();
  assert.equal(factory.inflight, 1, 'one refill while the call runs, though three boxes are missing');
  m.balancePool();
  assert.equal(factory.inflight, 1);
  // The end of the last running call starts the refills it held back (on the manager's
  // short, unreferenced refill timer: the interval keeps this process up meanwhile).
  const made = factory.nextMake();
  const keepAlive = setInterval(() => {}, 1000);
  endCall();
  await call;
  await made;
  clearInterval(keepAlive);
  assert.equal(factory.inflight, 3, 'the other two start once no call is running');
  const shutdown = m.shutdown(0);
  factory.finishAll();
  await shutdown;
});

test('the pool target grows under a burst of creates, never past the maximum, and falls back to the minimum when creates stop', async () => {
  const clock = { now: 1_000 };
  const factory = new Factory(true);
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '1', SANDBOX_WARM_POOL_MAX: '5', SANDBOX_WARM_POOL_PARALLEL: '2', SANDBOX_MAX_SESSIONS: '32' }, factory, clock);
  m.start();
  await settle();
  clock.now += 0.5; // a box takes half a second to make
  factory.finishAll();
  await settle();
  assert.deepEqual(m.poolState(), { target: 1, ready: 1, starting: 0, min: 1, max: 5 });

  // A burst: 12 creates within one second. The first takes the pooled box; the others
  // make their own (their clients are waiting) or wait for a refill under way. Each box
  // still takes half a second: 12/s × 0.5 s is more than the maximum.
  const creates = Array.from({ length: 12 }, () => m.create({}));
  await settle();
  let mostStarting = 0;
  while (m.count < 12) {
    clock.now += 0.5;
    mostStarting = Math.max(mostStarting, m.poolState().starting);
    factory.finishAll();
    await settle();
  }
  await Promise.all(creates);
  const grown = m.poolState().target;
  assert.equal(grown, 5, 'the target grew with the burst, to SANDBOX_WARM_POOL_MAX and not past it');

  // The pool fills to its new target, two refills at a time.
  m.balancePool();
  while (m.poolState().ready < m.poolState().target) {
    mostStarting = Math.max(mostStarting, m.poolState().starting);
    clock.now += 0.5;
    assert.ok(factory.finishAll() > 0, `refills under way while the pool is below its target: ${JSON.stringify(m.poolState())}`);
    await settle();
  }
  assert.equal(mostStarting, 2, 'two refills at once, not more');
  const filled = m.poolState().ready;
  assert.equal(filled, 5);

  // No more creates: the target falls back to the minimum within one window, and the
  // next balance destroys the ready boxes above it.
  clock.now += DEMAND_WINDOW_SECONDS * 0.8;
  const fading = m.poolState().target;
  assert.ok(fading > 1 && fading < grown, `the target falls step by step (${fading})`);
  clock.now += DEMAND_WINDOW_SECONDS * 0.2 + 1;
  assert.equal(m.poolState().target, 1);
  const destroyedBefore = factory.made.filter((b) => b.destroyed > 0).length;
  m.balancePool();
  await settle();
  assert.equal(m.poolState().ready, 1);
  assert.equal(factory.made.filter((b) => b.destroyed > 0).length - destroyedBefore, filled - 1, 'the surplus boxes are destroyed');
  assert.equal(factory.inflight, 0, 'and none is made');
  await m.shutdown(0);
});

test("forgotten creates (the start-up warm-up's) are no demand", async () => {
  const clock = { now: 1_000 };
  const factory = new Factory();
  // Each box takes 2 s of the injected clock.
  const slowMake = () => {
    clock.now += 2;
    return factory.make();
  };
  const m = new SessionManager<FakeBox>(loadConfig({ SANDBOX_WARM_POOL_SIZE: '0', SANDBOX_WARM_POOL_MAX: '4' }), slowMake, silent, () => clock.now);
  const s = await m.create({});
  assert.ok(m.poolState().target > 0, 'one create a second, 2 s per box: demand');
  m.forgetCreates();
  assert.equal(m.poolState().target, 0);
  await m.destroy(s.id);
});

test('a grown pool never takes the server past SANDBOX_MAX_SESSIONS: sessions, pool, boxes being made and cleanups together', async () => {
  const clock = { now: 1_000 };
  const factory = new Factory(true, true);
  const m = manager({ SANDBOX_WARM_POOL_SIZE: '1', SANDBOX_WARM_POOL_MAX: '8', SANDBOX_WARM_POOL_PARALLEL: '4', SANDBOX_MAX_SESSIONS: '4' }, factory, clock);
  const check = () => {
    const p = m.poolState();
    assert.ok(m.count + p.ready + p.starting + m.cleaning <= 4, `over capacity: ${m.count} sessions, ${m.cleaning} cleaning, pool ${JSON.stringify(p)}`);
    assert.ok(factory.onHost <= 4, `${factory.onHost} boxes on the host`);
  };
  m.start();
  await settle();
  clock.now += 1;
  factory.finishAll();
  await settle();
  const creates = [m.create({}), m.create({}), m.create({})];
  await settle();
  check();
  clock.now += 1;
  factory.finishAll();
  const [a, b] = await Promise.all(creates);
  assert.ok(m.poolState().target > 2, 'demand asks for more than the room left');
  for (let i = 0; i < 5; i++) {
    m.balancePool();
    await settle();
    check();
    factory.finishAll();
    await settle();
    check();
  }
  assert.equal(m.poolState().ready, 1, 'the one place left');
  // A delete's cleanup still holds its place: no refill takes it until the cleanup ends.
  await m.destroy(a!.id);
  m.balancePool();
  await settle();
  check();
  assert.equal(factory.inflight, 0);
  a!.box.finishCleanup();
  await settle();
  check();
  assert.equal(factory.inflight, 1, 'the freed place goes to the pool');
  factory.finishAll();
  await settle();
  check();
  await m.destroy(b!.id);
  b!.box.finishCleanup();
  await settle();
  check();
  const shutdown = m.shutdown(0);
  factory.finishAll();
  await settle();
  for (const box of factory.made) box.finishCleanup();
  await shutdown;
  assert.equal(factory.onHost, 0, 'shutdown leaves nothing');
});
