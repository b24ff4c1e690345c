/**
 * The SSE writer (backpressure, heartbeats, stalls) and a stream's replay buffer, without
 * a server: a fake response records what is written and says when its buffer is full.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { encodeEvent, HEARTBEAT, SseWriter } from '../../src/http/sse.js';
import { CHUNK_CHARS, ExecStreams, type StreamsConfig } from '../../src/http/exec-streams.js';
import { parseLastEventId } from '../../src/http/routes/streams.js';
import type { ExecResponse } from '../../src/tools/result.js';

class FakeRes extends EventEmitter {
  written: string[] = [];
  /** What write() returns: false is a full socket buffer. */
  ok = true;
  destroyed = false;
  writableEnded = false;
  writableFinished = false;
  status = 0;
  headers: Record<string, string> = {};
  writeHead(status: number, headers: Record<string, string>) {
    this.status = status;
    this.headers = headers;
  }
  flushHeaders() {}
  write(chunk: string | Buffer) {
    this.written.push(String(chunk));
    return this.ok;
  }
  end() {
    this.writableEnded = true;
    this.writableFinished = true;
    this.emit('finish');
    this.emit('close');
  }
  destroy() {
    this.destroyed = true;
    this.emit('close');
  }
  text() {
    return this.written.join('');
  }
  /** The events written, parsed. */
  events() {
    return this.text()
      .split('\n\n')
      .filter((b) => b.startsWith('id: '))
      .map((b) => {
        const [id, event, data] = b.split('\n').map((l) => l.slice(l.indexOf(': ') + 2));
        return { id: Number(id), event: event!, data: JSON.parse(data!) };
      });
  }
}

const asRes = (r: FakeRes) => r as unknown as ServerResponse;
const turn = () => new Promise((r) => setImmediate(r));

const CONFIG: StreamsConfig = {
  streamResumeSeconds: 60,
  streamReplayBytes: 64 * 1024,
  streamHeartbeatSeconds: 15,
  streamMax: 2,
  httpSendTimeoutSeconds: 60,
  shutdownGraceSeconds: 1,
};

function answer(stdout: string): ExecResponse {
  return {
    tool_use_id: 'srvtoolu_x',
    result_block: { type: 'code_execution_tool_result', tool_use_id: 'srvtoolu_x', content: { type: 'code_execution_result', stdout, stderr: '', return_code: 0, content: [] } },
    execution_time_ms: 1,
    limit_exceeded: null,
    interpreter_restarted: false,
    stdout_dropped_bytes: 0,
    stderr_dropped_bytes: 0,
  };
}

test('an event is id, event and one data line, then a blank line', () => {
  assert.equal(encodeEvent({ id: 7, event: 'stdout', data: '{"text":"a\\nb"}' }).join(''), 'id: 7\nevent: stdout\ndata: {"text":"a\\nb"}\n\n');
});

test('the writer stops writing (heartbeats too) while the client has not drained, and goes on after drain', (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  const res = new FakeRes();
  let writable = 0;
  const w = new SseWriter(asRes(res), { 'x-stream-id': 's' }, { heartbeatMs: 1000, stallMs: 60_000, onWritable: () => writable++, onClose: () => {} });
  assert.equal(res.status, 200);
  assert.match(res.headers['content-type']!, /^text\/event-stream/);
  t.mock.timers.tick(1000);
  assert.equal(res.text(), HEARTBEAT);
  res.ok = false;
  assert.equal(w.send({ id: 1, event: 'stdout', data: '{}' }), false);
  assert.equal(w.writable, false);
  const before = res.written.length;
  t.mock.timers.tick(5000);
  assert.equal(res.written.length, before, 'no heartbeat into a full buffer');
  res.ok = true;
  res.emit('drain');
  assert.equal(writable, 1);
  assert.equal(w.writable, true);
  t.mock.timers.tick(1000);
  assert.equal(res.written.at(-1), HEARTBEAT);
  w.end();
  assert.equal(res.writableEnded, true);
});

test('a client that takes nothing for the stall time is cut', (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  const res = new FakeRes();
  let closed = 0;
  const w = new SseWriter(asRes(res), {}, { heartbeatMs: 1000, stallMs: 30_000, onWritable: () => {}, onClose: () => closed++ });
  res.ok = false;
  w.send({ id: 1, event: 'stdout', data: '{}' });
  t.mock.timers.tick(29_999);
  assert.equal(res.destroyed, false);
  t.mock.timers.tick(1);
  assert.equal(res.destroyed, true);
  assert.equal(closed, 1);
});

test('output of one turn is one event; a character split between reads is whole; stdout and stderr keep their order', async () => {
  const streams = new ExecStreams(CONFIG);
  const s = streams.open('sbx_a');
  s.begin('srvtoolu_x');
  const res = new FakeRes();
  s.attach(asRes(res), 0);
  const euro = Buffer.from('€');
  s.output('stdout', Buffer.from('a'));
  s.output('stdout', euro.subarray(0, 1));
  s.output('stdout', euro.subarray(1));
  s.output('stderr', Buffer.from('E'));
  s.output('stdout', Buffer.from('b'));
  await turn();
  s.output('stdout', Buffer.from('c'));
  await turn();
  s.finish({ answer: answer('a€bc'), text: null, held: null });
  const ev = res.events();
  assert.deepEqual(
    ev.map((e) => [e.id, e.event]),
    [
      [1, 'stream'],
      [2, 'stdout'],
      [3, 'stderr'],
      [4, 'stdout'],
      [5, 'stdout'],
      [6, 'result'],
    ],
  );
  assert.deepEqual(
    ev.slice(1, 5).map((e) => e.data.text),
    ['a€', 'E', 'b', 'c'],
  );
  assert.equal(ev[5]!.data.result_block.content.stdout, 'a€bc');
  assert.equal(res.writableEnded, true, 'the response ends after the result');
  assert.equal(streams.size, 0, 'a delivered stream is forgotten');
});

test('the replay buffer keeps the newest output up to its bound and always the result; older resumes are refused', async () => {
  const streams = new ExecStreams(CONFIG);
  const s = streams.open('sbx_a');
  s.begin('srvtoolu_x');
  for (let i = 0; i < 40; i++) {
    s.output('stdout', Buffer.from(String(i % 10).repeat(CHUNK_CHARS)));
  }
  await turn();
  const big = answer('x'.repeat(100_000));
  s.finish({ answer: big, text: JSON.stringify(big), held: null });
  assert.ok(s.oldestId > 2, `oldest kept ${s.oldestId}`);
  assert.throws(
    () => s.checkResume(1),
    (e: any) => e.code === 'SBX_STREAM_EVENTS_GONE' && new RegExp(`Last-Event-ID: ${s.oldestId - 1}`).test(e.detail),
  );
  assert.throws(
    () => s.checkResume(s.lastId + 1),
    (e: any) => e.code === 'SBX_BAD_REQUEST',
  );
  const oldest = s.oldestId;
  s.checkResume(oldest - 1);
  const res = new FakeRes();
  s.attach(asRes(res), oldest - 1);
  const ev = res.events();
  assert.equal(ev[0]!.id, oldest);
  assert.equal(ev.at(-1)!.event, 'result');
  const outputBytes = ev.filter((e) => e.event === 'stdout').reduce((n, e) => n + e.data.text.length, 0);
  assert.ok(outputBytes <= CONFIG.streamReplayBytes, `kept ${outputBytes} bytes of output`);
  assert.ok(outputBytes >= CONFIG.streamReplayBytes / 2, 'and the newest of it');
});

test('a slow client gets every event up to twice the replay bound behind; further behind it is cut, and the stream is trimmed to the bound', async () => {
  const streams = new ExecStreams(CONFIG);
  const s = streams.open('sbx_a');
  s.begin('srvtoolu_x');
  const res = new FakeRes();
  res.ok = false; // full after the first write
  s.attach(asRes(res), 0);
  // 6 events of ~16 KiB: past the 64 KiB bound, within twice it.
  for (let i = 0; i < 6; i++) s.output('stdout', Buffer.from('y'.repeat(CHUNK_CHARS)));
  await turn();
  assert.equal(s.oldestId, 2, 'nothing the client has not had (after event 1) is dropped');
  assert.equal(res.destroyed, false);
  res.ok = true;
  res.emit('drain');
  assert.deepEqual(
    res.events().map((e) => e.id),
    Array.from({ length: 7 }, (_, i) => i + 1),
  );
  // A second client that never reads: past twice the bound it is cut, not buffered for.
  const slow = new FakeRes();
  slow.ok = false;
  s.attach(asRes(slow), s.lastId);
  for (let i = 0; i < 40; i++) s.output('stdout', Buffer.from('z'.repeat(CHUNK_CHARS)));
  await turn();
  assert.equal(slow.destroyed, true, 'the client more than twice the bound behind was cut');
  assert.equal(streams.size, 1, 'still resumable');
  assert.ok(s.oldestId > 8, 'what is kept is trimmed to the bound');
  assert.throws(
    () => s.checkResume(7),
    (e: any) => e.code === 'SBX_STREAM_EVENTS_GONE',
  );
});

test('at most SANDBOX_STREAM_MAX streams: an ended unread one makes room, else 503', () => {
  const streams = new ExecStreams(CONFIG);
  const a = streams.open('sbx_a');
  a.begin('t1');
  streams.open('sbx_b').begin('t2');
  assert.throws(
    () => streams.open('sbx_c'),
    (e: any) => e.code === 'SBX_SERVER_BUSY' && e.status === 503,
  );
  a.finish({ answer: answer(''), text: null, held: null });
  const c = streams.open('sbx_c');
  assert.equal(streams.size, 2);
  assert.throws(
    () => streams.find('sbx_a', a.id),
    (e: any) => e.code === 'SBX_STREAM_NOT_FOUND',
  );
  assert.throws(
    () => streams.find('sbx_a', c.id),
    (e: any) => e.code === 'SBX_STREAM_NOT_FOUND',
    'not started yet, and of another session',
  );
});

test('Last-Event-ID: a non-negative integer; empty is none', () => {
  assert.equal(parseLastEventId(undefined), 0);
  assert.equal(parseLastEventId(''), 0);
  assert.equal(parseLastEventId(' 12 '), 12);
  for (const bad of ['-1', 'x', '1.5', '1e3', '9'.repeat(16)])
    assert.throws(
      () => parseLastEventId(bad),
      (e: any) => e.code === 'SBX_BAD_REQUEST',
      bad,
    );
});
