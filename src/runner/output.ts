/**
 * Capped output collection. The server never holds more than `capBytes` of a stream,
 * whatever the program writes: bytes past the cap are counted, not kept.
 *
 * Kept bytes are copied into one buffer that grows by doubling up to the cap, so the
 * memory held is at most twice what was kept (and never more than the cap plus a small
 * start), however the output arrived: a million one-byte chunks cost no more than one
 * chunk of a million bytes, and no chunk keeps alive the larger read buffer it was a
 * view of.
 */
const INITIAL_BYTES = 256;

export class CappedBuffer {
  private buf: Buffer | null = null;
  private kept = 0;
  dropped = 0;

  constructor(private readonly capBytes: number) {}

  /** Keeps what fits of `chunk`; returns how many of its first bytes were kept. */
  push(chunk: Buffer): number {
    const room = this.capBytes - this.kept;
    if (room <= 0 || chunk.length === 0) {
      this.dropped += chunk.length;
      return 0;
    }
    const n = Math.min(room, chunk.length);
    const need = this.kept + n;
    if (!this.buf || this.buf.length < need) {
      const grown = Buffer.allocUnsafe(Math.min(this.capBytes, Math.max(need, INITIAL_BYTES, (this.buf?.length ?? 0) * 2)));
      this.buf?.copy(grown, 0, 0, this.kept);
      this.buf = grown;
    }
    chunk.copy(this.buf, this.kept, 0, n);
    this.kept = need;
    this.dropped += chunk.length - n;
    return n;
  }

  get size(): number {
    return this.kept;
  }

  /** Bytes of memory held (for tests of the bound). */
  get heldBytes(): number {
    return this.buf?.length ?? 0;
  }

  text(): string {
    return this.buf ? this.buf.toString('utf8', 0, this.kept) : '';
  }
}
