/**
 * Capped output collection, shaped for a model: the server never holds more than about
 * 1.5 x `capBytes` of a stream, whatever the program writes. While a stream fits the cap
 * it is kept whole; past it, the result keeps its head (the first half of the cap) and its
 * tail (the last half), and the bytes between are counted, not kept (`dropped`).
 *
 * Kept bytes are copied into one buffer that grows by doubling up to the cap, so a million
 * one-byte chunks cost no more than one chunk of a million bytes, and no chunk keeps alive
 * the larger read buffer it was a view of. The tail is a ring of capBytes/2, made at the
 * first byte past the cap.
 *
 * A stream may have a spill sink (files/spill.ts): at the first byte past the cap, the sink
 * is given everything kept so far, then every later chunk, so it can save the complete
 * output (up to its own cap) to a file. A stream that fits its cap never touches the sink.
 */
const INITIAL_BYTES = 256;

/** Where the complete output of a stream that overflowed its cap goes. */
export interface OutputSink {
  write(chunk: Buffer): void;
}

export class CappedBuffer {
  private buf: Buffer | null = null;
  private kept = 0;
  /** Ring of the last tailCap bytes, once the stream overflowed. */
  private ring: Buffer | null = null;
  private ringEnd = 0;
  private ringFull = false;
  private readonly tailCap: number;
  /** Bytes seen past the cap that are not in the tail ring. */
  dropped = 0;
  /** Bytes pushed in all. */
  total = 0;

  constructor(
    private readonly capBytes: number,
    private readonly sink?: OutputSink,
  ) {
    this.tailCap = Math.floor(capBytes / 2);
  }

  /** Keeps `chunk` (head, then tail once past the cap); returns how many of its first
   * bytes went to the head, which is all a stream listener is given (the cap applies to
   * streamed output as to the answer). */
  push(chunk: Buffer): number {
    if (chunk.length === 0) return 0;
    this.total += chunk.length;
    const room = this.ring ? 0 : this.capBytes - this.kept;
    let head = 0;
    if (room > 0) {
      const n = Math.min(room, chunk.length);
      const need = this.kept + n;
      if (!this.buf || this.buf.length < need) {
        const grown = Buffer.allocUnsafe(Math.min(this.capBytes, Math.max(need, INITIAL_BYTES, (this.buf?.length ?? 0) * 2)));
        this.buf?.copy(grown, 0, 0, this.kept);
        this.buf = grown;
      }
      chunk.copy(this.buf, this.kept, 0, n);
      this.kept = need;
      if (n === chunk.length) return n;
      head = n;
      chunk = chunk.subarray(n);
    }
    // Past the cap.
    if (!this.ring) {
      this.ring = Buffer.allocUnsafe(this.tailCap);
      // The kept bytes past the head become the start of the tail: the head is kept.length/2.
      if (this.buf) this.sink?.write(this.buf.subarray(0, this.kept));
      const headBytes = this.capBytes - this.tailCap;
      const overflow = this.kept - headBytes;
      this.kept = headBytes;
      if (this.buf && overflow > 0) this.toRing(this.buf.subarray(headBytes, headBytes + overflow));
    }
    this.sink?.write(chunk);
    this.toRing(chunk);
    return head;
  }

  /** Appends to the tail ring; what falls out of it is dropped (counted). */
  private toRing(data: Buffer): void {
    const ring = this.ring!;
    const cap = ring.length;
    if (cap === 0) {
      this.dropped += data.length;
      return;
    }
    if (data.length >= cap) {
      this.dropped += this.tailHeld + data.length - cap;
      data.copy(ring, 0, data.length - cap);
      this.ringEnd = 0;
      this.ringFull = true;
      return;
    }
    const evicted = Math.max(0, this.tailHeld + data.length - cap);
    this.dropped += evicted;
    const first = Math.min(data.length, cap - this.ringEnd);
    data.copy(ring, this.ringEnd, 0, first);
    if (first < data.length) data.copy(ring, 0, first);
    const end = this.ringEnd + data.length;
    if (end >= cap) this.ringFull = true;
    this.ringEnd = end % cap;
  }

  private get tailHeld(): number {
    if (!this.ring) return 0;
    return this.ringFull ? this.ring.length : this.ringEnd;
  }

  /** Bytes in the result (head and tail). */
  get size(): number {
    return this.kept + this.tailHeld;
  }

  /** True once the stream went past its cap (head and tail are then apart). */
  get overflowed(): boolean {
    return this.ring !== null;
  }

  /** Bytes of memory held (for tests of the bound). */
  get heldBytes(): number {
    return (this.buf?.length ?? 0) + (this.ring?.length ?? 0);
  }

  /** The whole stream when it fit, else its head. */
  head(): string {
    if (!this.buf) return '';
    // A head cut inside a UTF-8 character ends before that character.
    return this.buf.toString('utf8', 0, this.ring ? utf8Boundary(this.buf, this.kept) : this.kept);
  }

  /** The tail of a stream that overflowed ('' otherwise). */
  tail(): string {
    if (!this.ring) return '';
    const ring = this.ring;
    const bytes = this.ringFull ? Buffer.concat([ring.subarray(this.ringEnd), ring.subarray(0, this.ringEnd)]) : ring.subarray(0, this.ringEnd);
    // A tail that starts inside a UTF-8 character starts after it.
    let start = 0;
    while (start < bytes.length && start < 3 && (bytes[start]! & 0xc0) === 0x80) start++;
    return bytes.toString('utf8', start);
  }

  /** Head and tail with nothing between (for limit detection in a program's stderr). */
  text(): string {
    return this.head() + this.tail();
  }
}

/** The largest n' <= n such that buf[0, n') does not end inside a UTF-8 character. */
function utf8Boundary(buf: Buffer, n: number): number {
  let i = n;
  // Step back over continuation bytes to the lead byte of the last character.
  while (i > 0 && n - i < 4 && (buf[i - 1]! & 0xc0) === 0x80) i--;
  if (i === 0) return n;
  const lead = buf[i - 1]!;
  const len = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return n - (i - 1) >= len ? n : i - 1;
}
