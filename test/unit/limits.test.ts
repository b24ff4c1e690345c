import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../../src/config.js';
import { LIMIT_KINDS, describeLimit, detectLimit } from '../../src/limits.js';

test('every limit kind has a plain-English line naming its value and setting', () => {
  const c = loadConfig({});
  assert.deepEqual([...LIMIT_KINDS].sort(), ['cpu', 'disk', 'file_size', 'memory', 'output_bytes', 'processes', 'wall_clock']);
  for (const kind of LIMIT_KINDS) {
    const text = describeLimit(kind, c);
    assert.match(text, /^a limit was reached: /, kind);
    if (kind !== 'wall_clock') assert.match(text, /SANDBOX_[A-Z_]+\)$/, kind);
  }
});

test('detectLimit reads the limit from an exit status or the error text', () => {
  assert.equal(detectLimit(128 + 25, ''), 'file_size');
  assert.equal(detectLimit(128 + 24, ''), 'cpu');
  assert.equal(detectLimit(1, 'OSError: [Errno 28] No space left on device'), 'disk');
  assert.equal(detectLimit(1, 'bash: fork: retry: Resource temporarily unavailable'), 'processes');
  assert.equal(detectLimit(1, 'MemoryError'), 'memory');
  assert.equal(detectLimit(1, 'ValueError: nope'), null);
});
