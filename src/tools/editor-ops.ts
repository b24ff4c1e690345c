/**
 * The text editor's algorithms (view, str_replace, insert), pure functions over the bytes
 * of a file. No I/O, no state: text-editor.ts runs them inline for small files and in a
 * worker thread (editor-worker.ts) for large ones, so the same code gives the same answer
 * either way.
 *
 * Contracts:
 * - Linear time. Every function makes a bounded number of passes over the file and the
 *   inputs: line numbers come from one running count of newlines, never from re-scanning
 *   the text before each match; no array of lines is ever built (a 16 MiB file of `\r`
 *   is 16 Mi lines).
 * - Bytes in, bytes out. Newlines are normalised (`\r\n` and `\r` become `\n`, Python's
 *   universal newlines) on the bytes: CR and LF never occur inside a multi-byte UTF-8
 *   sequence, so this equals normalising the decoded text. str_replace and insert require
 *   valid UTF-8 and search with the UTF-8 bytes of old_str, which matches exactly where
 *   the decoded text would (UTF-8 is self-synchronising). The file is decoded only where
 *   text is shown.
 * - Bounded answers. Text that leaves here (view's stdout, the `lines` of a diff) holds at
 *   most `maxOutputBytes` bytes of file text; the rest is counted, not kept, and replaced
 *   by the tools' truncation marker. An error message lists at most MAX_LISTED_LINES line
 *   numbers.
 * - Buffers handed back (`written`, `original`) own their whole ArrayBuffer, so they can be
 *   transferred between threads without copying.
 */
import { Buffer, isUtf8 } from 'node:buffer';
import { truncationMarker } from './result.js';

export type EditorErrorCode = 'file_not_found' | 'invalid_tool_input' | 'string_not_found' | 'unavailable' | 'execution_time_exceeded';

interface OpBase {
  /** The file's bytes as read from the disk. */
  bytes: Uint8Array;
  /** The path as the caller wrote it, for messages. */
  display: string;
  maxOutputBytes: number;
}

export interface ViewOp extends OpBase {
  op: 'view';
  viewRange?: number[] | null;
}

export interface StrReplaceOp extends OpBase {
  op: 'str_replace';
  oldStr: string;
  newStr: string;
}

export interface InsertOp extends OpBase {
  op: 'insert';
  newStr: string;
  insertLine: number;
}

export type EditorOp = ViewOp | StrReplaceOp | InsertOp;

export type OpOutcome =
  | { ok: false; message: string; errorCode: EditorErrorCode }
  | {
      ok: true;
      /** Already capped, with the truncation marker when bytes were dropped. */
      stdout: string;
      stdoutDroppedBytes: number;
      details: Record<string, unknown>;
      /** Bytes of file text left out of a detail (the diff's `lines`). */
      detailDroppedBytes: number;
      /** The new content of the file (edits), or null (view). */
      written: Uint8Array | null;
      /** The file as it was (edits, for the undo history), or null (view). */
      original: Uint8Array | null;
    };

/** Line numbers listed at most in a "matched N times" message. */
export const MAX_LISTED_LINES = 20;
const DIFF_CONTEXT_LINES = 3;
const LF = 10;
const CR = 13;

const fail = (message: string, errorCode: EditorErrorCode = 'invalid_tool_input'): OpOutcome => ({ ok: false, message, errorCode });

export function runEditorOp(op: EditorOp): OpOutcome {
  switch (op.op) {
    case 'view':
      return view(op);
    case 'str_replace':
      return strReplace(op);
    case 'insert':
      return insert(op);
    default: {
      const never: never = op;
      return fail(`unknown command: ${String((never as { op: unknown }).op)}`);
    }
  }
}

/** A Buffer over the same memory (no copy). */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** A zero-filled buffer that owns its ArrayBuffer (never a slice of Node's shared pool). */
function ownBuffer(size: number): Buffer {
  return Buffer.from(new ArrayBuffer(size));
}

/** Universal newlines on bytes; returns the input itself when it has no CR. */
export function normaliseNewlineBytes(src: Buffer): Buffer {
  let i = src.indexOf(CR);
  if (i < 0) return src;
  const out = ownBuffer(src.length);
  src.copy(out, 0, 0, i);
  let o = i;
  const n = src.length;
  for (; i < n; i++) {
    const b = src[i]!;
    if (b === CR) {
      out[o++] = LF;
      if (i + 1 < n && src[i + 1] === LF) i++;
    } else {
      out[o++] = b;
    }
  }
  return out.subarray(0, o);
}

/** Universal newlines on a string (the request's old_str / new_str). */
export function normaliseNewlines(text: string): string {
  return text.includes('\r') ? text.replace(/\r\n?/g, '\n') : text;
}

/** Newlines in buf[start, end). One tight pass; no per-line calls. */
export function countNewlines(buf: Uint8Array, start = 0, end = buf.length): number {
  let c = 0;
  for (let i = start; i < end; i++) if (buf[i] === LF) c++;
  return c;
}

/** Lines as Python's splitlines counts them: every `\n` ends one; a last line without one counts too. */
function countLines(buf: Uint8Array): number {
  if (buf.length === 0) return 0;
  return countNewlines(buf) + (buf[buf.length - 1] === LF ? 0 : 1);
}

/** Offset where 0-based line `k` starts (just after the k-th newline), or buf.length. */
function lineStart(buf: Uint8Array, k: number): number {
  if (k <= 0) return 0;
  let seen = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] === LF && ++seen === k) return i + 1;
  }
  return buf.length;
}

/** Offset of the first `\n` at or after `from`, or buf.length. */
function lineEnd(buf: Buffer, from: number): number {
  const i = from >= buf.length ? -1 : buf.indexOf(LF, from);
  return i < 0 ? buf.length : i;
}

/** Offset just after the last `\n` before `pos`, or 0. */
function lineStartBefore(buf: Uint8Array, pos: number): number {
  for (let i = pos - 1; i >= 0; i--) if (buf[i] === LF) return i + 1;
  return 0;
}

/** Largest n <= max such that buf[start, start + n) ends on a UTF-8 character boundary. */
function utf8Boundary(buf: Uint8Array, start: number, max: number): number {
  let n = max;
  while (n > 0 && (buf[start + n]! & 0xc0) === 0x80) n--;
  return n;
}

/**
 * The text of buf[start, end) with at most `cap` UTF-8 bytes kept. Invalid sequences
 * become U+FFFD (as a lenient read does), and the cap counts the bytes of the text
 * shown, so it holds for a binary file too.
 */
export function cappedText(buf: Buffer, start: number, end: number, cap: number): { text: string; dropped: number } {
  const len = end - start;
  if (isUtf8(buf.subarray(start, end))) {
    if (len <= cap) return { text: buf.toString('utf8', start, end), dropped: 0 };
    const keep = utf8Boundary(buf, start, cap);
    return { text: buf.toString('utf8', start, start + keep), dropped: len - keep };
  }
  const text = buf.toString('utf8', start, end);
  const total = Buffer.byteLength(text, 'utf8');
  if (total <= cap) return { text, dropped: 0 };
  const { read, written } = new TextEncoder().encodeInto(text, new Uint8Array(cap));
  return { text: text.slice(0, read), dropped: total - written };
}

function withMarker(t: { text: string; dropped: number }): string {
  return t.dropped > 0 ? t.text + truncationMarker(t.dropped) : t.text;
}

function view(op: ViewOp): OpOutcome {
  const text = normaliseNewlineBytes(asBuffer(op.bytes));
  const total = countLines(text);
  const range = op.viewRange;
  if (!range || range.length === 0) {
    const shown = cappedText(text, 0, text.length, op.maxOutputBytes);
    return done(withMarker(shown), shown.dropped, { file_type: 'text', num_lines: total, start_line: 1, total_lines: total });
  }
  if (range.length !== 2 || !range.every((n) => Number.isInteger(n))) return fail('view_range must be two integers [start, end]');
  const [rawStart, rawEnd] = range as [number, number];
  const end = rawEnd === -1 ? total : Math.min(total, rawEnd);
  const start = Math.max(1, rawStart);
  if (rawEnd !== -1 && rawEnd < rawStart) return fail(`invalid view_range [${rawStart}, ${rawEnd}]: end is before start`);
  if (start > total && total > 0) return fail(`invalid view_range [${rawStart}, ${rawEnd}]: ${op.display} has ${total} lines`);
  // The lines Array.prototype.slice(start - 1, end) would give (a negative end counts from the last line).
  const from = Math.min(start - 1, total);
  const to = Math.min(total, end < 0 ? Math.max(0, total + end) : end);
  const count = Math.max(0, to - from);
  let shownText = '';
  let dropped = 0;
  if (count > 0) {
    const s = lineStart(text, from);
    // Shown lines are joined by `\n`: the last one's own newline is not part of the answer.
    let e = lineStart(text, to);
    if (e > s && text[e - 1] === LF) e--;
    const shown = cappedText(text, s, e, op.maxOutputBytes);
    shownText = withMarker(shown);
    dropped = shown.dropped;
  }
  return done(shownText, dropped, { file_type: 'text', num_lines: count, start_line: start, total_lines: total });
}

function done(
  stdout: string,
  stdoutDroppedBytes: number,
  details: Record<string, unknown>,
  edit?: { written: Uint8Array; original: Uint8Array },
  detailDroppedBytes = 0,
): OpOutcome {
  return { ok: true, stdout, stdoutDroppedBytes, details, detailDroppedBytes, written: edit?.written ?? null, original: edit?.original ?? null };
}

/** A string with a lone surrogate can never occur in decoded valid UTF-8. */
function isWellFormed(s: string): boolean {
  const f = (s as { isWellFormed?: () => boolean }).isWellFormed;
  if (f) return f.call(s);
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** Joins byte ranges into one buffer that owns its memory. */
function concatOwned(parts: Uint8Array[]): Buffer {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = ownBuffer(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function notUtf8(display: string): OpOutcome {
  return fail(`${display} is not valid UTF-8 text; edit it with bash instead`);
}

/** The file as it was, as a buffer owning its memory (the input is handed back as is when it does). */
function owned(u: Uint8Array): Uint8Array {
  return u.byteOffset === 0 && u.byteLength === u.buffer.byteLength ? u : concatOwned([u]);
}

/** Longest needle searched by the inline loop (a native indexOf call per match costs
 * ~100 ns, which a file dense with short matches would pay hundreds of thousands of times). */
const SHORT_NEEDLE_BYTES = 16;

/** Longest needle searched by the native indexOf. V8's Boyer-Moore builds its good-suffix
 * table over the last 250 bytes of a pattern only: for a longer one whose mismatch comes
 * early (`ab` then 19,998 `a`s in a file of `a`s) it shifts by about one byte per try, and
 * a 16 MiB file took 105 s of a worker thread (red team of 2026-12-03). Longer needles are
 * searched in linear time (Searcher). */
const NATIVE_NEEDLE_BYTES = 250;

/** Finds a needle in linear time whatever the input: the native indexOf for short needles,
 * Knuth-Morris-Pratt (O(text + needle)) for long ones. */
export class Searcher {
  private readonly table: Int32Array | null;

  constructor(private readonly needle: Uint8Array) {
    this.table = needle.length > NATIVE_NEEDLE_BYTES ? failureTable(needle) : null;
  }

  /** The offset of the first match at or after `from`, or -1. */
  indexOf(text: Buffer, from = 0): number {
    const p = this.needle;
    const table = this.table;
    if (table === null) return text.indexOf(p, from);
    const m = p.length;
    let k = 0;
    for (let i = from; i < text.length; i++) {
      const c = text[i];
      while (k > 0 && p[k] !== c) k = table[k - 1]!;
      if (p[k] === c && ++k === m) return i - m + 1;
    }
    return -1;
  }
}

/** KMP's failure function: for each prefix of `p`, the length of its longest proper border. */
function failureTable(p: Uint8Array): Int32Array {
  const t = new Int32Array(p.length);
  for (let i = 1, k = 0; i < p.length; i++) {
    while (k > 0 && p[i] !== p[k]) k = t[k - 1]!;
    if (p[i] === p[k]) k++;
    t[i] = k;
  }
  return t;
}

/** Calls onMatch with the offset of every non-overlapping match at or after `first` (a match). */
function forEachMatch(text: Buffer, needle: Buffer, first: number, onMatch: (i: number) => void, search: Searcher): void {
  const m = needle.length;
  if (m > SHORT_NEEDLE_BYTES) {
    // Matches are at least m > 16 bytes apart: few calls, each linear in what it passes.
    for (let i = first; i >= 0; i = search.indexOf(text, i + m)) onMatch(i);
    return;
  }
  // O(n * m) at worst, with m <= 16.
  const n0 = needle[0]!;
  const last = text.length - m;
  for (let i = first; i <= last;) {
    if (text[i] === n0) {
      let k = 1;
      while (k < m && text[i + k] === needle[k]) k++;
      if (k === m) {
        onMatch(i);
        i += m;
        continue;
      }
    }
    i++;
  }
}

function strReplace(op: StrReplaceOp): OpOutcome {
  const raw = asBuffer(op.bytes);
  if (!isUtf8(raw)) return notUtf8(op.display);
  const text = normaliseNewlineBytes(raw);
  const oldStr = normaliseNewlines(op.oldStr);
  const newStr = normaliseNewlines(op.newStr);
  if (!isWellFormed(oldStr)) return fail(`old_str not found in ${op.display}`, 'string_not_found');
  const needle = Buffer.from(oldStr, 'utf8');
  const search = new Searcher(needle);
  const first = search.indexOf(text);
  if (first < 0) return fail(`old_str not found in ${op.display}`, 'string_not_found');
  // Count every (non-overlapping) match; number the lines of the first few with one
  // running newline count.
  let count = 0;
  const lines: number[] = [];
  let line = 1;
  let counted = 0;
  forEachMatch(
    text,
    needle,
    first,
    (i) => {
      count++;
      if (lines.length < MAX_LISTED_LINES) {
        line += countNewlines(text, counted, i);
        counted = i;
        lines.push(line);
      }
    },
    search,
  );
  if (count > 1) {
    const listed = lines.join(', ') + (count > lines.length ? ', …' : '');
    return fail(`old_str matched ${count} times in ${op.display} (lines ${listed}); must be unique`);
  }
  const insertBytes = Buffer.from(newStr, 'utf8');
  const updated = concatOwned([text.subarray(0, first), insertBytes, text.subarray(first + needle.length)]);
  const hunk = diffHunk(text, updated, first, needle.length, insertBytes.length, op.maxOutputBytes);
  return done(`Edited ${op.display}\n`, 0, hunk.details, { written: updated, original: owned(op.bytes) }, hunk.dropped);
}

/**
 * The unified-diff hunk of one replacement with up to 3 lines of context (Anthropic's
 * fields), read around the match only. `before[index, index + oldLen)` became
 * `after[index, index + newLen)`. The `lines` hold at most `cap` bytes of text; past it a
 * line is cut, ends with the truncation marker (counting every byte left out), and the
 * lines after it are omitted.
 */
export function diffHunk(before: Buffer, after: Buffer, index: number, oldLen: number, newLen: number, cap: number): { details: Record<string, unknown>; dropped: number } {
  const firstLine = countNewlines(before, 0, index) + 1;
  const start = lineStartBefore(before, index);
  // Up to 3 lines of context before the match.
  let ctxFrom = start;
  let ctxCount = 0;
  while (ctxCount < DIFF_CONTEXT_LINES && ctxFrom > 0) {
    ctxFrom = lineStartBefore(before, ctxFrom - 1);
    ctxCount++;
  }
  // The replaced lines run to the end of the line where old_str ends (in before) and
  // new_str ends (in after).
  const oldRegionEnd = lineEnd(before, index + oldLen);
  const newRegionEnd = oldRegionEnd + (newLen - oldLen);
  const oldLines = countNewlines(before, start, oldRegionEnd) + 1;
  const newLines = countNewlines(after, start, newRegionEnd) + 1;
  // Up to 3 real lines after (a final newline ends the last line; it starts no new one).
  let tailEnd = oldRegionEnd;
  let tailCount = 0;
  while (tailCount < DIFF_CONTEXT_LINES && tailEnd + 1 < before.length) {
    tailEnd = lineEnd(before, tailEnd + 1);
    tailCount++;
  }
  const out = new LineSink(cap);
  out.addLines(' ', before, ctxFrom, start > ctxFrom ? start - 1 : start, ctxCount);
  out.addLines('-', before, start, oldRegionEnd, oldLines);
  out.addLines('+', after, start, newRegionEnd, newLines);
  out.addLines(' ', before, oldRegionEnd + 1, tailEnd, tailCount);
  const ctxStart = firstLine - ctxCount;
  const oldEnd = firstLine + oldLines - 1;
  const tailOld = oldEnd + tailCount;
  return {
    details: {
      old_start: ctxStart,
      old_lines: tailOld - ctxStart + 1,
      new_start: ctxStart,
      new_lines: tailOld - ctxStart + 1 + (newLines - oldLines),
      lines: out.lines,
    },
    dropped: out.dropped,
  };
}

/** Collects diff lines under a byte budget (the prefix character counts as one byte). */
class LineSink {
  private readonly kept: string[] = [];
  dropped = 0;
  private room: number;
  private cut = false;

  constructor(cap: number) {
    this.room = cap;
  }

  /** The lines; the last kept one ends with the truncation marker when any were cut. */
  get lines(): string[] {
    if (!this.cut) return this.kept;
    const out = this.kept.slice();
    out[out.length - 1] += truncationMarker(this.dropped);
    return out;
  }

  /** Adds the `count` lines of buf[start, end) (split at `\n`), each with its prefix. */
  addLines(prefix: string, buf: Buffer, start: number, end: number, count: number): void {
    let s = start;
    for (let k = 0; k < count; k++) {
      const e = k === count - 1 ? end : lineEnd(buf, s);
      this.add(prefix, buf, s, Math.max(s, e));
      s = e + 1;
    }
  }

  private add(prefix: string, buf: Buffer, s: number, e: number): void {
    const len = e - s;
    if (this.cut) {
      this.dropped += len;
      return;
    }
    if (len + 1 <= this.room) {
      this.kept.push(prefix + buf.toString('utf8', s, e));
      this.room -= len + 1;
      return;
    }
    const keep = utf8Boundary(buf, s, Math.max(0, this.room - 1));
    this.kept.push(prefix + buf.toString('utf8', s, s + keep));
    this.dropped = len - keep;
    this.cut = true;
    this.room = 0;
  }
}

function insert(op: InsertOp): OpOutcome {
  const raw = asBuffer(op.bytes);
  if (!isUtf8(raw)) return notUtf8(op.display);
  const text = normaliseNewlineBytes(raw);
  const total = countLines(text);
  const n = op.insertLine;
  if (!Number.isInteger(n) || n < 0 || n > total) return fail(`insert_line ${n} out of range for ${op.display} (it has ${total} lines)`);
  let add = normaliseNewlines(op.newStr);
  if (!add.endsWith('\n')) add += '\n';
  const at = n === total ? text.length : lineStart(text, n);
  // Inserting after a last line that lacks its newline must not glue the two together.
  const glue = n === total && n > 0 && text[text.length - 1] !== LF ? Buffer.from('\n') : Buffer.alloc(0);
  const written = concatOwned([text.subarray(0, at), glue, Buffer.from(add, 'utf8'), text.subarray(at)]);
  return done(`Inserted into ${op.display}\n`, 0, {}, { written, original: owned(op.bytes) });
}
