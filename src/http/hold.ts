/**
 * Memory that HTTP bodies and answers hold, charged to the budget (budget.ts).
 *
 * A request body is held whole while it arrives and is parsed. `meterBody` charges what
 * has really arrived (not what the headers announce), so a client that sends headers and
 * one byte holds one byte; past SMALL_BYTES each chunk grows the reservation, and a body
 * that would overrun the budget is refused with 503. The charge ends when the body has
 * been parsed (releaseBody, from a preHandler hook) or the response ends.
 *
 * `releaseWithResponse` ties a reservation to a response: released once it is sent, fails
 * or its connection closes, including when that happened before the reservation was made
 * (a client that left while its call ran).
 */
import { finished, Transform, type Readable } from 'node:stream';
import type { ServerResponse } from 'node:http';
import type { MemoryBudget, Reservation } from '../budget.js';

/** Bodies and answers up to this size are not charged (bounded by connections x this). */
export const SMALL_BYTES = 64 * 1024;
/** A body's raw bytes, its text and its parsed values. */
const BODY_FACTOR = 3;

const bodies = new WeakMap<object, Reservation>();

export function releaseWithResponse(res: ServerResponse, held: Pick<Reservation, 'release'>): void {
  if (res.destroyed || res.writableFinished || res.socket?.destroyed) {
    held.release();
    return;
  }
  finished(res, () => held.release());
}

/** A pass-through of `payload` that charges what arrives; `key` identifies the request. */
export function meterBody(key: object, payload: Readable, budget: MemoryBudget, res: ServerResponse): Readable {
  let received = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      received += chunk.length;
      (meter as unknown as { receivedEncodedLength: number }).receivedEncodedLength = received;
      if (received > SMALL_BYTES) {
        try {
          const held = bodies.get(key);
          if (held) held.grow(received * BODY_FACTOR);
          else {
            const r = budget.reserve(received * BODY_FACTOR, 'a large request body');
            bodies.set(key, r);
            releaseWithResponse(res, r);
          }
        } catch (e) {
          callback(e as Error);
          return;
        }
      }
      callback(null, chunk);
    },
  });
  payload.on('error', (e) => meter.destroy(e));
  return payload.pipe(meter);
}

/** The body has been parsed: its raw bytes are gone, and what the parsed values hold is
 * bounded per session by the queue and the code-size settings. */
export function releaseBody(key: object): void {
  bodies.get(key)?.release();
  bodies.delete(key);
}
