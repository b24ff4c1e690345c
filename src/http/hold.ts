/**
 * Memory that HTTP bodies and answers hold, charged to the budget (budget.ts).
 *
 * A JSON request body is held whole while it arrives, and its parsed value until the
 * response ends: a call waits in its session's queue with its input in memory, and the
 * route keeps the request (and its body) until it answers. So:
 *  - while it arrives, `meterBody` charges what has really arrived (not what the headers
 *    announce), so a client that sends headers and one byte holds one byte; past
 *    SMALL_BYTES each chunk grows the reservation (raw bytes, text and parsed values:
 *    BODY_FACTOR times), and a body that would overrun the budget is refused with 503;
 *  - once it is scanned, before it is parsed, `holdParsed` sets the charge to what the
 *    parsed value may hold (parsedBodyBytes, from its size and its structural tokens) and
 *    keeps it until the response ends: a waiting call holds its share of the budget, so
 *    sessions x queue depth x body size cannot outgrow it; past it the body is refused
 *    with 503 (SBX_SERVER_BUSY, Retry-After). A parsed value of at most SMALL_BYTES is not
 *    charged (the common case: no reservation on the exec path).
 * `trackBody` ties each JSON request to its response first (the preParsing hook).
 *
 * `releaseWithResponse` ties a reservation to a response: released once it is sent, fails
 * or its connection closes, including when that happened before the reservation was made
 * (a client that left while its call ran, or while its call waited in the queue).
 */
import { finished, Transform, type Readable } from 'node:stream';
import type { ServerResponse } from 'node:http';
import type { MemoryBudget, Reservation } from '../budget.js';

/** Bodies and answers up to this size are not charged (bounded by connections x this). */
export const SMALL_BYTES = 64 * 1024;
/** A body's raw bytes, its text and its parsed values, while it arrives. */
const BODY_FACTOR = 3;
/** Heap of a parsed JSON value: strings take at most two bytes per byte of text (UTF-16),
 * and each structural token at most this much (an object with a key of its own, the worst
 * shape measured, takes about 80 bytes per token on V8). */
const PARSED_BYTES_PER_TOKEN = 96;

/** What the parsed value of a JSON text of `bytes` bytes and `tokens` structural tokens
 * (json-bounds.ts) may hold, at most. */
export function parsedBodyBytes(bytes: number, tokens: number): number {
  return 2 * bytes + PARSED_BYTES_PER_TOKEN * tokens;
}

interface BodyCharge {
  res: ServerResponse;
  held: Reservation | null;
}

const bodies = new WeakMap<object, BodyCharge>();

export function releaseWithResponse(res: ServerResponse, held: Pick<Reservation, 'release'>): void {
  if (res.destroyed || res.writableFinished || res.socket?.destroyed) {
    held.release();
    return;
  }
  finished(res, () => held.release());
}

/** A JSON body of request `key` is coming: what it will be charged is released with `res`. */
export function trackBody(key: object, res: ServerResponse): void {
  bodies.set(key, { res, held: null });
}

/** A pass-through of `payload` that charges what arrives; `key` identifies the request
 * (trackBody first). */
export function meterBody(key: object, payload: Readable, budget: MemoryBudget): Readable {
  let received = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      received += chunk.length;
      (meter as unknown as { receivedEncodedLength: number }).receivedEncodedLength = received;
      if (received > SMALL_BYTES) {
        try {
          charge(key, received * BODY_FACTOR, budget);
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

/** The body is about to be parsed: from now on it holds `bytes` (parsedBodyBytes) until
 * its response ends. Throws SBX_SERVER_BUSY past the budget. */
export function holdParsed(key: object, bytes: number, budget: MemoryBudget): void {
  const body = bodies.get(key);
  if (!body) return; // not tracked: not a JSON body of this app (its hook tracks every one)
  if (bytes > SMALL_BYTES) return charge(key, bytes, budget);
  body.held?.release();
  body.held = null;
}

/** Sets the charge of a tracked body to `bytes` (grows or shrinks it; the first charge is
 * released with the response). */
function charge(key: object, bytes: number, budget: MemoryBudget): void {
  const body = bodies.get(key);
  if (!body) return;
  const held = body.held;
  if (!held) {
    body.held = budget.reserve(bytes, 'a large request body');
    releaseWithResponse(body.res, body.held);
  } else if (bytes > held.bytes) held.grow(bytes);
  else held.shrink(bytes);
}
