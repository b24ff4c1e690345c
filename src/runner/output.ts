/**
 * Capped output collection. The server never holds more than `capBytes` of a stream,
 * whatever the program writes: bytes past the cap are counted, not kept.
 */
export class CappedBuffer {
  private chunks: Buffer[] = [];
  private kept = 0;
  dropped = 0;

  constructor(private readonly capBytes: number) {}

  push(chunk: Buffer): void {
    const room = this.capBytes - this.kept;
    if (room <= 0) {
      this.dropped += chunk.length;
      return;
    }
    const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
    // Copy a slice of a larger buffer so the rest of it can be collected.
    this.chunks.push(part.length === chunk.length ? chunk : Buffer.from(part));
    this.kept += part.length;
    this.dropped += chunk.length - part.length;
  }

  get size(): number {
    return this.kept;
  }

  text(): string {
    return Buffer.concat(this.chunks, this.kept).toString('utf8');
  }
}
