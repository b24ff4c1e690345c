/**
 * Frame codec for the interpreter control channel (the driver's side is
 * sandbox-python/driver.py). Pure: no I/O, unit-tested with split and joined chunks.
 *
 * Wire format: u32 big-endian body length | u8 kind | body bytes.
 * Invariants: a frame whose declared length exceeds maxFrameBytes is a protocol error
 * reported before any of its body is buffered, so a hostile child can never make the
 * decoder hold more than maxFrameBytes + one chunk.
 */

export const HEADER_BYTES = 5;

/**
 * The u8 kind of every frame, by name. The driver's table (FrameKind in
 * sandbox-python/driver.py) is the same one: test/unit/frame-kinds.test.ts reads it from
 * the driver's source and checks that the two agree. Bodies are JSON objects unless said
 * otherwise; the driver's TypedDicts name their fields.
 */
export const FrameKind = {
  /** server -> driver: run a cell. JSON {id, code, max_output_bytes}. */
  Exec: 'E',
  /** server -> driver: raise KeyboardInterrupt in the running cell. JSON {id}. */
  Interrupt: 'I',
  /** server -> driver: a tool call's answer. JSON {call_id, ok, content | error}. */
  ToolReply: 'U',
  /** driver -> server: ready, its pre-imports done. JSON {}: its arrival is the message. */
  Hello: 'H',
  /** driver -> server: raw stdout bytes of the running cell. */
  Stdout: 'O',
  /** driver -> server: raw stderr bytes of the running cell. */
  Stderr: 'R',
  /** driver -> server: a programmatic tool call. JSON {call_id, name, input}, call_id first. */
  ToolCall: 'T',
  /** driver -> server: the cell ended. JSON {id, return_code, limit, stdout_dropped, stderr_dropped, note}. */
  Done: 'D',
  /** template child (zygote.py) -> server, instead of a hello: its sandbox could not be built. JSON {error}. */
  SetupFailed: 'X',
} as const;

export type FrameKindCode = (typeof FrameKind)[keyof typeof FrameKind];

export interface Frame {
  kind: string;
  body: Buffer;
}

export function encodeFrame(kind: string, body: Buffer | string | object): Buffer {
  const payload = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
  const head = Buffer.allocUnsafe(HEADER_BYTES);
  head.writeUInt32BE(payload.length, 0);
  head.writeUInt8(kind.charCodeAt(0), 4);
  return Buffer.concat([head, payload]);
}

export class FrameProtocolError extends Error {}

export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxFrameBytes: number) {}

  /** Feed bytes; returns every frame completed by them, in order. Throws FrameProtocolError. */
  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < HEADER_BYTES) break;
      const head = this.peek(HEADER_BYTES);
      const length = head.readUInt32BE(0);
      if (length > this.maxFrameBytes) {
        throw new FrameProtocolError(`frame of ${length} bytes exceeds the ${this.maxFrameBytes}-byte limit`);
      }
      if (this.buffered < HEADER_BYTES + length) break;
      const whole = this.take(HEADER_BYTES + length);
      frames.push({ kind: String.fromCharCode(whole[4] ?? 0), body: whole.subarray(HEADER_BYTES) });
    }
    return frames;
  }

  /** Bytes of an unfinished frame still held. */
  get pendingBytes(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined.subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const joined = Buffer.concat(this.chunks);
      out = joined.subarray(0, n);
      this.chunks = joined.length > n ? [joined.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}
