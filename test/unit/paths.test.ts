import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveInside } from '../../src/files/paths.js';

const code = (f: () => unknown) => {
  try {
    f();
    return 'ok';
  } catch (e) {
    return (e as { code: string }).code;
  }
};

test('relative and /workspace paths resolve to the same segments', () => {
  assert.deepEqual(resolveInside('a/b.txt'), { segments: ['a', 'b.txt'], rel: 'a/b.txt' });
  assert.deepEqual(resolveInside('/workspace/a/b.txt'), { segments: ['a', 'b.txt'], rel: 'a/b.txt' });
  assert.deepEqual(resolveInside('./a//b/./c/../d'), { segments: ['a', 'b', 'd'], rel: 'a/b/d' });
});

test('the root is reachable as ., empty, /workspace and /workspace/', () => {
  for (const p of ['.', '', '/workspace', '/workspace/', 'a/..']) assert.equal(resolveInside(p).rel, '.', p);
});

test('escapes are refused with the outside-workspace code', () => {
  for (const p of ['..', '../x', 'a/../../b', '/etc/passwd', '/workspacex/a', '/workspace/../etc', '../../etc/passwd']) {
    assert.equal(
      code(() => resolveInside(p)),
      'SBX_PATH_OUTSIDE_WORKSPACE',
      p,
    );
  }
});

test('sibling-prefix paths are outside', () => {
  assert.equal(
    code(() => resolveInside('/workspace2/x')),
    'SBX_PATH_OUTSIDE_WORKSPACE',
  );
});

test('NUL bytes, overlong paths and segments are bad requests', () => {
  assert.equal(
    code(() => resolveInside('a\0b')),
    'SBX_BAD_REQUEST',
  );
  assert.equal(
    code(() => resolveInside('a/'.repeat(3000))),
    'SBX_BAD_REQUEST',
  );
  assert.equal(
    code(() => resolveInside('x'.repeat(300))),
    'SBX_BAD_REQUEST',
  );
});

test('percent-encoded dots are names, not traversal', () => {
  assert.deepEqual(resolveInside('%2e%2e/x').segments, ['%2e%2e', 'x']);
});
