/**
 * Streaming over SSE (README "Streaming"), over real HTTP with real Python and bash in the
 * real sandbox. Timing is proven with events, never clocks: a program prints, then waits
 * for a marker file that the test creates only after it has received the print's event,
 * so that event reached the client while the call was still running.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, createSession, api, exec, upload, notHung, type TestServer } from '../helpers/server.js';
import { SseClient } from '../helpers/sse.js';
import { existsSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';

/** Prints `first`, waits for /workspace/<marker> (a minute at most), prints `second`. */
const waitingPython = (marker: string, before = "print('first')", afterwards = "print('second')") =>
  `import os, time\n${before}\nfor _ in range(6000):\n    if os.path.exists('/workspace/${marker}'):\n        break\n    time.sleep(0.01)\nelse:\n    print('no marker')\n${afterwards}`;
const LONG = { timeout_seconds: 120 };

const isText = (kind: string, text: string) => (e: { event: string; data: string }) => e.event === kind && (JSON.parse(e.data) as { text: string }).text.includes(text);

/** The answer without the field that differs from one run to the next. */
function stable(a: any): any {
  const { execution_time_ms, ...rest } = a;
  assert.equal(typeof execution_time_ms, 'number');
  return rest;
}

describe('streaming', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ SANDBOX_STREAM_HEARTBEAT_SECONDS: '1', SANDBOX_STREAM_RESUME_SECONDS: '600' });
  });
  after(() => server.stop());

  test("python: a print's event reaches the client while the call still runs; ids increase; then the result", async () => {
    const id = await createSession(server);
    const s = await SseClient.exec(server, id, 'code_execution', { code: waitingPython('go1') }, LONG);
    assert.equal(s.status, 200);
    assert.match(String(s.res.headers['content-type']), /^text\/event-stream/);
    await s.waitFor(isText('stdout', 'first'), 'the first print');
    // The call cannot end before the marker exists: no result yet.
    assert.equal(s.result(), undefined);
    assert.equal(s.events[0]!.event, 'stream');
    assert.equal(s.res.headers['x-stream-id'], s.streamInfo().stream_id);
    assert.equal(s.streamInfo().resume_url, `/sessions/${id}/exec/streams/${s.streamInfo().stream_id}`);
    assert.equal((await upload(server, id, 'x', { path: 'go1' })).status, 201);
    assert.deepEqual(await s.done(), { clean: true });
    const result = s.result();
    assert.equal(result.result_block.content.stdout, 'first\nsecond');
    assert.equal(result.result_block.content.return_code, 0);
    assert.equal(s.text('stdout'), 'first\nsecond\n', 'streamed text is as written');
    assert.equal(s.events.at(-1)!.event, 'result');
    assert.deepEqual(
      s.events.map((e) => e.id),
      s.events.map((_, i) => i + 1),
      'ids 1, 2, 3, ...',
    );
  });

  test('bash: stdout and stderr events as the command writes them', async () => {
    const id = await createSession(server);
    const s = await SseClient.exec(
      server,
      id,
      'bash_code_execution',
      { command: 'echo first; echo oops >&2; for i in $(seq 6000); do [ -e go2 ] && break; sleep 0.01; done; echo second' },
      LONG,
    );
    await s.waitFor(isText('stdout', 'first'), 'the first echo');
    await s.waitFor(isText('stderr', 'oops'), 'the stderr echo');
    assert.equal(s.result(), undefined);
    await upload(server, id, 'x', { path: 'go2' });
    assert.deepEqual(await s.done(), { clean: true });
    assert.equal(s.result().result_block.content.stdout, 'first\nsecond\n');
    assert.equal(s.result().result_block.content.stderr, 'oops\n');
    assert.equal(s.text('stdout'), 'first\nsecond\n');
    assert.equal(s.text('stderr'), 'oops\n');
  });

  test('the result event is exactly the JSON answer of the same call without streaming, for all three tools', async () => {
    const id = await createSession(server);
    await exec(server, id, 'text_editor_code_execution', { command: 'create', path: 'notes.md', file_text: 'a\nb\n' });
    const calls: [string, Record<string, unknown>][] = [
      ['code_execution', { code: "import sys\nprint(21 * 2)\nprint('warn', file=sys.stderr)\nsys.exit(3)" }],
      ['bash_code_execution', { command: 'echo hi; echo err >&2; exit 4' }],
      ['text_editor_code_execution', { command: 'view', path: 'notes.md' }],
      ['text_editor_code_execution', { command: 'view', path: 'missing.md' }],
    ];
    for (const [i, [tool, input]] of calls.entries()) {
      const plain = await api(server, 'POST', `/sessions/${id}/exec`, { tool, input, tool_use_id: `srvtoolu_same${i}` });
      assert.equal(plain.status, 200);
      const s = await SseClient.exec(server, id, tool, input, { tool_use_id: `srvtoolu_same${i}` });
      assert.deepEqual(await s.done(), { clean: true });
      assert.deepEqual(stable(s.result()), stable(plain.body), `${tool} ${JSON.stringify(input)}`);
      if (tool === 'text_editor_code_execution') {
        assert.deepEqual(
          s.events.map((e) => e.event),
          ['stream', 'result'],
          'the editor gets the result event only',
        );
      }
    }
    // Without the header (or with another Accept), the endpoint answers JSON as in v1.
    const r = await fetch(`${server.url}/sessions/${id}/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ tool: 'code_execution', input: { code: 'print(1)' } }),
    });
    assert.match(String(r.headers.get('content-type')), /^application\/json/);
    assert.equal(((await r.json()) as any).result_block.content.stdout, '1');
  });

  test('a client that disconnects and resumes with Last-Event-ID gets the events it missed and the rest; the call ran on', async () => {
    const id = await createSession(server);
    const s = await SseClient.exec(server, id, 'code_execution', { code: waitingPython('go3', "x = 41\nprint('first')", "x += 1\nprint('second', x)") }, LONG);
    const first = await s.waitFor(isText('stdout', 'first'), 'the first print');
    const { resume_url } = s.streamInfo();
    s.cut();
    await s.done();
    // Resumed while the call still runs: nothing new yet, then the rest live.
    const r1 = await SseClient.open(`${server.url}${resume_url}`, { headers: { 'last-event-id': String(first.id) } });
    assert.equal(r1.status, 200);
    await r1.waitForComment(1, 'a heartbeat on the resumed stream');
    assert.equal(r1.events.length, 0, 'nothing after the last event seen yet');
    r1.cut();
    await r1.done();
    // The call goes on with no client at all, and ends.
    await upload(server, id, 'x', { path: 'go3' });
    // (a call queued behind it starts once it has ended)
    const after = await exec(server, id, 'code_execution', { code: 'print(x)' });
    assert.equal(after.stdout, '42', 'the streamed call ran to its end, its state kept');
    const r2 = await SseClient.open(`${server.url}${resume_url}`, { headers: { 'last-event-id': String(first.id) } });
    assert.deepEqual(await r2.done(), { clean: true });
    assert.deepEqual(
      r2.events.map((e) => e.event),
      ['stdout', 'result'],
    );
    assert.equal(r2.events[0]!.id, first.id! + 1);
    assert.equal(r2.text('stdout'), 'second 42\n');
    const result = r2.result();
    assert.equal(result.result_block.content.stdout, 'first\nsecond 42');
    assert.equal(result.result_block.content.return_code, 0);
    assert.doesNotMatch(result.result_block.content.stderr, /disconnected/);
    // Delivered: the stream is forgotten.
    const gone = await api(server, 'GET', resume_url);
    assert.equal(gone.status, 404);
    assert.equal(gone.body.code, 'SBX_STREAM_NOT_FOUND');
  });

  test('a resume from the start (no Last-Event-ID, or the query parameter) replays every kept event', async () => {
    const id = await createSession(server);
    const s = await SseClient.exec(server, id, 'bash_code_execution', { command: 'echo a; for i in $(seq 6000); do [ -e go4 ] && break; sleep 0.01; done; echo b' }, LONG);
    await s.waitFor(isText('stdout', 'a'), 'the first echo');
    const { resume_url } = s.streamInfo();
    s.cut();
    const r = await SseClient.open(`${server.url}${resume_url}?last_event_id=0`);
    await r.waitFor(isText('stdout', 'a'), 'the replayed echo');
    assert.equal(r.events[0]!.event, 'stream');
    // A second client takes over: the first one's response ends.
    const r2 = await SseClient.open(`${server.url}${resume_url}`);
    assert.deepEqual(await r.done(), { clean: true });
    await upload(server, id, 'x', { path: 'go4' });
    await r2.done();
    assert.deepEqual(
      r2.events.map((e) => e.event),
      ['stream', 'stdout', 'stdout', 'result'],
    );
    assert.equal(r2.result().result_block.content.stdout, 'a\nb\n');
  });

  test('bad Last-Event-ID, unknown streams and streams of another session get clear 4xx', async () => {
    const id = await createSession(server);
    const other = await createSession(server);
    const s = await SseClient.exec(server, id, 'bash_code_execution', { command: 'echo a; for i in $(seq 6000); do [ -e go5 ] && break; sleep 0.01; done' }, LONG);
    await s.waitFor(isText('stdout', 'a'), 'the first echo');
    const { stream_id, resume_url } = s.streamInfo();
    const get = (path: string, lastEventId?: string) =>
      fetch(`${server.url}${path}`, { headers: lastEventId === undefined ? {} : { 'last-event-id': lastEventId } }).then(async (r) => ({
        status: r.status,
        body: (await r.json()) as { detail: string; code: string },
      }));
    for (const bad of ['abc', '-1', '1.5', '1e3', '9'.repeat(20)]) {
      const r = await get(resume_url, bad);
      assert.equal(r.status, 400, bad);
      assert.equal(r.body.code, 'SBX_BAD_REQUEST');
      assert.match(r.body.detail, /Last-Event-ID/);
    }
    const ahead = await get(resume_url, '99');
    assert.equal(ahead.status, 400);
    assert.match(ahead.body.detail, /past the last event/);
    const unknown = await get(`/sessions/${id}/exec/streams/str_000000000000000000000000`, '1');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.code, 'SBX_STREAM_NOT_FOUND');
    const elsewhere = await get(`/sessions/${other}/exec/streams/${stream_id}`, '1');
    assert.equal(elsewhere.status, 404);
    assert.equal(elsewhere.body.code, 'SBX_STREAM_NOT_FOUND');
    const noSession = await get(`/sessions/sbx_nope/exec/streams/${stream_id}`, '1');
    assert.equal(noSession.status, 404);
    // Calls that cannot start are answered as without streaming, in JSON.
    const badTool = await SseClient.exec(server, id, 'nope', { code: 'x' });
    assert.equal(badTool.status, 400);
    await badTool.done();
    assert.equal(badTool.json().code, 'SBX_UNKNOWN_TOOL');
    const badSession = await SseClient.exec(server, 'sbx_nope', 'code_execution', { code: 'x' });
    assert.equal(badSession.status, 404);
    await badSession.done();
    const badInput = await SseClient.exec(server, id, 'code_execution', {});
    assert.equal(badInput.status, 422);
    await badInput.done();
    await upload(server, id, 'x', { path: 'go5' });
    assert.deepEqual(await s.done(), { clean: true });
    assert.equal(s.result().result_block.content.stdout, 'a\n');
  });

  test('heartbeat comments keep an idle stream alive', async () => {
    const id = await createSession(server);
    const s = await SseClient.exec(server, id, 'code_execution', { code: waitingPython('go6') }, LONG);
    await s.waitFor(isText('stdout', 'first'), 'the first print');
    const seen = s.comments.length;
    await s.waitForComment(seen + 2, 'two heartbeats while the program waits');
    assert.ok(s.comments.slice(seen).every((c) => c === 'ping'));
    assert.equal(s.result(), undefined);
    await upload(server, id, 'x', { path: 'go6' });
    assert.deepEqual(await s.done(), { clean: true });
    assert.equal(s.result().result_block.content.stdout, 'first\nsecond');
  });

  test('a session deleted while its call streams ends the stream with an error event', async () => {
    const id = await createSession(server);
    const s = await SseClient.exec(server, id, 'code_execution', { code: waitingPython('never') }, LONG);
    await s.waitFor(isText('stdout', 'first'), 'the first print');
    assert.equal((await api(server, 'DELETE', `/sessions/${id}`)).status, 204);
    const err = await s.waitFor((e) => e.event === 'error', 'the error event');
    assert.equal(JSON.parse(err.data).code, 'SBX_SESSION_NOT_FOUND');
    assert.deepEqual(await s.done(), { clean: true });
    assert.equal(s.result(), undefined);
  });
});

describe('streaming bounds', () => {
  let server: TestServer;
  const CAP = 128 * 1024;
  before(async () => {
    server = await startServer({
      SANDBOX_RUNNER_MAX_OUTPUT_BYTES: String(CAP),
      SANDBOX_STREAM_REPLAY_BYTES: String(64 * 1024),
      SANDBOX_STREAM_MAX: '2',
    });
  });
  after(() => server.stop());

  test('output caps apply to the stream as to the result (python and bash)', async () => {
    const id = await createSession(server);
    for (const [tool, input] of [
      ['code_execution', { code: "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 5000 + '\\n')\nprint('tail')" }],
      ['bash_code_execution', { command: "for i in $(seq 100); do head -c 5000 /dev/zero | tr '\\0' y; echo; done; echo tail" }],
    ] as const) {
      const s = await SseClient.exec(server, id, tool, input);
      assert.deepEqual(await s.done(), { clean: true });
      const streamed = s.text('stdout');
      const result = s.result();
      assert.ok(Buffer.byteLength(streamed) <= CAP, `${tool}: streamed ${Buffer.byteLength(streamed)} bytes, cap ${CAP}`);
      assert.ok(Buffer.byteLength(streamed) > CAP / 2, `${tool}: the stream carried the kept output`);
      assert.doesNotMatch(streamed, /tail/, 'what the cap dropped is not streamed');
      assert.equal(result.limit_exceeded, 'output_bytes');
      assert.ok(result.stdout_dropped_bytes > 0);
      assert.match(result.result_block.content.stdout, /output truncated by sandbox: \d+ bytes elided/);
      // The result keeps the head and the tail; the stream carried the output up to the cap,
      // which begins with that head (the tail came after the cap: not streamed).
      const [head] = String(result.result_block.content.stdout).split('\n... [output truncated by sandbox');
      assert.ok(head!.length > 0 && streamed.startsWith(head!), `${tool}: the stream begins with the result's head`);
      assert.match(result.result_block.content.stdout, /tail\n?$/, `${tool}: the result keeps the tail`);
    }
  });

  test('a resume from before what the replay buffer keeps is answered 410, naming where to resume', async () => {
    const id = await createSession(server);
    const code = waitingPython('go7', "for i in range(25):\n    print(str(i % 10) * 4000, flush=True)\nprint('flooded')", "print('end')");
    const s = await SseClient.exec(server, id, 'code_execution', { code }, LONG);
    await s.waitFor(isText('stdout', 'flooded'), 'the end of the flood');
    const { resume_url } = s.streamInfo();
    s.cut();
    const old = await api(server, 'GET', `${resume_url}?last_event_id=1`);
    assert.equal(old.status, 410);
    assert.equal(old.body.code, 'SBX_STREAM_EVENTS_GONE');
    const from = Number(/Last-Event-ID: (\d+)/.exec(old.body.detail)?.[1]);
    assert.ok(from > 1, old.body.detail);
    const r = await SseClient.open(`${server.url}${resume_url}`, { headers: { 'last-event-id': String(from) } });
    assert.equal(r.status, 200);
    await r.waitFor(isText('stdout', 'flooded'), 'the kept output');
    assert.equal(r.events[0]!.id, from + 1);
    const kept = r.events.reduce((n, e) => n + Buffer.byteLength(e.data), 0);
    assert.ok(kept <= 64 * 1024, `replayed ${kept} bytes, buffer 64 KiB`);
    await upload(server, id, 'x', { path: 'go7' });
    assert.deepEqual(await r.done(), { clean: true });
    assert.match(r.text('stdout'), /end\n$/);
    assert.equal(r.result().result_block.content.return_code, 0);
  });

  test('past SANDBOX_STREAM_MAX open streams a new one is refused with 503 (JSON); a plain call still runs', async () => {
    const ids = [await createSession(server), await createSession(server), await createSession(server)];
    const open = await Promise.all(ids.slice(0, 2).map((id, i) => SseClient.exec(server, id, 'code_execution', { code: waitingPython(`go8${i}`) }, LONG)));
    await Promise.all(open.map((s) => s.waitFor(isText('stdout', 'first'), 'the first print')));
    const third = await SseClient.exec(server, ids[2]!, 'code_execution', { code: 'print(1)' });
    assert.equal(third.status, 503);
    await third.done();
    assert.equal(third.json().code, 'SBX_SERVER_BUSY');
    assert.match(third.json().detail, /SANDBOX_STREAM_MAX=2/);
    assert.equal((await exec(server, ids[2]!, 'code_execution', { code: 'print(1)' })).stdout, '1');
    await Promise.all(ids.slice(0, 2).map((id, i) => upload(server, id, 'x', { path: `go8${i}` })));
    for (const s of open) assert.deepEqual(await s.done(), { clean: true });
    // Delivered streams are forgotten: room again.
    const again = await SseClient.exec(server, ids[2]!, 'code_execution', { code: 'print(2)' });
    await again.done();
    assert.equal(again.result().result_block.content.stdout, '2');
  });

  test("one session's queued streamed calls hold no stream slot: another session still streams", async () => {
    const [a, b] = [await createSession(server), await createSession(server)];
    const running = await SseClient.exec(server, a, 'code_execution', { code: waitingPython('go91') }, LONG);
    await running.waitFor(isText('stdout', 'first'), 'the first print');
    // Two more streamed calls wait in a's queue (their answers come once they start).
    const queued = [0, 1].map(() => SseClient.exec(server, a, 'code_execution', { code: 'print(1)' }));
    // An event, not a clock: the server counts them as queued.
    while (!/^sandbox_queued_calls 2$/m.test((await api(server, 'GET', '/metrics')).text)) await new Promise((r) => setTimeout(r, 20));
    const other = await SseClient.exec(server, b, 'code_execution', { code: 'print(3)' });
    assert.equal(other.status, 200, other.body);
    assert.deepEqual(await other.done(), { clean: true });
    assert.equal(other.result().result_block.content.stdout, '3');
    await upload(server, a, 'x', { path: 'go91' });
    assert.deepEqual(await running.done(), { clean: true });
    for (const q of await Promise.all(queued)) {
      assert.deepEqual(await q.done(), { clean: true });
      assert.equal(q.result().result_block.content.stdout, '1');
    }
  });
});

test('shutdown ends open streams cleanly: a call that ends within the grace sends its result, one that does not gets an error event', async (t) => {
  const server = await startServer({ SANDBOX_SHUTDOWN_GRACE_SECONDS: '5' });
  t.after(() => server.stop());
  const [a, b] = [await createSession(server), await createSession(server)];
  const here = `here-${process.pid}-${Date.now()}`;
  const ending = await SseClient.exec(server, a, 'code_execution', { code: waitingPython('go9', `open('/workspace/${here}', 'w').close()\nprint('first')`) }, LONG);
  const stuck = await SseClient.exec(server, b, 'code_execution', { code: waitingPython('never') }, LONG);
  await ending.waitFor(isText('stdout', 'first'), 'the first print of the call that will end');
  await stuck.waitFor(isText('stdout', 'first'), 'the first print of the call that will not');
  // The session's workspace on the host (the server no longer takes requests once it stops).
  const dir = (await readdir(server.sessionsRoot)).map((n) => `${server.sessionsRoot}/${n}/workspace`).find((d) => existsSync(`${d}/${here}`));
  assert.ok(dir, 'the workspace of the call that will end');
  server.proc.kill('SIGTERM');
  await notHung(
    (async () => {
      while (!server.logs().includes('shutting down')) await new Promise((r) => setTimeout(r, 20));
    })(),
    'the server to begin its shutdown',
  );
  await writeFile(`${dir}/go9`, '');
  assert.deepEqual(await ending.done(), { clean: true });
  assert.equal(ending.result()?.result_block.content.stdout, 'first\nsecond');
  assert.deepEqual(await stuck.done(), { clean: true });
  const err = stuck.events.at(-1)!;
  assert.equal(err.event, 'error');
  assert.equal(JSON.parse(err.data).code, 'SBX_SHUTTING_DOWN');
  assert.equal(await notHung(server.stop(), 'server exit'), 0);
});

test('result_format "anthropic" streams too: the result event carries the native answer; a refusal block comes back as plain JSON, not a hung stream', async (t) => {
  const server = await startServer({ SANDBOX_WARMUP: '0' });
  t.after(() => server.stop());
  const id = await createSession(server);
  const s = await SseClient.exec(server, id, 'bash_code_execution', { command: 'echo streamed' }, { result_format: 'anthropic' });
  assert.equal(s.status, 200);
  assert.deepEqual(await s.done(), { clean: true });
  assert.ok(s.events.some(isText('stdout', 'streamed')));
  const streamed = s.result();
  assert.equal(streamed.result_block.type, 'bash_code_execution_tool_result');
  assert.equal(streamed.result_block.content.type, 'bash_code_execution_result');
  assert.equal(streamed.result_block.content.stdout, 'streamed\n');
  const plain = await api(server, 'POST', `/sessions/${id}/exec`, { tool: 'bash_code_execution', input: { command: 'echo streamed' }, result_format: 'anthropic' });
  assert.deepEqual(
    stable({ ...streamed, tool_use_id: 'x', result_block: { ...streamed.result_block, tool_use_id: 'x' } }),
    stable({ ...plain.body, tool_use_id: 'x', result_block: { ...plain.body.result_block, tool_use_id: 'x' } }),
  );

  const refused = await SseClient.exec(server, id, 'bash_code_execution', { nope: 1 }, { result_format: 'anthropic' });
  assert.deepEqual(await notHung(refused.done(), 'the refused call'), { clean: true });
  assert.equal(refused.status, 200);
  assert.equal(refused.json().result_block.content.error_code, 'invalid_tool_input');
});

test('a client that stops reading is cut once it is more than a replay buffer behind: escape-heavy output cannot pile up in the server', async (t) => {
  // (a long send timeout: the cut comes from the bound, not from the stalled-client timer)
  const server = await startServer({
    SANDBOX_WARMUP: '0',
    SANDBOX_STREAM_REPLAY_BYTES: '65536',
    SANDBOX_RUNNER_MAX_OUTPUT_BYTES: String(8 * 1024 * 1024),
    SANDBOX_HTTP_SEND_TIMEOUT_SECONDS: '600',
  });
  t.after(() => server.stop());
  const id = await createSession(server);
  // 6 MiB of \x01: 36 MB of JSON-escaped events, far past what the socket buffers hold.
  const s = await SseClient.exec(server, id, 'code_execution', {
    code: "import sys\nfor _ in range(96):\n    sys.stdout.write('\\x01' * 65536)\n    sys.stdout.flush()\nprint('end')",
  });
  s.res.pause();
  assert.deepEqual(await s.done('the cut'), { clean: false }, 'the slow client was cut');
  // The call ran to its end regardless, and the session works on.
  for (;;) {
    const r = await exec(server, id, 'code_execution', { code: 'print(2)' });
    if (r.status === 200) {
      assert.equal(r.stdout, '2');
      break;
    }
    assert.equal(r.status, 429); // the streamed call is still running: wait for it (an event: its end)
    await new Promise((r) => setTimeout(r, 50));
  }
  // What is kept for a resume is bounded: the oldest output is gone (410, naming where to
  // resume), and resuming from there gives the result.
  const old = await api(server, 'GET', `/sessions/${id}/exec/streams/${String(s.res.headers['x-stream-id'])}?last_event_id=1`);
  assert.equal(old.status, 410);
});
