/**
 * The server's memory budget for large transient work done on behalf of a client or a
 * session: a text-editor operation on a big file, a file listing, a tool router's reply,
 * a large request body (until its call is answered, queued or not: http/hold.ts), a large
 * answer (until it is sent).
 * Each such operation reserves what it may hold (an upper bound, not a guess) before it
 * reads anything, and releases it when done. The sum of reservations never exceeds
 * SANDBOX_SERVER_MEMORY_BUDGET_MB: past it the call is refused with a 503 and a
 * Retry-After, so many sessions doing big things at once slow down instead of running
 * the process out of heap.
 *
 * What is not reserved here is bounded per session by other settings (output caps, frame
 * sizes, queue lengths) and so in total by SANDBOX_MAX_SESSIONS.
 */
import { SandboxError } from './errors.js';

export interface Reservation {
  readonly bytes: number;
  /** Shrinks the reservation to `bytes` once the real need is known (never grows it). */
  shrink(bytes: number): void;
  /** Grows the reservation to `bytes` as the need grows; throws as reserve() does. */
  grow(bytes: number): void;
  /** Idempotent. */
  release(): void;
}

export class MemoryBudget {
  private used = 0;

  constructor(readonly totalBytes: number) {}

  get usedBytes(): number {
    return this.used;
  }

  /** Reserves `bytes` or throws SBX_SERVER_BUSY (503). `what` names the operation in the answer. */
  reserve(bytes: number, what: string): Reservation {
    const n = Math.max(0, Math.ceil(bytes));
    this.check(n, what);
    this.used += n;
    let held = n;
    let released = false;
    return {
      get bytes() {
        return held;
      },
      grow: (bytes: number) => {
        const to = Math.ceil(bytes);
        if (released || to <= held) return;
        this.check(to - held, what);
        this.used += to - held;
        held = to;
      },
      shrink: (bytes: number) => {
        const to = Math.max(0, Math.ceil(bytes));
        if (released || to >= held) return;
        this.used -= held - to;
        held = to;
      },
      release: () => {
        if (released) return;
        released = true;
        this.used -= held;
      },
    };
  }

  private check(n: number, what: string): void {
    if (n > this.totalBytes) {
      throw new SandboxError('SBX_FILE_TOO_LARGE', `${what} would need ${n} bytes of server memory, more than the whole budget (SANDBOX_SERVER_MEMORY_BUDGET_MB)`);
    }
    if (this.used + n > this.totalBytes) {
      throw new SandboxError('SBX_SERVER_BUSY', `the server is busy with other large operations; ${what} was not started; retry shortly`, { headers: { 'retry-after': '1' } });
    }
  }
}
