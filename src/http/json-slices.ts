/**
 * JSON text of a large value in slices of bounded work, the event loop free between them.
 *
 * `JSON.stringify` of an answer that carries a few MiB of output runs as one turn of the
 * event loop: escape-heavy output (control bytes become six-character `\u00XX` escapes)
 * took ~100 ms per 12 MB answer, during which every other client of the server waited.
 * Here the value's long strings are set aside (a replacer puts a placeholder in their
 * place), the rest is serialised at once (it is small), and each long string is
 * serialised in slices of at most `sliceChars` characters, one slice per turn. The text
 * is the same, byte for byte, as `JSON.stringify(value)`: a slice never ends between the
 * two halves of a surrogate pair (each half alone would be escaped as `\udXXX`).
 *
 * The placeholder holds a random nonce, so no string of the value (session output) can
 * forge one.
 */
import { randomBytes } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Characters of a string serialised in one turn (at most ~6 times as many bytes out). */
export const SLICE_CHARS = 64 * 1024;

/** `JSON.stringify(value)` as UTF-8 bytes, yielding to the event loop between slices. */
export async function stringifySliced(value: unknown, sliceChars: number = SLICE_CHARS): Promise<Buffer> {
  const nonce = randomBytes(16).toString('hex');
  const long: string[] = [];
  const skeleton = JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v !== 'string' || v.length <= sliceChars) return v;
    long.push(v);
    return `${nonce}:${long.length - 1}`;
  });
  if (skeleton === undefined) throw new TypeError('value has no JSON text');
  if (long.length === 0) return Buffer.from(skeleton, 'utf8');
  const parts: Buffer[] = [];
  const slot = new RegExp(`"${nonce}:(\\d+)"`, 'g');
  let at = 0;
  for (let m = slot.exec(skeleton); m !== null; m = slot.exec(skeleton)) {
    parts.push(Buffer.from(skeleton.slice(at, m.index), 'utf8'));
    const s = long[Number(m[1])] ?? '';
    parts.push(Buffer.from('"', 'utf8'));
    for (let i = 0; i < s.length;) {
      let end = Math.min(i + sliceChars, s.length);
      const last = s.charCodeAt(end - 1);
      if (end < s.length && last >= 0xd800 && last <= 0xdbff) end = end - 1 > i ? end - 1 : end + 1;
      const piece = JSON.stringify(s.slice(i, end));
      parts.push(Buffer.from(piece.slice(1, -1), 'utf8'));
      i = end;
      await nextTurn();
    }
    parts.push(Buffer.from('"', 'utf8'));
    at = m.index + m[0].length;
  }
  parts.push(Buffer.from(skeleton.slice(at), 'utf8'));
  return Buffer.concat(parts);
}
