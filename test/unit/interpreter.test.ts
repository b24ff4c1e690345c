/**
 * The interpreter client (src/runner/interpreter.ts) against a fake interpreter process:
 * streams in memory, and a scripted driver in the test speaking the frame protocol. No
 * process, no sandbox, no root. Timeouts and graces are a few milliseconds; the tests
 * wait on frames and outcomes, never on elapsed time.
 */
import { test, type TestContext } from 'node:test';
import { describeLimit, type LimitKind } from '../../src/limits.js';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { encodeFrame, FrameDecoder, FrameKind, type Frame } from '../../src/runner/frame-codec.js';
import { Interpreter, MAX_WASTED_FRAMES, type ExecOutcome, type ExecRequest, type InterpreterOptions } from '../../src/runner/interpreter.js';
import type { ControlChannel, ExitInfo, InterpreterProcess } from '../../src/sandbox/launcher.js';

/** An InterpreterProcess whose driver is the test: it reads what the client sends
 * (`next`) and writes frames back (`send`). */
class FakeProcess implements InterpreterProcess {
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  /** Client -> driver (fd 3), driver -> client (fd 4). */
  readonly toDriver = new PassThrough();
  readonly fromDriver = new PassThrough();
  readonly control: Promise<ControlChannel | null> = Promise.resolve({ input: this.toDriver, output: this.fromDriver });
  readonly exited: Promise<ExitInfo>;
  kills = 0;
  /** What happened, in order: frame kinds received from the client, and 'kill'. */
  readonly events: string[] = [];
  private resolveExit!: (info: ExitInfo) => void;
  private running = true;
  private readonly received: Frame[] = [];
  private waiter: ((f: Frame) => void) | null = null;

  constructor() {
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    const decoder = new FrameDecoder(64 << 20);
    this.toDriver.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        this.events.push(f.kind);
        const w = this.waiter;
        this.waiter = null;
        if (w) w(f);
        else this.received.push(f);
      }
    });
  }

  get alive(): boolean {
    return this.running;
  }

  hostPids(): Promise<number[]> {
    return Promise.resolve([]);
  }

  kill(): Promise<ExitInfo> {
    this.kills++;
    this.events.push('kill');
    this.die({ exitCode: 137, signal: 'SIGKILL' });
    return this.exited;
  }

  destroyStreams(): void {
    for (const s of [this.stdout, this.stderr, this.toDriver, this.fromDriver]) s.destroy();
  }

  /** The process ends: its pipes close, then it is reaped. */
  die(info: ExitInfo): void {
    if (!this.running) return;
    this.running = false;
    this.fromDriver.end();
    this.resolveExit(info);
  }

  /** The next frame the client sent. */
  next(): Promise<Frame> {
    const f = this.received.shift();
    if (f) return Promise.resolve(f);
    assert.equal(this.waiter, null, 'one reader at a time');
    return new Promise((resolve) => (this.waiter = resolve));
  }

  /** The next frame, which must be of `kind`; its JSON body. */
  async expect(kind: string): Promise<Record<string, unknown>> {
    const f = await this.next();
    assert.equal(f.kind, kind, `expected a ${kind} frame, got ${f.kind}`);
    return JSON.parse(f.body.toString('utf8')) as Record<string, unknown>;
  }

  send(kind: string, body: Buffer | string | object): void {
    this.fromDriver.write(encodeFrame(kind, body));
  }

  sendRaw(bytes: Buffer): void {
    this.fromDriver.write(bytes);
  }
}

const LIMITS = { fileSizeMb: 5, cpuSeconds: 7, workspaceMb: 100, maxProcesses: 16, memoryMb: 99, maxOutputBytes: 1024 };
const OPTIONS = { interruptGraceMs: 20, startTimeoutMs: 10_000, describeLimit: (kind: LimitKind) => describeLimit(kind, LIMITS) };

/** A started interpreter over a fake process that has said hello. */
async function started(t: TestContext, opts: Partial<InterpreterOptions> = {}): Promise<{ interp: Interpreter; proc: FakeProcess }> {
  const proc = new FakeProcess();
  const interp = new Interpreter({ ...OPTIONS, ...opts, startProcess: () => proc });
  t.after(() => interp.kill());
  proc.send(FrameKind.Hello, {});
  await interp.start();
  return { interp, proc };
}

function exec(interp: Interpreter, req: Partial<ExecRequest> = {}): Promise<ExecOutcome> {
  return interp.exec({ code: 'print(1)', timeoutMs: 10_000, maxOutputBytes: 1024, ...req });
}

const done = (id: unknown, fields: Record<string, unknown> = {}) => ({ id, return_code: 0, limit: null, stdout_dropped: 0, stderr_dropped: 0, note: null, ...fields });

test('an exec sends the code, collects the output frames and settles on its done frame', async (t) => {
  const { interp, proc } = await started(t);
  const run = exec(interp, { code: 'x = 1', maxOutputBytes: 8 });
  const req = await proc.expect(FrameKind.Exec);
  assert.deepEqual(Object.keys(req).sort(), ['code', 'id', 'max_output_bytes', 'tail_bytes']);
  assert.equal(req.tail_bytes, 4, 'the tail the result keeps: half the cap');
  assert.equal(req.code, 'x = 1');
  assert.equal(req.max_output_bytes, 8);
  proc.send(FrameKind.Stdout, 'out ');
  proc.send(FrameKind.Stderr, 'err');
  proc.send(FrameKind.Stdout, 'more than eight');
  proc.send(FrameKind.Done, done(Number(req.id) + 1000, { return_code: 5 })); // another cell's: ignored
  proc.send(FrameKind.Done, done(req.id, { return_code: 3, stdout_dropped: 40, note: 'a remark' }));
  const o = await run;
  assert.equal(o.returnCode, 3);
  assert.equal(o.stdout.head(), 'out ', 'the client keeps maxOutputBytes per stream: its head');
  assert.equal(o.stdout.tail(), 'ight', 'and its tail');
  assert.equal(o.stdout.dropped, 11);
  assert.equal(o.stderr.text(), 'err');
  assert.deepEqual(o.droppedByDriver, { stdout: 40, stderr: 0 });
  assert.deepEqual(o.notes, ['a remark']);
  assert.equal(o.limit, null);
  assert.equal(o.stateLost, false);
  assert.equal(proc.kills, 0);

  // The next call has the next id and none of the last call's output.
  const second = exec(interp);
  const req2 = await proc.expect(FrameKind.Exec);
  assert.notEqual(req2.id, req.id);
  proc.send(FrameKind.Done, done(req2.id, { limit: 'memory', return_code: 1 }));
  const o2 = await second;
  assert.equal(o2.stdout.text(), '');
  assert.equal(o2.limit, 'memory');
  assert.match(o2.notes.join('\n'), /runner: a limit was reached: memory \(99 MiB, SANDBOX_RUNNER_MEMORY_MB\): MemoryError was raised/);
});

test('a return code that is not a 32-bit integer is reported as 1, with a note', async (t) => {
  const { interp, proc } = await started(t);
  const run = exec(interp);
  const req = await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.Done, done(req.id, { return_code: 2 ** 40, stdout_dropped: -5 }));
  const o = await run;
  assert.equal(o.returnCode, 1);
  assert.match(o.notes.join('\n'), /not a 32-bit integer/);
  assert.deepEqual(o.droppedByDriver, { stdout: 0, stderr: 0 });
});

test('a tool call is passed to onToolCall and its reply sent back; without a handler the call is refused', async (t) => {
  const { interp, proc } = await started(t);
  const callId = 'ab'.repeat(16);
  const seen: unknown[] = [];
  const run = exec(interp, {
    onToolCall: (call) => {
      seen.push(call);
      return Promise.resolve({ ok: true, content: { answer: 42 } });
    },
  });
  const req = await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.ToolCall, { call_id: callId, name: 'lookup', input: { q: 'x' } });
  assert.deepEqual(await proc.expect(FrameKind.ToolReply), { call_id: callId, ok: true, content: { answer: 42 } });
  assert.deepEqual(seen, [{ callId, name: 'lookup', input: { q: 'x' } }]);
  proc.send(FrameKind.Done, done(req.id));
  assert.equal((await run).returnCode, 0);

  const bare = exec(interp);
  const req2 = await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.ToolCall, { call_id: callId, name: 'lookup', input: {} });
  assert.deepEqual(await proc.expect(FrameKind.ToolReply), { call_id: callId, ok: false, error: 'no tools are registered in this session' });
  proc.send(FrameKind.Done, done(req2.id));
  await bare;
});

test('a frame of an unknown kind is a protocol error: the call reports the state lost and the process is killed', async (t) => {
  const { interp, proc } = await started(t);
  const run = exec(interp);
  await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.Exec, { id: 1, code: 'a driver never sends this' });
  const o = await run;
  assert.equal(o.returnCode, -1);
  assert.equal(o.stateLost, true);
  assert.match(o.notes.join('\n'), /unknown frame kind "E" from the interpreter/);
  assert.equal(proc.kills, 1);
  assert.equal(interp.alive, false);
});

test('frames of no use past MAX_WASTED_FRAMES beyond those a call used kill the interpreter with a note', async (t) => {
  const { interp, proc } = await started(t);
  // A call that uses some frames may waste as many more than MAX_WASTED_FRAMES: it ends normally.
  const fine = exec(interp, { maxOutputBytes: 4 });
  const req = await proc.expect(FrameKind.Exec);
  const junk = [
    encodeFrame(FrameKind.Stdout, ''), // keeps no byte
    encodeFrame(FrameKind.Done, done(Number(req.id) + 7)), // another call's
    encodeFrame(FrameKind.Hello, {}), // after the start
    encodeFrame(FrameKind.SetupFailed, { error: 'x' }),
    encodeFrame(FrameKind.ToolCall, '{"name":"no id"}'), // cannot even be answered
  ];
  const wire = (n: number) => Buffer.concat(Array.from({ length: n }, (_, i) => junk[i % junk.length]!));
  proc.send(FrameKind.Stdout, 'abc'); // used: 3 bytes kept
  proc.send(FrameKind.Stderr, 'd'); // used
  proc.sendRaw(wire(MAX_WASTED_FRAMES + 2));
  proc.send(FrameKind.Stdout, 'e'); // the fourth byte: used
  proc.send(FrameKind.Stdout, 'f'); // past the cap but within the tail the driver sends (2 bytes): used
  proc.send(FrameKind.Stdout, 'g'); // used
  proc.send(FrameKind.Stdout, 'h'); // past the cap and the tail: of no use (the limit is reached exactly)
  proc.send(FrameKind.Done, done(req.id));
  const o = await fine;
  assert.equal(o.returnCode, 0, o.notes.join('\n'));
  assert.equal(o.stdout.text(), 'abgh', 'head and tail');
  assert.equal(proc.kills, 0);
  // The count starts again with each call; one more than the bound is a kill.
  const flood = exec(interp);
  await proc.expect(FrameKind.Exec);
  proc.sendRaw(wire(MAX_WASTED_FRAMES + 1));
  const f = await flood;
  assert.equal(f.returnCode, -1);
  assert.equal(f.stateLost, true);
  assert.match(
    f.notes.join('\n'),
    /^runner: the code flooded the interpreter's control channel: 1025 frames in this call were of no use to the server \(at most 1024 more than the 0 it used\); the interpreter was restarted and its state was lost$/,
  );
  assert.equal(proc.kills, 1);
  assert.equal(interp.alive, false);
});

test('answered tool-call refusals are not frames of no use: a driver that never reads them meets backpressure instead', async (t) => {
  const { interp, proc } = await started(t);
  const run = exec(interp, { onToolCall: () => new Promise(() => {}) }); // calls never return
  const req = await proc.expect(FrameKind.Exec);
  const call = (i: number) => encodeFrame(FrameKind.ToolCall, { call_id: i.toString(16).padStart(32, '0'), name: 't', input: {} });
  proc.sendRaw(Buffer.concat(Array.from({ length: 3 * MAX_WASTED_FRAMES }, (_, i) => call(i))));
  for (let i = 0; i < 3 * MAX_WASTED_FRAMES - 4; i++) assert.equal((await proc.expect(FrameKind.ToolReply)).ok, false);
  proc.send(FrameKind.Done, done(req.id));
  assert.equal((await run).returnCode, 0);
  assert.equal(proc.kills, 0);
});

test('a frame longer than the limit is a protocol error before its body arrives', async (t) => {
  const { interp, proc } = await started(t);
  const run = exec(interp);
  await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.Stdout, 'before');
  const head = Buffer.alloc(5);
  head.writeUInt32BE(0xfffffff0, 0);
  head.writeUInt8(FrameKind.Stdout.charCodeAt(0), 4);
  proc.sendRaw(head); // the header alone: no body follows
  const o = await run;
  assert.equal(o.stateLost, true);
  assert.match(o.notes.join('\n'), /malformed frame from the interpreter: frame of 4294967280 bytes exceeds the \d+-byte limit/);
  assert.equal(o.stdout.text(), 'before', 'frames before the bad one are kept');
  assert.equal(proc.kills, 1);
});

test('at the timeout the cell is interrupted; a cell that stops keeps the interpreter and its state', async (t) => {
  const { interp, proc } = await started(t, { interruptGraceMs: 60_000 });
  const run = exec(interp, { timeoutMs: 5 });
  const req = await proc.expect(FrameKind.Exec);
  assert.deepEqual(await proc.expect(FrameKind.Interrupt), { id: req.id });
  proc.send(FrameKind.Stderr, 'KeyboardInterrupt\n');
  proc.send(FrameKind.Done, done(req.id, { return_code: 130, limit: 'interrupted' }));
  const o = await run;
  assert.equal(o.limit, 'wall_clock');
  assert.equal(o.returnCode, -1);
  assert.equal(o.stateLost, false);
  assert.match(o.notes.join('\n'), /timed out after .*s \(wall-clock limit\).*interpreter state was kept/);
  assert.equal(o.stderr.text(), 'KeyboardInterrupt\n');
  assert.equal(proc.kills, 0);
  assert.equal(interp.alive, true);

  // The grace timer died with the call: the next call runs to its end undisturbed.
  const next = exec(interp);
  const req2 = await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.Done, done(req2.id));
  assert.equal((await next).stateLost, false);
  assert.deepEqual(proc.events, [FrameKind.Exec, FrameKind.Interrupt, FrameKind.Exec]);
});

test('a cell that does not stop within the grace after its interrupt gets the process killed and the state reported lost', async (t) => {
  const { interp, proc } = await started(t, { interruptGraceMs: 5 });
  const run = exec(interp, { timeoutMs: 5 });
  await proc.expect(FrameKind.Exec);
  await proc.expect(FrameKind.Interrupt); // ignored, as C code that never checks signals would
  const o = await run;
  assert.equal(o.limit, 'wall_clock');
  assert.equal(o.returnCode, -1);
  assert.equal(o.stateLost, true);
  assert.match(o.notes.join('\n'), /did not stop when interrupted; the interpreter was restarted and its state was lost/);
  assert.deepEqual(proc.events, [FrameKind.Exec, FrameKind.Interrupt, 'kill']);
  assert.equal(interp.alive, false);
});

test('a caller that goes away interrupts the cell as a timeout would, without a limit', async (t) => {
  const { interp, proc } = await started(t, { interruptGraceMs: 60_000 });
  const gone = new AbortController();
  const run = exec(interp, { signal: gone.signal });
  const req = await proc.expect(FrameKind.Exec);
  gone.abort();
  assert.deepEqual(await proc.expect(FrameKind.Interrupt), { id: req.id });
  proc.send(FrameKind.Done, done(req.id, { return_code: 130, limit: 'interrupted' }));
  const o = await run;
  assert.equal(o.limit, null);
  assert.equal(o.returnCode, -1);
  assert.equal(o.stateLost, false);
  assert.match(o.notes.join('\n'), /client disconnected; the code was interrupted/);
});

test('a process that dies mid-call ends the call with what it sent, the cause and the state lost', async (t) => {
  const { interp, proc } = await started(t);
  const run = exec(interp);
  await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.Stdout, 'partial');
  proc.die({ exitCode: 128 + 11, signal: null });
  const o = await run;
  assert.equal(o.returnCode, -1);
  assert.equal(o.stateLost, true);
  assert.equal(o.limit, null);
  assert.equal(o.stdout.text(), 'partial');
  assert.match(o.notes.join('\n'), /process exited unexpectedly \(signal 11, SIGSEGV\); the interpreter was restarted and its state was lost/);
  assert.equal(interp.alive, false);

  // A call after the death is answered at once, and sends nothing.
  const after = await exec(interp);
  assert.equal(after.stateLost, true);
  assert.deepEqual(proc.events, [FrameKind.Exec]);
});

test('a death by a sandbox limit names the limit: SIGXCPU is the CPU time, an OOM kill the memory', async (t) => {
  const cpu = await started(t);
  const run = exec(cpu.interp);
  await cpu.proc.expect(FrameKind.Exec);
  cpu.proc.die({ exitCode: 128 + 24, signal: 'SIGXCPU' });
  const o = await run;
  assert.equal(o.limit, 'cpu');
  assert.match(o.notes.join('\n'), /runner: killed: a limit was reached: CPU time \(7 CPU seconds per process, SANDBOX_RUNNER_CPU_SECONDS\)/);

  const mem = await started(t, { wasOomKilled: () => true });
  const run2 = exec(mem.interp);
  await mem.proc.expect(FrameKind.Exec);
  mem.proc.die({ exitCode: 137, signal: 'SIGKILL' });
  const o2 = await run2;
  assert.equal(o2.limit, 'memory');
  assert.match(o2.notes.join('\n'), /runner: killed: a limit was reached: memory \(99 MiB, SANDBOX_RUNNER_MEMORY_MB\)/);
});

test('a sandbox that fails before its hello fails the start with its reason', async () => {
  const proc = new FakeProcess();
  const interp = new Interpreter({ ...OPTIONS, startProcess: () => proc });
  const starting = interp.start();
  proc.send(FrameKind.SetupFailed, { error: 'sandbox set-up failed: no pivot_root' });
  // The frame is read before the exit is reported (a real pipe delivers it first).
  await new Promise<void>((resolve) => setImmediate(resolve));
  proc.die({ exitCode: 71, signal: null });
  await assert.rejects(starting, (e: unknown) => {
    assert.equal((e as { code?: string }).code, 'SBX_SANDBOX_FAILED');
    assert.match((e as Error).message, /exited while starting \(status 71\).*no pivot_root/);
    return true;
  });
});

test('a sandbox that never says hello is killed at the start timeout', async () => {
  const proc = new FakeProcess();
  const interp = new Interpreter({ ...OPTIONS, startTimeoutMs: 5, startProcess: () => proc });
  await assert.rejects(interp.start(), /did not start in time/);
  assert.equal(proc.kills, 1);
});

test('between calls the client drops what the driver sends and stops reading until the next call', async (t) => {
  const { interp, proc } = await started(t);
  // Say, from a child the cell forked (it has the driver's descriptors).
  proc.send(FrameKind.Stdout, 'left behind by a background process');
  await new Promise<void>((resolve) => setImmediate(resolve));
  assert.equal(proc.fromDriver.isPaused(), true, 'a flood between calls is not decoded: its writes block');
  const run = exec(interp);
  assert.equal(proc.fromDriver.isPaused(), false);
  const req = await proc.expect(FrameKind.Exec);
  proc.send(FrameKind.Stdout, 'mine');
  proc.send(FrameKind.Done, done(req.id));
  const o = await run;
  assert.equal(o.stdout.text(), 'mine', 'the frame read while no call ran was dropped');
});
