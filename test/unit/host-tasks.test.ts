/**
 * The bound on processes and threads all sessions together may hold (src/sandbox/host-tasks.ts):
 * SANDBOX_SESSION_PIDS_MAX is lowered so that SANDBOX_MAX_SESSIONS sessions stay within this
 * server's share of the host's kernel.pid_max / kernel.threads-max, and all servers on the
 * host together within half (docs/threat-model.md, "Host-wide kernel resources", processes
 * and threads; "Many servers on one host").
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_SERVERS_MEMORY_SHARE, ALL_SERVERS_SHARE, MEMORY_TAKE, hostTasksBound, isOutOfTasks, serverBudget } from '../../src/sandbox/host-tasks.js';

const ALONE: number[] = [];

test('each server takes the smaller of its need and half of what older servers leave: any set of live servers stays within half', () => {
  assert.equal(ALL_SERVERS_SHARE, 0.5);
  // alone, a large server takes a quarter of the host; a small one its need
  assert.equal(serverBudget(32_768, [], 65_536), 8192);
  assert.equal(serverBudget(32_768, [], 192), 192);
  // after a small older server, a large one still gets nearly a quarter
  assert.equal(serverBudget(32_768, [192], 65_536), Math.floor((16_384 - 192) / 2));
  // large servers one after another: halves of what is left
  assert.equal(serverBudget(32_768, [65_536], 65_536), 4096);
  assert.equal(serverBudget(32_768, [65_536, 65_536], 65_536), 2048);
  // Whatever the needs and order, the parts (each worked out from the older ones' needs)
  // add up to half at most; a server whose older ones since stopped took less than now.
  const needs = [65_536, 10, 5000, 1_000_000, 300, 300, 8192, 65_536, 1, 40_000];
  let sum = 0;
  for (let k = 0; k < needs.length; k++) sum += serverBudget(32_768, needs.slice(0, k), needs[k]!);
  assert.ok(sum <= 16_384, String(sum));
  const withoutSome = [needs[0]!, needs[3]!, needs[7]!];
  assert.ok(serverBudget(32_768, withoutSome, 65_536) >= serverBudget(32_768, needs.slice(0, 8), 65_536), 'fewer older servers leave more');
});

test('the defaults on a host with pid_max 32768, the only server: 1024 per session is lowered to 32 for 256 sessions, 8192 at most', () => {
  const b = hostTasksBound({ sessionPidsMax: 1024, maxSessions: 256, pidMax: 32_768, threadsMax: 192_725, olderNeeds: ALONE });
  assert.equal(b.hostTasks, 32_768);
  assert.equal(b.perSession, 32);
  assert.equal(b.lowered, true);
  assert.equal(b.hostExhaustible, false);
  assert.ok(b.perSession * 256 <= 32_768 / 4);
  assert.match(b.text, /^at most 32 per session \(SANDBOX_SESSION_PIDS_MAX 1024, lowered for 256 sessions to stay within this server's part \(8192\) of the host's 32768 tasks/);
  assert.match(b.text, /8192 for all sessions together$/);
  // a second such server on the host: half of what the first leaves
  const second = hostTasksBound({ sessionPidsMax: 1024, maxSessions: 64, pidMax: 32_768, threadsMax: 192_725, olderNeeds: [256 * 1024] });
  assert.equal(second.perSession, 64);
  assert.match(second.text, /this server's part \(4096, after 1 older server on the host\)/);
});

test('threads-max counts when it is the smaller; odd figures round down', () => {
  const b = hostTasksBound({ sessionPidsMax: 1024, maxSessions: 3, pidMax: 4_194_304, threadsMax: 1001, olderNeeds: ALONE });
  assert.equal(b.hostTasks, 1001);
  assert.equal(b.perSession, 83, 'floor(floor(1001 / 4) / 3)');
  assert.ok(b.perSession * 3 <= 250);
});

test('a limit that fits is kept as configured', () => {
  const b = hostTasksBound({ sessionPidsMax: 1024, maxSessions: 8, pidMax: 4_194_304, threadsMax: 192_725, olderNeeds: ALONE });
  assert.equal(b.perSession, 1024);
  assert.equal(b.lowered, false);
  assert.equal(b.hostExhaustible, false);
  assert.match(b.text, /^at most 1024 per session \(SANDBOX_SESSION_PIDS_MAX\); 8192 for all sessions together, within this server's part \(8192\) of the host's 192725 tasks/);
});

test('never below 16 per session: where even that does not fit, the report says the host can run out and what to change', () => {
  const b = hostTasksBound({ sessionPidsMax: 1024, maxSessions: 10_000, pidMax: 32_768, threadsMax: null, olderNeeds: ALONE });
  assert.equal(b.perSession, 16);
  assert.equal(b.lowered, true);
  assert.equal(b.hostExhaustible, true, '10,000 x 16 > 8,192');
  assert.match(b.text, /10000 sessions could still hold 160000, past this server's part \(8192\) of the host's 32768 tasks .*: lower SANDBOX_MAX_SESSIONS or raise kernel.pid_max/);
  // a configured limit below the floor is never raised
  assert.equal(hostTasksBound({ sessionPidsMax: 16, maxSessions: 10_000, pidMax: 32_768, threadsMax: null, olderNeeds: ALONE }).perSession, 16);
});

test('unreadable host limits: the configured value, reported as unchecked', () => {
  const b = hostTasksBound({ sessionPidsMax: 1024, maxSessions: 256, pidMax: null, threadsMax: null, olderNeeds: ALONE });
  assert.equal(b.perSession, 1024);
  assert.equal(b.lowered, false);
  assert.equal(b.hostExhaustible, true);
  assert.match(b.text, /unreadable/);
});

test('a failed start is told apart as out of tasks by how each starter words EAGAIN', () => {
  assert.equal(isOutOfTasks('could not start the sandbox: BlockingIOError: [Errno 11] Resource temporarily unavailable'), true);
  assert.equal(isOutOfTasks('bwrap: Creating new namespace failed: Resource temporarily unavailable'), true);
  assert.equal(isOutOfTasks('could not start the sandbox: spawn EAGAIN'), true);
  assert.equal(isOutOfTasks('the sandbox exited while starting (status 1): bwrap: execvp python3: No such file or directory'), false);
  assert.equal(isOutOfTasks('the sandbox did not start in time'), false);
});

test("memory: all servers together within 75 % of the host's, a server alone 56 %, each later one at most three quarters of what is left", () => {
  const GiB = 1024 ** 3;
  const ram = 24 * GiB;
  const need = 256 * 2.6 * GiB;
  const alone = serverBudget(ram, [], need, ALL_SERVERS_MEMORY_SHARE, MEMORY_TAKE);
  assert.equal(alone, Math.floor(ram * 0.75 * 0.75));
  const second = serverBudget(ram, [need], need, ALL_SERVERS_MEMORY_SHARE, MEMORY_TAKE);
  assert.equal(second, Math.floor((ram * 0.75 - alone) * 0.75));
  let sum = 0;
  const needs = [need, 4 * GiB, need, need, GiB, need];
  for (let k = 0; k < needs.length; k++) sum += serverBudget(ram, needs.slice(0, k), needs[k]!, ALL_SERVERS_MEMORY_SHARE, MEMORY_TAKE);
  assert.ok(sum <= ram * 0.75, String(sum / GiB));
  // a small server takes its need only
  assert.equal(serverBudget(ram, [], 2 * GiB, ALL_SERVERS_MEMORY_SHARE, MEMORY_TAKE), 2 * GiB);
});
