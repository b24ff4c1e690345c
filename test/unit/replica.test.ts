import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newSessionId, replicaName, REPLICA_NAME } from '../../src/sessions/session.js';
import { loadConfig } from '../../src/config.js';

test('replicaName: the setting, else the host name made a DNS label', () => {
  assert.equal(replicaName('sandbox-2', 'whatever'), 'sandbox-2');
  assert.equal(replicaName('', 'otari-sandbox-0'), 'otari-sandbox-0');
  assert.equal(replicaName('', 'Ip-10-0-0-1.EC2.internal'), 'ip-10-0-0-1');
  assert.equal(replicaName('', 'my_host__name'), 'my-host-name');
  assert.equal(replicaName('', '---'), 'local');
  assert.equal(replicaName('', ''), 'local');
  const long = replicaName('', `${'a'.repeat(62)}-b${'c'.repeat(10)}`);
  assert.ok(long.length <= 63 && REPLICA_NAME.test(long), long);
  for (const h of ['x', 'A_B.c', '-a-', 'a'.repeat(100)]) assert.match(replicaName('', h), REPLICA_NAME, h);
});

test('SANDBOX_REPLICA_ID must be a DNS label', () => {
  assert.equal(loadConfig({ SANDBOX_REPLICA_ID: 'sandbox-0' }).replicaId, 'sandbox-0');
  for (const bad of ['Sandbox', 'a_b', '-a', 'a-', 'a.b', 'a'.repeat(64)]) assert.throws(() => loadConfig({ SANDBOX_REPLICA_ID: bad }), /SANDBOX_REPLICA_ID/, bad);
});

test('session ids carry the replica and 96 random bits', () => {
  const ids = new Set(Array.from({ length: 1000 }, () => newSessionId('sandbox-1')));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, /^sbx_sandbox-1_[0-9a-f]{24}$/);
});
