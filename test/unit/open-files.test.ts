/**
 * The open-files bound /health and the start-up log report (src/sandbox/open-files.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openFilesBound } from '../../src/sandbox/open-files.js';

test('with a pids cgroup a session holds at most RLIMIT_NOFILE x SANDBOX_SESSION_PIDS_MAX files', () => {
  const b = openFilesBound({ nofile: 256, sessionPidsMax: 1024, pidsCgroup: true, maxSessions: 4, fileMax: 2_466_116 });
  assert.equal(b.perSession, 262_144);
  assert.equal(b.hostExhaustible, false, '4 x 262,144 < 2,466,116');
  assert.match(b.text, /at most 262144 per session/);
  assert.match(b.text, /stay below the host's fs.file-max \(2466116\)/);
});

test('sessions that together could reach fs.file-max are reported, with what to change', () => {
  const b = openFilesBound({ nofile: 256, sessionPidsMax: 1024, pidsCgroup: true, maxSessions: 256, fileMax: 2_466_116 });
  assert.equal(b.hostExhaustible, true);
  assert.match(b.text, /256 sessions could reach the host's fs.file-max/);
  assert.match(b.text, /SANDBOX_RUNNER_NOFILE/);
});

test('without a pids cgroup there is no per-session total; an unreadable or unlimited fs.file-max', () => {
  const none = openFilesBound({ nofile: 256, sessionPidsMax: 1024, pidsCgroup: false, maxSessions: 1, fileMax: 2_466_116 });
  assert.equal(none.perSession, null);
  assert.equal(none.hostExhaustible, true);
  assert.match(none.text, /no total per session/);
  assert.equal(openFilesBound({ nofile: 256, sessionPidsMax: 1024, pidsCgroup: true, maxSessions: 1, fileMax: null }).hostExhaustible, true);
  assert.equal(openFilesBound({ nofile: 256, sessionPidsMax: 1024, pidsCgroup: true, maxSessions: 10_000, fileMax: Number('9223372036854775807') }).hostExhaustible, false);
});
