/**
 * How much work a JSON text is to parse, found before it is parsed. JSON.parse runs on the
 * event loop and its cost follows the text's shape, not only its size: 2 MiB of `[{},{},…]`
 * is 700,000 objects and a quarter of a second, and 19 times its size in heap. Every JSON
 * text from outside (request bodies, the interpreter's control frames, a tool router's
 * replies) is first scanned here: one pass over the bytes, no allocation, that counts the
 * structural tokens (`{ [ , :`) outside strings and stops at the limit.
 */

/** Structural tokens a JSON text from outside may hold at most by default. */
export const MAX_JSON_TOKENS = 50_000;

/** True if `text` has more than `limit` structural tokens outside strings. A text that is
 * not valid JSON is judged the same way (JSON.parse rejects it afterwards). */
export function jsonTooComplex(text: Uint8Array, limit = MAX_JSON_TOKENS): boolean {
  return jsonTokens(text, limit) > limit;
}

/** The structural tokens of `text` outside strings, counted up to `limit + 1` (where the
 * scan stops). */
export function jsonTokens(text: Uint8Array, limit = MAX_JSON_TOKENS): number {
  let tokens = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: the next byte is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x7b || c === 0x5b || c === 0x2c || c === 0x3a) {
      if (++tokens > limit) return tokens;
    }
  }
  return tokens;
}
