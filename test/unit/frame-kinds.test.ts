import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { FrameKind } from '../../src/runner/frame-codec.js';

/** driver.py is read from the repository (this file runs from dist/test/unit): its source,
 * not a Python process, so the check needs no interpreter. */
const DRIVER = readFileSync(new URL('../../../sandbox-python/driver.py', import.meta.url), 'utf8');

/** The driver's FrameKind class: `NAME = ord("C")` per kind, NAME in UPPER_SNAKE. */
function driverTable(source: string): Map<string, string> {
  const start = source.search(/^class FrameKind\(IntEnum\):$/m);
  assert.ok(start >= 0, 'driver.py defines class FrameKind(IntEnum)');
  // The class body: up to the next line that is not indented (and not blank).
  const rest = source.slice(start).split('\n').slice(1);
  const end = rest.findIndex((line) => line !== '' && !line.startsWith(' '));
  const body = rest.slice(0, end < 0 ? undefined : end);
  const table = new Map<string, string>();
  for (const line of body) {
    const m = /^ {4}([A-Z][A-Z0-9_]*) = ord\("(.)"\)/.exec(line);
    if (!m) continue;
    assert.ok(!table.has(m[1]!), `${m[1]} is defined once`);
    table.set(m[1]!, m[2]!);
  }
  return table;
}

/** ToolReply -> TOOL_REPLY */
const upperSnake = (name: string) => name.replace(/(?<=[a-z0-9])([A-Z])/g, '_$1').toUpperCase();

test("the server's and the driver's frame-kind tables name the same kinds with the same bytes", () => {
  const driver = driverTable(DRIVER);
  const server = new Map(Object.entries(FrameKind).map(([name, kind]) => [upperSnake(name), kind]));
  assert.ok(driver.size >= 8, `found the driver's kinds (${[...driver.keys()].join(', ')})`);
  assert.deepEqual(Object.fromEntries([...driver].sort()), Object.fromEntries([...server].sort()));
});

test('every frame kind is one distinct ASCII byte', () => {
  const kinds = Object.values(FrameKind);
  assert.equal(new Set(kinds).size, kinds.length, 'no two names share a byte');
  for (const k of kinds) assert.match(k, /^[A-Z]$/);
});

test('the driver writes no frame kind as a bare literal outside its table', () => {
  // Every ord("C") of driver.py is a line of the table: a kind used anywhere else by its
  // letter would escape the check above.
  const uses = [...DRIVER.matchAll(/ord\(\s*["'](.)["']\s*\)/g)].length;
  assert.equal(uses, driverTable(DRIVER).size);
});
