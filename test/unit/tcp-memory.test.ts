/**
 * A session's share of the host-wide TCP buffer memory (src/sandbox/tcp-memory.ts;
 * docs/threat-model.md, "Host-wide kernel resources", socket buffers).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MIN_SESSION_TCP_BYTES, SESSION_TCP_WANT_BYTES, tcpMemoryBound } from '../../src/sandbox/tcp-memory.js';

const ALONE: number[] = [];

const MiB = 1024 * 1024;
const PAGE = 4096;
// the red team's host: tcp_mem 287892 383858 575784 pages (pressure 1.46 GiB, max 2.2 GiB)
const HOST = { min: 287_892 * PAGE, pressure: 383_858 * PAGE, max: 575_784 * PAGE };
const DEFAULT_LEAF = (1536 + 1024 + 64) * MiB; // memory + workspace + shm: 2.6 GiB, past tcp_mem's max

test('v1, the defaults, the only server: 256 sessions get a 1/256 part of its quarter of the pressure threshold each, not their 2.6 GiB memory limit', () => {
  const b = tcpMemoryBound({ memoryBytes: DEFAULT_LEAF, maxSessions: 256, tcpMem: HOST, perSessionLimit: true, olderNeeds: ALONE });
  assert.equal(b.lowered, true);
  assert.equal(b.perSessionBytes % PAGE, 0, 'whole pages');
  const budget = Math.floor(HOST.pressure / 4);
  assert.ok(b.perSessionBytes <= budget / 256 && b.perSessionBytes > budget / 256 - PAGE, String(b.perSessionBytes));
  assert.ok(b.perSessionBytes * 256 <= HOST.pressure / 4, "all sessions together within the server's quarter of the pressure point");
  assert.equal(b.hostExhaustible, false);
  assert.match(
    b.text,
    /^TCP buffers capped at 1\.5 MiB per session \(a 1\/256 part of this server's part \(374\.\d MiB\) of the host's TCP pressure threshold\); 256 sessions together at most /,
  );
  // a second such server: half of what the first leaves
  const second = tcpMemoryBound({ memoryBytes: DEFAULT_LEAF, maxSessions: 64, tcpMem: HOST, perSessionLimit: true, olderNeeds: [256 * SESSION_TCP_WANT_BYTES] });
  assert.ok(second.perSessionBytes * 64 <= HOST.pressure / 8 + PAGE);
  assert.match(second.text, /after 1 older server on the host/);
});

test('v1, few sessions: each gets what a session may want (16 MiB), not more, and the server takes only that', () => {
  const b = tcpMemoryBound({ memoryBytes: DEFAULT_LEAF, maxSessions: 4, tcpMem: HOST, perSessionLimit: true, olderNeeds: ALONE });
  assert.equal(b.perSessionBytes, SESSION_TCP_WANT_BYTES);
  assert.match(b.text, /\(what a session may want\)/);
});

test('v1, a memory limit below what a session may want: the memory limit is kept', () => {
  const b = tcpMemoryBound({ memoryBytes: 8 * MiB, maxSessions: 2, tcpMem: HOST, perSessionLimit: true, olderNeeds: ALONE });
  assert.equal(b.perSessionBytes, 8 * MiB);
  assert.equal(b.lowered, false);
  assert.match(b.text, /\(the session's memory limit\)/);
});

test('v1, very many sessions: never below the floor, and then the host can still be exhausted, said with what to change', () => {
  const b = tcpMemoryBound({ memoryBytes: DEFAULT_LEAF, maxSessions: 10_000, tcpMem: HOST, perSessionLimit: true, olderNeeds: ALONE });
  assert.equal(b.perSessionBytes, MIN_SESSION_TCP_BYTES);
  assert.equal(b.hostExhaustible, true);
  assert.match(b.text, /past this server's part .* of the host's TCP pressure threshold .*lower SANDBOX_MAX_SESSIONS/);
});

test('v2: no TCP limit of its own; the memory limits together are compared with tcp_mem max', () => {
  const many = tcpMemoryBound({ memoryBytes: DEFAULT_LEAF, maxSessions: 256, tcpMem: HOST, perSessionLimit: false, olderNeeds: ALONE });
  assert.equal(many.perSessionBytes, DEFAULT_LEAF);
  assert.equal(many.hostExhaustible, true);
  assert.match(many.text, /bounded by its memory limit only .* could pass the host's TCP memory/);
  const few = tcpMemoryBound({ memoryBytes: 145 * MiB, maxSessions: 2, tcpMem: HOST, perSessionLimit: false, olderNeeds: ALONE });
  assert.equal(few.hostExhaustible, false);
});

test('an unreadable tcp_mem: the memory limit, reported as unchecked', () => {
  const b = tcpMemoryBound({ memoryBytes: DEFAULT_LEAF, maxSessions: 256, tcpMem: null, perSessionLimit: true, olderNeeds: ALONE });
  assert.equal(b.perSessionBytes, DEFAULT_LEAF);
  assert.equal(b.hostExhaustible, true);
  assert.match(b.text, /unreadable/);
});
