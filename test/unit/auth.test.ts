import { test } from 'node:test';
import assert from 'node:assert/strict';
import { allowedHosts, bearerCheck, hostName, isLoopbackAddress } from '../../src/http/auth.js';
import { loadConfig, ConfigError, parseTokens } from '../../src/config.js';

const A = 'aaaaaaaaaaaaaaaaaaaa';
const B = 'bbbbbbbbbbbbbbbbbbbb';

test('parseTokens: comma-separated, trimmed, empty entries ignored; problems never name the token', () => {
  assert.deepEqual(parseTokens(''), { tokens: [], problems: [] });
  assert.deepEqual(parseTokens(` ${A} ,, ${B} `), { tokens: [A, B], problems: [] });
  const bad = parseTokens(`${A},tiny-secret,${'c'.repeat(20)} x`);
  assert.deepEqual(bad.tokens, [A]);
  assert.equal(bad.problems.length, 2);
  for (const p of bad.problems) assert.equal(p.includes('tiny-secret') || p.includes('ccc'), false, p);
  assert.throws(
    () => loadConfig({ SANDBOX_API_TOKEN: 'tiny-secret' }),
    (e: ConfigError) => e.problems.some((p) => /token 1 is shorter/.test(p)) && !e.message.includes('tiny-secret'),
  );
});

test('bearerCheck: null when open; accepts each token, case-insensitive scheme; refuses everything else', () => {
  assert.equal(bearerCheck([]), null);
  const check = bearerCheck([A, B])!;
  assert.equal(check(`Bearer ${A}`), true);
  assert.equal(check(`bearer ${B}`), true);
  assert.equal(check(`Bearer   ${A}  `), true);
  for (const h of [undefined, '', 'Bearer', 'Bearer ', A, `Basic ${A}`, `Bearer ${A}x`, `Bearer ${A.slice(1)}`, `Bearer ${A} ${B}`, `Bearer\n${A}`])
    assert.equal(check(h), false, String(h));
});

test('allowedHosts: auto follows the listen address (localhost and IP literals on loopback); * is any; a list is exact', () => {
  const auto = allowedHosts('auto', '127.0.0.2')!;
  for (const ok of ['localhost', '127.0.0.1', '127.0.0.2', '::1', '10.0.0.1']) assert.equal(auto.allows(ok), true, ok);
  for (const bad of ['evil.example', '127.0.0.1.evil.example', 'localhost.evil.example', 'localhos', '']) assert.equal(auto.allows(bad), false, bad);
  assert.equal(auto.allows(auto.example), true);
  assert.ok(allowedHosts('auto', '::1'));
  assert.equal(allowedHosts('auto', '0.0.0.0'), null);
  assert.equal(allowedHosts('auto', '10.1.2.3'), null);
  assert.equal(allowedHosts('*', '127.0.0.1'), null);
  const listed = allowedHosts(' A.example , [::1] ', '0.0.0.0')!;
  assert.equal(listed.allows('a.example'), true);
  assert.equal(listed.allows('::1'), true);
  assert.equal(listed.allows('localhost'), false);
  assert.equal(listed.allows('127.0.0.1'), false);
  assert.equal(listed.example, 'a.example');
  assert.equal(allowedHosts('[::1]', '0.0.0.0')!.example, '[::1]');
  assert.equal(isLoopbackAddress('127.8.9.10'), true);
  assert.equal(isLoopbackAddress('128.0.0.1'), false);
});

test('hostName: strips the port and IPv6 brackets', () => {
  assert.equal(hostName('Example.COM:8080'), 'example.com');
  assert.equal(hostName('[::1]:80'), '::1');
  assert.equal(hostName('[::1]'), '::1');
  assert.equal(hostName('localhost'), 'localhost');
  assert.equal(hostName(undefined), '');
  assert.equal(hostName('::1'), '::1');
});
