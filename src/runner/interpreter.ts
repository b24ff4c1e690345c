/**
 * Client of one session interpreter (sandbox-python/driver.py running in a sandbox).
 *
 * Protocol: frames (frame-codec.ts) on the driver's fds 3 (to it) and 4 (from it);
 * the kinds are FrameKind there. One exec at a time (the session queues).
 *
 * Timeout policy: at the deadline an interrupt frame raises KeyboardInterrupt in the
 * cell and the driver kills whatever the cell started; the interpreter and its
 * variables stay. If the cell has not finished `interruptGraceMs` later (C code that
 * never checks signals, SIGINT ignored), the whole sandbox is killed: state is lost
 * and the session starts a fresh interpreter. A response therefore always arrives by
 * timeout + grace + a kill.
 *
 * Every byte the driver sends is bounded: frames by maxFrameBytes, output by the
 * per-stream cap (CappedBuffer: head and tail), diagnostics by DIAG_BYTES. Every byte we send it is
 * bounded too: when the driver stops reading (say it floods tool calls and never reads
 * the replies), more than WRITE_HIGH_WATER_BYTES unsent makes us stop reading its frames
 * until our writes drain, so what we hold for it is at most that mark, one exec frame and
 * the replies of MAX_TOOL_CALLS_IN_FLIGHT router calls. Numbers in frames (return codes,
 * byte counts) are checked before they are used; a value that cannot be serialised (a
 * router reply nested too deep, say) becomes an error reply, never a throw.
 *
 * Frames of no use: session code shares the driver's process, so it can write any frame
 * to the channel. During a call, a frame the server reads and then drops (an output frame
 * that keeps no byte, a done frame that does not end the call, a hello or setup failure
 * after the start, a tool call that cannot even be answered) is counted. Past
 * MAX_WASTED_FRAMES more of them than frames the call used (output kept, tool calls taken,
 * the done), the interpreter is killed as at a protocol error: the call answers at once
 * with a note, and the session's next call gets a fresh interpreter. The real driver never
 * sends such frames (it frames non-empty output only, up to the same cap), so only forged
 * floods are cut; the work a call makes the server do is then bounded by its output cap
 * and tool calls, not by how fast its code can write.
 */
import { encodeFrame, FrameDecoder, FrameKind, type Frame, type FrameKindCode } from './frame-codec.js';
import { CappedBuffer, type OutputSink } from './output.js';
import type { ControlChannel, ExitInfo, InterpreterProcess, SandboxInit } from '../sandbox/launcher.js';
import { SandboxError } from '../errors.js';
import type { LimitKind } from '../limits.js';
import { jsonTooComplex, MAX_JSON_TOKENS } from '../json-bounds.js';

export interface ToolCall {
  callId: string;
  name: string;
  input: unknown;
}
export type ToolReply = { ok: true; content: unknown } | { ok: false; error: string };

export interface ExecRequest {
  code: string;
  timeoutMs: number;
  maxOutputBytes: number;
  /** `signal` aborts when the cell ends or the interpreter dies: the call is of no use then. */
  onToolCall?: (call: ToolCall, signal: AbortSignal) => Promise<ToolReply>;
  /** The caller is gone (its client disconnected): interrupt the cell as at a timeout. */
  signal?: AbortSignal;
  /** Told of each piece of output as it is kept (what the cap drops is never passed on).
   * Called synchronously with a view of a read buffer: copy or decode it before returning. */
  onOutput?: OutputListener;
  /** Where a stream past maxOutputBytes is saved whole, up to `maxBytes` (files/spill.ts):
   * the driver then sends that much of each stream, and the tail of the rest. */
  spill?: { stdout: OutputSink; stderr: OutputSink; maxBytes: number };
}

/** A listener for a call's output as it comes (streaming); absent, nothing is done. */
export type OutputListener = (stream: 'stdout' | 'stderr', chunk: Buffer) => void;

export interface ExecOutcome {
  stdout: CappedBuffer;
  stderr: CappedBuffer;
  returnCode: number;
  limit: LimitKind | null;
  /** Plain-English lines the server adds to stderr (which limit fired, state kept or lost). */
  notes: string[];
  /** The interpreter died during this call; its variables are gone. */
  stateLost: boolean;
  /** Bytes the driver itself dropped past the cap (not sent to us). */
  droppedByDriver: { stdout: number; stderr: number };
}

const MAX_FRAME_BYTES = 2 * 1024 * 1024;
const MAX_TOOL_CALLS_IN_FLIGHT = 4;
const DIAG_BYTES = 8192;
const WRITE_HIGH_WATER_BYTES = 4 * 1024 * 1024;
/** Frames one read may bring before the loop is yielded (a chunk of 64 KiB holds at most
 * 13,107 empty frames). */
const FRAMES_PER_TURN = 512;
/** A done frame is a few fields: anything larger is forged and ignored. */
const SMALL_FRAME_BYTES = 64 * 1024;
/** The driver sends tool arguments of at most 1 MiB (TOOL_CALL_MAX in driver.py). */
const TOOL_FRAME_BYTES = 1024 * 1024 + 4096;
/** Frames of no use a call may bring beyond those it uses (see the top of this file). */
export const MAX_WASTED_FRAMES = 1024;

interface Pending {
  id: number;
  req: ExecRequest;
  stdout: CappedBuffer;
  stderr: CappedBuffer;
  /** Bytes of a stream the driver sends at most: its first max_output_bytes and its tail. */
  usefulBytes: number;
  /** Why the cell was interrupted, if it was. */
  interrupted: false | 'timeout' | 'abandoned';
  cleanup?: () => void;
  /** Aborted when the call settles: tool calls of the cell still in flight stop. Made
   * with the cell's first tool call. */
  toolCalls: AbortController | null;
  resolve: (o: ExecOutcome) => void;
  timers: NodeJS.Timeout[];
}

export interface InterpreterOptions {
  /** Starts the driver in its sandbox (bubblewrap, or a fork of the template). */
  startProcess: () => InterpreterProcess;
  interruptGraceMs: number;
  startTimeoutMs: number;
  /** Tells whether a death was the memory limit (a cgroup OOM kill); optional. */
  wasOomKilled?: () => boolean;
  /** The verdict line of a limit and its setting (limits.ts describeLimit). */
  describeLimit: (kind: LimitKind) => string;
}

export class Interpreter {
  private proc: InterpreterProcess | null = null;
  private channel: ControlChannel | null = null;
  private decoder = new FrameDecoder(MAX_FRAME_BYTES);
  private pending: Pending | null = null;
  private nextId = 1;
  private diag = '';
  private dead = false;
  private ready: Promise<void> | null = null;
  private exitInfo: ExitInfo | null = null;
  private toolCallsInFlight = 0;
  /** Frames of the running call the server had no use for, and those it used. */
  private wastedFrames = 0;
  private usedFrames = 0;
  /** Killed for what it sent: the rest of what it sends is not read. */
  private refused = false;

  constructor(private readonly opts: InterpreterOptions) {}

  get alive(): boolean {
    return !this.dead && this.proc !== null && this.proc.alive;
  }

  /** The init of its template sandbox while it is up (commands join that sandbox). */
  sandboxInit(): SandboxInit | null {
    return this.alive ? (this.proc?.sandboxInit?.() ?? null) : null;
  }

  /** Host pids of the interpreter's sandbox (outer bwrap, init, driver). */
  hostPids(): Promise<number[]> {
    return this.proc?.hostPids() ?? Promise.resolve([]);
  }

  /** Launches the sandbox and waits for the driver's hello (after its pre-imports). */
  start(): Promise<void> {
    if (this.ready) return this.ready;
    const proc = this.opts.startProcess();
    this.proc = proc;
    const onDiag = (d: Buffer) => {
      if (this.diag.length < DIAG_BYTES) this.diag += d.toString('utf8').slice(0, DIAG_BYTES - this.diag.length);
    };
    proc.stdout.on('data', onDiag);
    proc.stderr.on('data', onDiag);
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new SandboxError('SBX_SANDBOX_FAILED', 'the sandbox did not start in time'));
        void this.kill();
      }, this.opts.startTimeoutMs);
      this.onHello = () => {
        clearTimeout(timer);
        resolve();
      };
      proc.exited.then(
        (info) => {
          clearTimeout(timer);
          reject(
            new SandboxError(
              'SBX_SANDBOX_FAILED',
              `the sandbox exited while starting (status ${info.exitCode})${this.diag ? `: ${this.diag.trim().split('\n').slice(-3).join(' | ')}` : ''}`,
            ),
          );
        },
        () => {},
      );
    });
    this.ready.catch(() => {});
    void proc.control.then((channel) => {
      if (!channel || this.proc !== proc) return;
      this.channel = channel;
      channel.output.on('data', (chunk: Buffer) => this.onData(chunk));
      channel.input.on('drain', () => {
        this.backpressured = false;
        this.updateReading();
      });
      channel.output.resume();
    });
    proc.exited.then(
      (info) => this.onExit(info),
      () => {},
    );
    return this.ready;
  }

  /** Set while the driver's hello is awaited (its body says nothing more). */
  private onHello: (() => void) | null = null;

  exec(req: ExecRequest): Promise<ExecOutcome> {
    if (this.pending) throw new SandboxError('SBX_INTERNAL', 'interpreter busy'); // the session queue prevents this
    if (!this.alive) {
      // It died between the readiness check and this call: report it like a crash.
      const { limit, text } = this.describeDeath(this.exitInfo ?? { exitCode: 137, signal: 'SIGKILL' });
      const empty = new CappedBuffer(0);
      return Promise.resolve({ stdout: empty, stderr: empty, returnCode: -1, limit, notes: [text], stateLost: true, droppedByDriver: { stdout: 0, stderr: 0 } });
    }
    const id = this.nextId++;
    this.wastedFrames = 0;
    this.usedFrames = 0;
    // The driver sends the first driverMax bytes of each stream and the last tail_bytes of
    // the rest (the tail the result keeps); it counts what it leaves out.
    const driverMax = Math.max(req.maxOutputBytes, req.spill?.maxBytes ?? 0);
    const tailBytes = Math.floor(req.maxOutputBytes / 2);
    return new Promise<ExecOutcome>((resolve) => {
      const p: Pending = {
        usefulBytes: driverMax + tailBytes,
        id,
        req,
        stdout: new CappedBuffer(req.maxOutputBytes, req.spill?.stdout),
        stderr: new CappedBuffer(req.maxOutputBytes, req.spill?.stderr),
        interrupted: false,
        toolCalls: null,
        resolve,
        timers: [],
      };
      this.pending = p;
      const interrupt = (why: 'timeout' | 'abandoned') => {
        if (this.pending !== p || p.interrupted) return;
        p.interrupted = why;
        this.send(FrameKind.Interrupt, { id });
        p.timers.push(setTimeout(() => this.failPending(p), this.opts.interruptGraceMs));
      };
      p.timers.push(setTimeout(() => interrupt('timeout'), req.timeoutMs));
      this.updateReading();
      if (req.signal) {
        const onAbort = () => interrupt('abandoned');
        if (req.signal.aborted) queueMicrotask(onAbort);
        else {
          req.signal.addEventListener('abort', onAbort, { once: true });
          p.cleanup = () => req.signal?.removeEventListener('abort', onAbort);
        }
      }
      this.send(FrameKind.Exec, { id, code: req.code, max_output_bytes: driverMax, tail_bytes: tailBytes });
    });
  }

  /** Sends a frame; false if it could not be encoded (nothing is sent then). */
  private send(kind: FrameKindCode, body: object): boolean {
    const ch = this.channel;
    const s = ch?.input;
    if (!ch || !s || s.destroyed || !s.writable) return true;
    let frame: Buffer;
    try {
      frame = encodeFrame(kind, body);
    } catch {
      return false; // too deep or too big to serialise
    }
    s.write(frame);
    // The driver is not reading what we send: stop reading what it sends until it does.
    if (s.writableLength > WRITE_HIGH_WATER_BYTES) {
      this.backpressured = true;
      this.updateReading();
    }
    return true;
  }

  /** Our writes to the driver are backed up (see send). */
  private backpressured = false;
  /** A read brought many frames: the loop gets a turn before the next read. */
  private yielding = false;

  /**
   * Reads the driver's frames only while they can matter: while it starts (its hello) or
   * a call runs, and neither backpressure nor a yield holds them. Between calls nothing
   * it sends is of use, so a process the session left running cannot make the server
   * decode a flood of frames while no call runs: once such frames arrive, reading stops
   * (its writes then block) until the next call.
   */
  private updateReading(): void {
    const out = this.channel?.output;
    if (!out || this.dead) return;
    const wanted = (this.onHello !== null || this.pending !== null) && !this.backpressured && !this.yielding;
    if (wanted) {
      if (out.isPaused()) out.resume();
    } else if (!out.isPaused()) out.pause();
  }

  private onData(chunk: Buffer): void {
    if (this.refused) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.protocolError(`malformed frame from the interpreter: ${(e as Error).message}`);
      return;
    }
    const idle = this.pending === null && this.onHello === null;
    for (const f of frames) {
      this.onFrame(f);
      if (this.refused) return;
    }
    if (frames.length > FRAMES_PER_TURN && !this.yielding) {
      // Many tiny frames in one read (a flood of empty output frames, say): every other
      // session and request gets the loop before the next read.
      this.yielding = true;
      setImmediate(() => {
        this.yielding = false;
        this.updateReading();
      });
      this.updateReading();
    } else if (idle && frames.length > 0) {
      // Frames while no call runs: a process left running. Stop reading until the next
      // call (a call that ends leaves reading on: no extra system calls on the exec path).
      this.updateReading();
    }
  }

  private onFrame(f: Frame): void {
    const p = this.pending;
    switch (f.kind) {
      case FrameKind.Stdout:
      case FrameKind.Stderr: {
        if (!p) return;
        const stream = f.kind === FrameKind.Stdout ? p.stdout : p.stderr;
        // Used: a non-empty frame within what the driver sends of a stream (its first
        // driverMax bytes and a tail); past that, only a forged flood sends more.
        const before = stream.total;
        const kept = stream.push(f.body);
        this.count(f.body.length > 0 && before < p.usefulBytes);
        if (kept > 0 && p.req.onOutput) p.req.onOutput(f.kind === FrameKind.Stdout ? 'stdout' : 'stderr', f.body.subarray(0, kept));
        return;
      }
      case FrameKind.Hello:
        if (!this.onHello) return this.count(false);
        this.onHello();
        this.onHello = null;
        return;
      case FrameKind.SetupFailed:
        // The template's child could not build its sandbox: a reason for the start error.
        if (!this.onHello) return this.count(false);
        if (this.diag.length < DIAG_BYTES) this.diag += `${f.body.toString('utf8').slice(0, 1000)}\n`;
        return;
      case FrameKind.ToolCall: {
        if (!p) return;
        // Refusals that need no parse: the driver writes the call id first, so it can be
        // answered without building the arguments (whose parse cost follows their shape).
        const early = /^\{"call_id":"([0-9a-f]{32})"/.exec(f.body.subarray(0, 64).toString('latin1'))?.[1];
        if (this.toolCallsInFlight >= MAX_TOOL_CALLS_IN_FLIGHT) {
          // Only forked children can issue calls in parallel; never let them pile up
          // router requests on the server.
          // (An answered refusal is not counted as of no use: a driver that does not read
          // the answers is stopped by backpressure, see send.)
          if (early) this.send(FrameKind.ToolReply, { call_id: early, ok: false, error: `too many tool calls at once (limit ${MAX_TOOL_CALLS_IN_FLIGHT})` });
          else this.count(false);
          return;
        }
        if (f.body.length > TOOL_FRAME_BYTES || jsonTooComplex(f.body)) {
          if (early) this.send(FrameKind.ToolReply, { call_id: early, ok: false, error: `tool arguments too large or too complex (at most ${MAX_JSON_TOKENS} JSON values)` });
          else this.count(false);
          return;
        }
        const msg = parseJson(f.body, TOOL_FRAME_BYTES);
        // The driver makes 32-hex-digit ids and Python names; anything else is not echoed.
        if (!msg || typeof msg.call_id !== 'string' || typeof msg.name !== 'string' || msg.call_id.length > 64 || msg.name.length > 128) return this.count(false);
        this.count(true);
        const callId = msg.call_id;
        this.toolCallsInFlight++;
        const handler = p.req.onToolCall;
        const reply = handler
          ? handler({ callId, name: msg.name, input: msg.input }, (p.toolCalls ??= new AbortController()).signal)
          : Promise.resolve<ToolReply>({ ok: false, error: 'no tools are registered in this session' });
        reply
          .catch((e: unknown): ToolReply => ({ ok: false, error: String((e as Error)?.message ?? e).slice(0, 1000) }))
          .then((r) => {
            if (!this.send(FrameKind.ToolReply, { call_id: callId, ...r }))
              this.send(FrameKind.ToolReply, { call_id: callId, ok: false, error: `tool '${msg.name as string}': the reply could not be passed on` });
          })
          .catch(() => {})
          .finally(() => this.toolCallsInFlight--);
        return;
      }
      case FrameKind.Done: {
        if (!p) return; // (the start's own silent cell, id 0, ends before its hello)
        const msg = parseJson(f.body, SMALL_FRAME_BYTES);
        if (!msg || msg.id !== p.id) return this.count(false);
        this.settle(p, msg);
        return;
      }
      default:
        this.protocolError(`unknown frame kind ${JSON.stringify(f.kind)} from the interpreter`);
    }
  }

  /** Counts a frame of the running call as used or of no use; past the bound, the
   * interpreter is killed (see the top of this file). Frames between calls are not
   * counted: reading stops then (updateReading). */
  private count(used: boolean): void {
    if (!this.pending) return;
    if (used) {
      this.usedFrames++;
      return;
    }
    if (++this.wastedFrames <= MAX_WASTED_FRAMES + this.usedFrames) return;
    this.protocolError(
      `the code flooded the interpreter's control channel: ${this.wastedFrames} frames in this call were of no use to the server (at most ${MAX_WASTED_FRAMES} more than the ${this.usedFrames} it used)`,
    );
  }

  private settle(p: Pending, msg: Record<string, unknown>): void {
    const notes: string[] = [];
    let limit: LimitKind | null = null;
    let returnCode = 1;
    if (Number.isSafeInteger(msg.return_code) && Math.abs(msg.return_code as number) <= 2 ** 31 - 1) returnCode = msg.return_code as number;
    else notes.push('runner: the interpreter reported a return code that is not a 32-bit integer; 1 is reported instead');
    if (p.interrupted === 'abandoned') {
      returnCode = -1;
      notes.push('runner: the client disconnected; the code was interrupted and the processes it started were stopped; interpreter state was kept');
    } else if (p.interrupted) {
      limit = 'wall_clock';
      returnCode = -1;
      notes.push(
        `runner: execution timed out after ${fmtSeconds(p.req.timeoutMs, false)}s (wall-clock limit); the code was interrupted and the processes it started were stopped; interpreter state was kept`,
      );
    } else if (msg.limit === 'memory') {
      limit = 'memory';
      notes.push(`runner: ${this.opts.describeLimit('memory')}: MemoryError was raised; interpreter state was kept`);
    }
    if (typeof msg.note === 'string') notes.push(msg.note.slice(0, 500)); // the driver's own remark
    this.finish(p, { returnCode, limit, notes, stateLost: false, droppedByDriver: { stdout: num(msg.stdout_dropped), stderr: num(msg.stderr_dropped) } });
  }

  private finish(p: Pending, o: Pick<ExecOutcome, 'returnCode' | 'limit' | 'notes' | 'stateLost' | 'droppedByDriver'>): void {
    if (this.pending !== p) return;
    this.pending = null;
    p.toolCalls?.abort(); // the cell is over: calls it left in flight are of no use
    for (const t of p.timers) clearTimeout(t);
    p.cleanup?.();
    p.resolve({ stdout: p.stdout, stderr: p.stderr, ...o });
  }

  /** The cell would not stop after an interrupt: kill the sandbox. */
  private failPending(p: Pending): void {
    if (this.pending !== p) return;
    const abandoned = p.interrupted === 'abandoned';
    this.finish(p, {
      returnCode: -1,
      limit: abandoned ? null : 'wall_clock',
      notes: [
        abandoned
          ? 'runner: the client disconnected and the code did not stop when interrupted; the interpreter was restarted and its state was lost'
          : `runner: execution timed out after ${fmtSeconds(p.req.timeoutMs, false)}s (wall-clock limit) and did not stop when interrupted; the interpreter was restarted and its state was lost`,
      ],
      stateLost: true,
      droppedByDriver: { stdout: 0, stderr: 0 },
    });
    void this.kill();
  }

  private protocolError(message: string): void {
    this.refused = true;
    this.channel?.output.pause(); // until the kill ends it: nothing more of it is read
    const p = this.pending;
    if (p) {
      this.finish(p, {
        returnCode: -1,
        limit: null,
        notes: [`runner: ${message}; the interpreter was restarted and its state was lost`],
        stateLost: true,
        droppedByDriver: { stdout: 0, stderr: 0 },
      });
    }
    void this.kill();
  }

  private onExit(info: ExitInfo): void {
    this.dead = true;
    this.exitInfo = info;
    const p = this.pending;
    if (!p) return;
    // Let the last frames already in the pipe arrive before reporting.
    const out = this.channel?.output;
    const report = () => {
      const { limit, text } = this.describeDeath(info);
      this.finish(p, { returnCode: -1, limit, notes: [text], stateLost: true, droppedByDriver: { stdout: 0, stderr: 0 } });
      this.proc?.destroyStreams();
    };
    if (out && !out.readableEnded) {
      const t = setTimeout(report, 200);
      out.once('end', () => {
        clearTimeout(t);
        report();
      });
    } else report();
  }

  private describeDeath(info: ExitInfo): { limit: LimitKind | null; text: string } {
    const lost = 'the interpreter was restarted and its state was lost';
    const sig = info.exitCode > 128 ? info.exitCode - 128 : 0;
    if (this.opts.wasOomKilled?.()) return { limit: 'memory', text: `runner: killed: ${this.opts.describeLimit('memory')}; ${lost}` };
    if (sig === 24) return { limit: 'cpu', text: `runner: killed: ${this.opts.describeLimit('cpu')}; ${lost}` };
    if (sig === 25) return { limit: 'file_size', text: `runner: killed: ${this.opts.describeLimit('file_size')}; ${lost}` };
    if (sig > 0) return { limit: null, text: `runner: process exited unexpectedly (signal ${sig}${signalName(sig)}); ${lost}` };
    return { limit: null, text: `runner: process exited unexpectedly (status ${info.exitCode}); ${lost}` };
  }

  async kill(): Promise<void> {
    this.dead = true;
    await this.proc?.kill();
  }
}

/** A JSON object from a frame; null if it is larger than `maxBytes`, too complex to parse
 * cheaply (json-bounds.ts), not JSON or not an object. */
function parseJson(body: Buffer, maxBytes: number): Record<string, unknown> | null {
  if (body.length > maxBytes || jsonTooComplex(body)) return null;
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** A byte count from a frame: a non-negative safe integer, else 0. */
function num(v: unknown): number {
  return Number.isSafeInteger(v) && (v as number) >= 0 ? (v as number) : 0;
}

export function fmtSeconds(ms: number, withUnit = true): string {
  const s = Number.isInteger(ms / 1000) ? String(ms / 1000) : (ms / 1000).toFixed(1);
  return withUnit ? `${s} seconds` : s;
}

const SIGNAL_NAMES: Record<number, string> = { 9: 'SIGKILL', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 11: 'SIGSEGV', 15: 'SIGTERM', 25: 'SIGXFSZ', 31: 'SIGSYS' };
function signalName(n: number): string {
  const name = SIGNAL_NAMES[n];
  return name ? `, ${name}` : '';
}
