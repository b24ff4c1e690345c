/**
 * Ties a memory reservation (budget.ts) to an HTTP response: it is released once the
 * response is sent, fails or its connection closes, including when that already happened
 * before the reservation was made (a client that left while its call ran).
 */
import { finished } from 'node:stream';
import type { ServerResponse } from 'node:http';
import type { Reservation } from '../budget.js';

export function releaseWithResponse(res: ServerResponse, held: Pick<Reservation, 'release'>): void {
  if (res.destroyed || res.writableFinished || res.socket?.destroyed) {
    held.release();
    return;
  }
  finished(res, () => held.release());
}
