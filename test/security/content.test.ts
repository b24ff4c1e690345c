/**
 * Hostile input 50 of docs/threat-model.md (cross-session and API): files written by sandboxed code are
 * attacker-controlled content. A download must never render in the API's origin: every
 * download is an attachment, with nosniff and a sandboxing CSP, and neither the file's
 * name nor a request path can inject headers or reflect markup.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { attacker, download, finishCase, listFiles, py, rawRequest, startSuite, stopSuite, type Suite } from './support.js';

let S: Suite;

before(async () => {
  S = await startSuite();
});

after(async () => {
  await stopSuite(S);
});

function assertInert(headers: Headers | Record<string, string | string[] | undefined>, what: string): void {
  const get = (k: string) => (headers instanceof Headers ? headers.get(k) : (headers[k] as string | undefined)) ?? '';
  assert.match(get('content-disposition'), /^attachment(;|$)/, `${what}: Content-Disposition`);
  assert.equal(get('x-content-type-options'), 'nosniff', `${what}: nosniff`);
  assert.match(get('content-security-policy'), /(^|;\s*)sandbox(\s|;|$)/, `${what}: CSP sandbox`);
}

test('#50 HTML, SVG, XHTML, JS and extension-less markup written by the sandbox download as inert attachments', async (t) => {
  const a = await attacker(S, t);
  const html = '<!doctype html><script>fetch("/sessions").then(r=>r.text()).then(alert)</script>';
  const svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>';
  const files: Record<string, string> = {
    'x.html': html,
    'x.htm': html,
    'x.xhtml': `<html xmlns="http://www.w3.org/1999/xhtml">${html}</html>`,
    'x.svg': svg,
    'x.xml': `<?xml version="1.0"?><?xml-stylesheet type="text/xsl" href="#"?>${svg}`,
    'x.js': 'alert(1)',
    'x.css': 'body{background:url(javascript:alert(1))}',
    noext: html,
    'x.txt': html,
    'x.png': html,
    'x.pdf': html,
    'x.json': '{"a":"</script><script>alert(1)</script>"}',
  };
  const w = await py(
    S.server,
    a.id,
    `import json\nfor name, body in json.loads(${JSON.stringify(JSON.stringify(files))}).items():\n    open('/workspace/' + name, 'w').write(body)\nprint('ok')`,
  );
  assert.equal(w.stdout, 'ok', w.stderr);
  for (const [name, body] of Object.entries(files)) {
    const d = await download(S.server, a.id, name);
    assert.equal(d.status, 200, name);
    assert.equal(d.body.toString(), body, `${name}: bytes are served unchanged`);
    assertInert(d.headers, name);
    assert.ok(d.headers.get('content-disposition')!.includes(`filename="${name}"`), `${name}: ${d.headers.get('content-disposition')}`);
  }
  await finishCase(S, a);
});

test('#50 hostile file names cannot inject headers; error pages are JSON, never reflected markup', async (t) => {
  const a = await attacker(S, t);
  const names = [
    'evil"\r\nSet-Cookie: a=b.html',
    'x\nLocation: evil.example\n\n<script>alert(1)<script>.html',
    'ü"; filename="other.exe.html',
    '<img src=x onerror=alert(1)>.svg',
    'a\\"b;c.html',
  ];
  const w = await py(
    S.server,
    a.id,
    `import json\nfor n in json.loads(${JSON.stringify(JSON.stringify(names))}):\n    open('/workspace/' + n, 'w').write('<script>alert(1)</script>')\nprint(len(__import__('os').listdir('/workspace')))`,
  );
  assert.equal(w.stdout, String(names.length), w.stderr);
  const listed = await listFiles(S.server, a.id);
  assert.equal(listed.status, 200);
  assert.equal(listed.body.files.length, names.length);
  for (const n of names) {
    const r = await rawRequest(S.server, { path: `/sessions/${a.id}/files?path=${encodeURIComponent(n)}` });
    assert.equal(r.status, 200, `${JSON.stringify(n)}: ${r.status} ${r.body.toString().slice(0, 200)}`);
    assert.equal(r.headers['set-cookie'], undefined, `${JSON.stringify(n)}: header injection`);
    assert.equal(r.headers.location, undefined, `${JSON.stringify(n)}: header injection`);
    assert.ok(!/[\r\n]/.test(String(r.headers['content-disposition'])), 'Content-Disposition is one line');
    assert.match(
      String(r.headers['content-disposition']),
      /^attachment; filename="[^"\\]*"; filename\*=UTF-8''[A-Za-z0-9%!'()*._~-]+$/,
      `${JSON.stringify(n)}: ${r.headers['content-disposition']}`,
    );
    assertInert(r.headers as Record<string, string>, JSON.stringify(n));
  }
  for (const path of [`/sessions/%3Cscript%3Ealert(1)%3C%2Fscript%3E`, `/sessions/${a.id}/files?path=%3Cscript%3Ealert(1)%3C%2Fscript%3E.html`, `/%3Csvg%20onload%3Dalert(1)%3E`]) {
    const r = await rawRequest(S.server, { path, headers: { accept: 'text/html' } });
    assert.ok(r.status >= 400 && r.status < 500, `${path}: ${r.status}`);
    assert.match(String(r.headers['content-type']), /^application\/json/, `${path}: error pages are JSON`);
  }
  await finishCase(S, a);
});
