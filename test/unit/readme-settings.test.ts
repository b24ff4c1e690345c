import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describeSettings } from '../../src/config.js';

/** README.md is read from the repository root (this file runs from dist/test/unit). */
const README = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');

test("the README's settings table names every setting of the config schema, with its default, and nothing else", () => {
  const section = README.slice(README.indexOf('## Settings'), README.indexOf('\n## ', README.indexOf('## Settings') + 5));
  const rows = new Map<string, string>();
  for (const m of section.matchAll(/^\| `([A-Z0-9_]+)` \| `([^`]*)` \|/gm)) rows.set(m[1]!, m[2]!);
  const schema = new Map(describeSettings().map((s) => [s.env, String(s.default)]));
  assert.deepEqual([...rows.keys()].sort(), [...schema.keys()].sort(), 'the same settings');
  for (const [env, def] of schema) assert.equal(rows.get(env), def, `default of ${env}`);
});
