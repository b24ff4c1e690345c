/**
 * Random identifiers (session ids, tool_use ids) from the system CSPRNG, drawn from a
 * 4 KiB buffer refilled when spent: one getrandom() per few hundred ids instead of one
 * per id, on the exec hot path.
 */
import { randomFillSync } from 'node:crypto';

const pool = Buffer.alloc(4096);
let offset = pool.length;

export function randomHex(bytes: number): string {
  if (bytes > pool.length) throw new RangeError('too many bytes');
  if (offset + bytes > pool.length) {
    randomFillSync(pool);
    offset = 0;
  }
  const hex = pool.toString('hex', offset, offset + bytes);
  pool.fill(0, offset, offset + bytes); // a used id never stays in memory twice
  offset += bytes;
  return hex;
}
