/**
 * Frame codec for the interpreter control channel (the driver's side is
 * sandbox-python/driver.py). Pure: no I/O, unit-tested with split and joined chunks.
 *
 * Wire format: u32 big-endian body length | u8 kind | body bytes.
 * Invariants: a frame whose declared length exceeds maxFrameBytes is a protocol error
 * reported before any of its body is buffered, so a hostile child can never make the
 * decoder hold more than maxFrameBytes + one chunk.
 *
 * Copies: the decoder walks each chunk with an offset. A frame that lies whole in one
 * chunk is handed out as a view of it (no copy); only the frame a chunk ends inside is
 * copied, into one pending buffer that grows by doubling up to that frame's size (never
 * a list of chunks: a frame trickled in a million reads is one buffer, not a million
 * objects). So each byte is copied fewer than three times (once in, and fewer than twice
 * more over all the doublings of its buffer), whatever the chunking: `copiedBytes`
 * counts them, and the unit tests hold it under three times the input. Bodies handed out stay valid: the pending
 * buffer of a finished frame is never written again.
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
  /** The unfinished frame: its first `pendingFill` bytes (header first), or null. */
  private pending: Buffer | null = null;
  private pendingFill = 0;
  private copied = 0;

  constructor(private readonly maxFrameBytes: number) {}

  /** Feed bytes; returns every frame completed by them, in order. Throws FrameProtocolError. */
  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    let pos = 0;
    if (this.pendingFill > 0) {
      pos = this.fillPending(chunk, frames);
      if (this.pendingFill > 0) return frames; // the chunk ended inside it
    }
    // Whole frames straight from the chunk: views, no copies.
    while (chunk.length - pos >= HEADER_BYTES) {
      const length = this.checkedLength(chunk.readUInt32BE(pos));
      const end = pos + HEADER_BYTES + length;
      if (end > chunk.length) break;
      frames.push({ kind: String.fromCharCode(chunk[pos + 4] ?? 0), body: chunk.subarray(pos + HEADER_BYTES, end) });
      pos = end;
    }
    // The frame the chunk ends inside starts the pending buffer.
    if (pos < chunk.length) this.fillPending(chunk.subarray(pos), frames);
    return frames;
  }

  /** Bytes of an unfinished frame still held. */
  get pendingBytes(): number {
    return this.pendingFill;
  }

  /** Bytes copied so far (into the pending buffer and as it grew). */
  get copiedBytes(): number {
    return this.copied;
  }

  private checkedLength(length: number): number {
    if (length > this.maxFrameBytes) throw new FrameProtocolError(`frame of ${length} bytes exceeds the ${this.maxFrameBytes}-byte limit`);
    return length;
  }

  /** Moves bytes from the front of `chunk` into the pending frame, as many as it still
   * needs; a frame so finished goes to `frames`. Returns the bytes taken. */
  private fillPending(chunk: Buffer, frames: Frame[]): number {
    let pos = 0;
    if (this.pendingFill < HEADER_BYTES) {
      // (its size is not known yet: a buffer of the first size, which small frames fit)
      pos = this.append(chunk, 0, Math.min(chunk.length, HEADER_BYTES - this.pendingFill), INITIAL_PENDING_BYTES);
      if (this.pendingFill < HEADER_BYTES) return pos;
    }
    const whole = HEADER_BYTES + this.checkedLength(this.pending!.readUInt32BE(0));
    pos += this.append(chunk, pos, Math.min(chunk.length - pos, whole - this.pendingFill), whole);
    if (this.pendingFill === whole) {
      const done = this.pending!;
      frames.push({ kind: String.fromCharCode(done[4] ?? 0), body: done.subarray(HEADER_BYTES, whole) });
      // Its body is out there as a view: the next frame gets a buffer of its own.
      this.pending = null;
      this.pendingFill = 0;
    }
    return pos;
  }

  /** Copies chunk[from, from + n) after the pending bytes, growing the buffer by doubling
   * from INITIAL_PENDING_BYTES up to `whole` (the frame's size, once its header is in). */
  private append(chunk: Buffer, from: number, n: number, whole: number): number {
    const need = this.pendingFill + n;
    if (!this.pending || this.pending.length < need) {
      const grown = Buffer.allocUnsafe(Math.min(Math.max(whole, need), Math.max(need, INITIAL_PENDING_BYTES, (this.pending?.length ?? 0) * 2)));
      if (this.pending) this.copied += this.pending.copy(grown, 0, 0, this.pendingFill);
      this.pending = grown;
    }
    this.copied += chunk.copy(this.pending, this.pendingFill, from, from + n);
    this.pendingFill = need;
    return n;
  }
}

/** First size of a pending buffer (a header, or a small frame, fits). */
const INITIAL_PENDING_BYTES = 256;
