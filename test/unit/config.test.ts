import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig, ConfigError, describeSettings, preloadList, warmPoolParallelism } from '../../src/config.js';

test('defaults match the reference image', () => {
  const c = loadConfig({});
  assert.equal(c.port, 8080);
  assert.equal(c.sessionsRoot, '/var/sandbox/sessions');
  assert.equal(c.idleTimeoutSeconds, 900);
  assert.equal(c.maxLifetimeSeconds, 7200);
  assert.equal(c.gcIntervalSeconds, 30);
  assert.equal(c.memoryMb, 1536);
  assert.equal(c.cpuSeconds, 120);
  assert.equal(c.fileSizeMb, 256);
  assert.equal(c.maxOpenFiles, 256);
  assert.equal(c.maxOutputBytes, 1048576);
  assert.equal(c.maxSessions, 256);
  assert.equal(c.maxUploadBytes, 100 * 1024 * 1024);
  assert.ok(Object.isFrozen(c));
});

test('environment values are parsed and bounded', () => {
  const c = loadConfig({ PORT: '9000', SANDBOX_MAX_SESSIONS: '12', SANDBOX_PRELOAD_MODULES: 'numpy, pandas' });
  assert.equal(c.port, 9000);
  assert.equal(c.maxSessions, 12);
  assert.deepEqual(preloadList(c), ['numpy', 'pandas']);
  assert.deepEqual(preloadList(loadConfig({ SANDBOX_PRELOAD_MODULES: '-' })), []);
});

test('every invalid setting is reported at once', () => {
  try {
    loadConfig({ PORT: '99999', SANDBOX_MAX_SESSIONS: 'abc', SANDBOX_RUNNER_MEMORY_MB: '1', SANDBOX_ISOLATION: 'none', SANDBOX_PYTHON_TEMPLATE: 'maybe' });
    assert.fail('expected a ConfigError');
  } catch (e) {
    assert.ok(e instanceof ConfigError);
    const text = e.problems.join('\n');
    for (const name of ['PORT', 'SANDBOX_MAX_SESSIONS', 'SANDBOX_RUNNER_MEMORY_MB', 'SANDBOX_ISOLATION', 'SANDBOX_PYTHON_TEMPLATE']) assert.match(text, new RegExp(name), name);
    assert.equal(e.problems.length, 5);
  }
});

test('an explicit default timeout above the ceiling is refused; an implicit one follows the ceiling', () => {
  assert.throws(() => loadConfig({ SANDBOX_DEFAULT_TIMEOUT_SECONDS: '200', SANDBOX_RUNNER_WALL_CLOCK_SECONDS: '100' }), ConfigError);
  const c = loadConfig({ SANDBOX_RUNNER_WALL_CLOCK_SECONDS: '20' });
  assert.equal(c.defaultTimeoutSeconds, 20);
  assert.equal(c.maxTimeoutSeconds, 20);
});

test('the warm pool: SANDBOX_WARM_POOL_SIZE is its minimum (the maximum follows a larger one), an explicit smaller maximum is refused; parallel 0 is one per CPU, at most 4', () => {
  const d = loadConfig({});
  assert.deepEqual([d.warmPoolSize, d.warmPoolMax, d.warmPoolParallel], [2, 8, 0]);
  assert.equal(loadConfig({ SANDBOX_WARM_POOL_SIZE: '20' }).warmPoolMax, 20, 'a reference deployment that sets the size alone');
  assert.equal(loadConfig({ SANDBOX_WARM_POOL_SIZE: '3', SANDBOX_WARM_POOL_MAX: '3' }).warmPoolMax, 3);
  assert.throws(() => loadConfig({ SANDBOX_WARM_POOL_SIZE: '4', SANDBOX_WARM_POOL_MAX: '3' }), /SANDBOX_WARM_POOL_MAX \(3\) is below SANDBOX_WARM_POOL_SIZE \(4\)/);
  assert.deepEqual(
    [1, 2, 3, 64].map((cpus) => warmPoolParallelism(d, cpus)),
    [1, 2, 3, 4],
  );
  assert.equal(warmPoolParallelism(loadConfig({ SANDBOX_WARM_POOL_PARALLEL: '6' }), 2), 6);
});

test('boolean settings take true/false (1/0, yes/no, on/off) and refuse anything else', () => {
  assert.equal(loadConfig({}).warmUp, true);
  for (const [text, value] of [
    ['true', true],
    ['FALSE', false],
    ['0', false],
    [' yes ', true],
    ['off', false],
  ] as const)
    assert.equal(loadConfig({ SANDBOX_WARMUP: text }).warmUp, value, text);
  assert.throws(() => loadConfig({ SANDBOX_WARMUP: 'maybe' }), /SANDBOX_WARMUP="maybe": must be true or false/);
});

test('every setting is described with its variable and a default', () => {
  const rows = describeSettings();
  assert.ok(rows.length >= 25);
  for (const r of rows) {
    assert.match(r.env, /^(PORT|HOST|SANDBOX_[A-Z_]+)$/);
    assert.notEqual(r.default, undefined, r.env);
    assert.ok(r.description.length > 5, r.env);
  }
});
