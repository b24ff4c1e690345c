/**
 * The session manager over fake boxes (no process, no folder, no root): creation,
 * capacity, deletion, the warm pool, shutdown, and idle and lifetime expiry on an
 * injected clock (no real time passes in these tests).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { loadConfig } from '../../src/config.js';
import { SessionManager } from '../../src/sessions/manager.js';
import type { SessionBox } from '../../src/sessions/session.js';

class FakeBox implements SessionBox {
  readonly undoDir = '/nonexistent/undo';
  readonly undoMaxBytes = 0;
  promoted = 0;
  stopped = 0;
  destroyed = 0;
  /** With `holdCleanup`, destroy() resolves only once the test calls finishCleanup(). */
  finishCleanup: () => void = () => {};
  private readonly cleanup: Promise<void>;

  constructor(
    readonly serial: number,
    holdCleanup = false,
  ) {
    this.cleanup = holdCleanup ? new Promise<void>((resolve) => (this.finishCleanup = resolve)) : Promise.resolve();
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

/** Boxes on demand; with `hold`, each make waits until the test lets it finish or fail. */
class Factory {
  readonly made: FakeBox[] = [];
  readonly held: { finish: () => void; fail: (e: Error) => void }[] = [];

  constructor(
    private readonly hold = false,
    private readonly holdCleanup = false,
  ) {}

  readonly make = (): Promise<FakeBox> => {
    const box = new FakeBox(this.made.length + 1, this.holdCleanup);
    if (!this.hold) {
      this.made.push(box);
      return Promise.resolve(box);
    }
    return new Promise<FakeBox>((resolve, reject) => {
      this.held.push({
        finish: () => {
          this.made.push(box);
          resolve(box);
        },
        fail: reject,
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
  assert.deepEqual(m.poolState(), { target: 1, ready: 0, starting: 1 });
  factory.held[0]!.finish();
  await settle();
  assert.deepEqual(m.poolState(), { target: 1, ready: 1, starting: 0 });

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
