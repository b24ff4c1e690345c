/**
 * Issue 8, artifacts (src/files/artifacts.ts): the files a call created or modified are
 * listed in its answer and kept for download; nothing a session's own files do makes that
 * listing stall or bloat the server (third red team).
 *   A1  200 files rewritten per call whose paths are ~4 KB of control bytes: each escapes to
 *       six JSON characters and each path appears twice, so an answer of a call that prints
 *       nothing was 9.6 MB (serialised in one go: the loop held > 1 s with a few sessions);
 *       now the names of one answer take at most 64 Ki JSON characters, plain, streamed and
 *       in the anthropic format, and stderr says what was left out,
 *   A2  a workspace of 3,000 empty folders made every trivial call cost the server a full
 *       scan (~35 us a folder, ~300x a `pass`); now folders count as 4 names against
 *       SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES (2,000 by default), past which the scan stops and
 *       says so; within the bound a new file is still listed,
 *   A3  the kept index held each path twice for up to 1,000 artifacts (~7 MiB a session with
 *       long paths); now it holds each path once and at most 128 Ki characters of them per
 *       session, the oldest evicted first (their ids answer 404).
 * No case asserts a duration: outcomes are sizes, notes and status codes; each ends with
 * finishCase (the victim runs, the event loop was never held, nothing is left).
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { notHung } from '../helpers/server.js';
import { SseClient } from '../helpers/sse.js';
import { api, attacker, finishCase, py, startSuite, stopSuite, type Suite } from './support.js';

let S: Suite;

before(async () => {
  S = await startSuite();
});

after(async () => {
  await stopSuite(S);
});

interface Entry {
  type: string;
  file_id: string;
  filename: string;
  path: string;
  size_bytes: number;
}

const ANSWER_NAME_CHARS = 64 * 1024;
/** What an answer carries besides its names: streams of a few lines, ids, sizes, the note. */
const ANSWER_SLACK = 32 * 1024;

const entriesOf = (body: unknown) => (body as { result_block: { content: { content: Entry[] } } }).result_block.content.content;

async function downloadStatus(id: string, fileId: string): Promise<number> {
  const res = await fetch(`${S.server.url}/sessions/${id}/artifacts/${encodeURIComponent(fileId)}`);
  await res.arrayBuffer();
  return res.status;
}

test('#A1 200 files per call with 4 KB paths of control bytes: the answer carries at most 64 Ki characters of names, plain, streamed and anthropic; stderr says so', async (t) => {
  const a = await attacker(S, t);
  const setup = await py(
    S.server,
    a.id,
    `import os
seg = '\\x01' * 250
d = '/workspace/' + '/'.join([seg] * 15)
os.makedirs(d, exist_ok=True)
FILES = [d + '/' + ('\\x01' * 240) + '%03d' % i for i in range(200)]`,
  );
  assert.equal(setup.return_code, 0, setup.stderr);
  const touch = "for f in FILES: open(f, 'w').write('x')";
  const plain = await api(S.server, 'POST', `/sessions/${a.id}/exec`, { tool: 'code_execution', input: { code: touch } });
  assert.equal(plain.status, 200);
  assert.ok(plain.text.length <= ANSWER_NAME_CHARS + ANSWER_SLACK, `an answer of ${plain.text.length} characters`);
  const listed = entriesOf(plain.body);
  assert.ok(listed.length >= 1 && listed.length < 200, `${listed.length} listed`);
  let names = 0;
  for (const e of listed) {
    assert.equal(e.filename.length, 15 * 251 + 243, 'names arrive whole');
    assert.equal(e.path, `/workspace/${e.filename}`);
    names += JSON.stringify(e.filename).length + JSON.stringify(e.path).length;
    assert.equal(await downloadStatus(a.id, e.file_id), 200);
  }
  assert.ok(names <= ANSWER_NAME_CHARS, `${names} characters of names`);
  const stderr = (plain.body as { result_block: { content: { stderr: string } } }).result_block.content.stderr;
  assert.match(
    stderr,
    new RegExp(`artifacts: 200 files changed; the first ${listed.length} are listed: their names fill the ${ANSWER_NAME_CHARS} characters an answer gives to file names`),
  );

  const streamed = await SseClient.exec(S.server, a.id, 'code_execution', { code: touch });
  await notHung(streamed.ended, 'streamed call');
  const result = streamed.events.find((e) => e.event === 'result');
  assert.ok(result, `a result event (events: ${streamed.events.map((e) => e.event).join(',')})`);
  assert.ok(result.data.length <= ANSWER_NAME_CHARS + ANSWER_SLACK, `a result event of ${result.data.length} characters`);
  assert.equal(entriesOf(JSON.parse(result.data)).length, listed.length);

  const native = await api(S.server, 'POST', `/sessions/${a.id}/exec`, { tool: 'code_execution', input: { code: touch }, result_format: 'anthropic' });
  assert.equal(native.status, 200);
  assert.ok(native.text.length <= ANSWER_NAME_CHARS + ANSWER_SLACK, `an anthropic answer of ${native.text.length} characters`);
  assert.equal(entriesOf(native.body).length, listed.length);
  await finishCase(S, a);
});

test('#A2 a workspace of 3,000 folders: folders count as 4 names, the scan of a trivial call stops at the bound and says so; within it a new file is listed', async (t) => {
  const a = await attacker(S, t);
  const fill = await py(S.server, a.id, "import os\nfor i in range(3000): os.mkdir('/workspace/d%04d' % i)");
  assert.equal(fill.return_code, 0, fill.stderr);
  const pass = await py(S.server, a.id, 'pass');
  assert.equal(pass.return_code, 0);
  assert.match(
    pass.stderr,
    /artifacts: the workspace has more than 2000 names \(a folder counts as 4\); files past them were not looked at \(SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES\)/,
  );
  // 400 folders (1,600) and a file: within the bound, the whole workspace is looked at.
  const trim = await py(S.server, a.id, "import os\nfor i in range(400, 3000): os.rmdir('/workspace/d%04d' % i)");
  assert.equal(trim.return_code, 0, trim.stderr);
  const made = await py(S.server, a.id, "open('/workspace/d0399/new.txt', 'w').write('new')");
  assert.doesNotMatch(made.stderr, /artifacts:/);
  assert.deepEqual(
    entriesOf(made.body).map((e) => e.filename),
    ['d0399/new.txt'],
  );
  await finishCase(S, a);
});

test('#A3 kept artifacts of long paths: a session keeps at most 128 Ki characters of names, the oldest evicted first; a call never evicts its own', async (t) => {
  const a = await attacker(S, t);
  const setup = await py(S.server, a.id, "import os\nd = '/workspace/' + '/'.join(['n' * 250] * 14)\nos.makedirs(d, exist_ok=True)\nCALL = [0]");
  assert.equal(setup.return_code, 0, setup.stderr);
  // Each call makes 8 new files of ~3,760-character paths (8 fit an answer's names).
  const step = "CALL[0] += 1\nfor i in range(8): open(d + '/' + 'f' * 240 + '%02d%02d' % (CALL[0], i), 'w').write('x')";
  const calls: string[][] = [];
  for (let c = 0; c < 6; c++) {
    const r = await py(S.server, a.id, step);
    assert.equal(r.return_code, 0, r.stderr);
    const ids = entriesOf(r.body).map((e) => e.file_id);
    assert.equal(ids.length, 8, `call ${c}: ${r.stderr}`);
    for (const id of ids) assert.equal(await downloadStatus(a.id, id), 200, 'a call keeps its own');
    calls.push(ids);
  }
  // 48 entries of ~3,760 characters: about 34 fit 128 Ki, far below SANDBOX_ARTIFACTS_KEEP_MAX.
  for (const id of calls[0]!) assert.equal(await downloadStatus(a.id, id), 404, 'the oldest were evicted');
  for (const id of calls[5]!) assert.equal(await downloadStatus(a.id, id), 200, 'the newest are kept');
  await finishCase(S, a);
});
