/**
 * GET /docs in a real headless browser (Debian's chromium, driven by playwright-core): the
 * page loads from the server alone (no request leaves it: no CDN), lists every path of the
 * OpenAPI document, and an endpoint expands to show its parameters. The page sits behind
 * the bearer token like the rest of the API.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { startServer, type TestServer } from '../helpers/server.js';

const TOKEN = 'docs-token-0123456789abcdef';
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
let server: TestServer;
let browser: Browser;

before(async () => {
  assert.ok(CHROMIUM, 'chromium is installed (scripts/install.sh installs it for the tests)');
  server = await startServer({ SANDBOX_API_TOKEN: TOKEN, SANDBOX_WARMUP: '0' });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('/docs needs the token', async () => {
  assert.equal((await fetch(`${server.url}/docs`)).status, 401);
  assert.equal((await fetch(`${server.url}/docs/json`)).status, 401);
});

test('the docs page lists every documented path, expands an endpoint, and loads nothing from elsewhere', async () => {
  const spec = (await (await fetch(`${server.url}/docs/json`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { paths: Record<string, Record<string, unknown>> };
  const documented = Object.entries(spec.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`));
  assert.ok(documented.includes('POST /sessions/{id}/exec'), documented.join(', '));

  const context = await browser.newContext({ extraHTTPHeaders: { authorization: `Bearer ${TOKEN}` } });
  try {
    const page = await context.newPage();
    const elsewhere: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(server.url) && !r.url().startsWith('data:')) elsewhere.push(r.url());
    });
    const res = await page.goto(`${server.url}/docs`);
    assert.equal(res?.status(), 200);
    await page.waitForSelector('.opblock-summary', { timeout: 60_000 });
    const shown = await page.$$eval('.opblock', (blocks) =>
      blocks.map((b) => {
        const method = b.querySelector('.opblock-summary-method')?.textContent?.trim() ?? '';
        const path = b.querySelector('.opblock-summary-path')?.getAttribute('data-path') ?? '';
        return `${method} ${path}`;
      }),
    );
    assert.deepEqual([...shown].sort(), [...documented].sort());

    // Expand POST /sessions/{id}/exec: its parameters and request body appear.
    const exec = page.locator('.opblock-post', { has: page.locator('[data-path="/sessions/{id}/exec"]') });
    await exec.locator('.opblock-summary').first().click();
    await exec.locator('.opblock-body').waitFor({ state: 'visible', timeout: 30_000 });
    const body = await exec.locator('.opblock-body').innerText();
    assert.match(body, /Parameters/);
    assert.match(body, /\bid\b/);
    assert.deepEqual(elsewhere, [], 'every request stayed on the server');
  } finally {
    await context.close();
  }
});
