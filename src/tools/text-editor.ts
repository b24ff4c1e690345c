/**
 * The text editor tool: view / create / str_replace / insert / undo_edit.
 * I/O over an EditorFs (the session's WorkspaceFs in the server, an in-memory map in unit
 * tests); the text algorithms are pure functions over bytes in editor-ops.ts. Messages
 * follow the Python reference (`text_editor: …` errors, `Edited <path>` …); `create` may
 * overwrite (Anthropic semantics, reported with is_file_update) and pushes the previous
 * content on the undo history. Result details are the Anthropic code_execution_20250825
 * fields, added next to the contract v1 fields.
 *
 * What a request can cost the server (issue 8: nothing a client sends can crash, freeze or
 * bloat it):
 * - Time on the event loop: every algorithm is linear (editor-ops.ts). Files (plus inputs)
 *   above INLINE_MAX_BYTES are processed in a small worker-thread pool (EditorWorkers,
 *   piscina: at most 2 threads, a bounded queue; past it the call is refused with
 *   SBX_SERVER_BUSY); the loop only does async I/O for them, and the file's bytes move
 *   between threads without copies. Files of at most SMALL_IO_BYTES (64 KiB) are probed,
 *   read and written with a few synchronous calls instead (workspace-fs.ts): a thread-pool
 *   trip per call cost more than the call, and an edit makes about a dozen.
 * - Memory: a large operation first reserves its worst case (a multiple of the file size,
 *   before the file is read) from the server's shared MemoryBudget; past the budget the
 *   call is refused with SBX_SERVER_BUSY (503). Files above EDITOR_MAX_FILE_BYTES are
 *   refused as before.
 * - Undo history: on disk, in the session's own server-only folder (Box.undoDir, on the
 *   session's quota), never in server memory: raw snapshots of the file as it was, at most
 *   SANDBOX_EDITOR_UNDO_MB per session, UNDO_DEPTH per file and UNDO_MAX_ENTRIES in all
 *   (so the in-memory index of names is bounded too). When the session's disk is full the
 *   oldest history goes first; an edit never fails for want of undo room (it says its
 *   undo is unavailable instead).
 * - Answer size: stdout, the diff's `lines` and a folder listing carry at most
 *   SANDBOX_RUNNER_MAX_OUTPUT_BYTES of text each, cut with the tools' truncation marker,
 *   with limit_exceeded "output_bytes" and the dropped byte count, like python and bash.
 */
import { promises as fsp, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { outputLimitText } from '../limits.js';
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import { SandboxError, isSandboxError } from '../errors.js';
import type { MemoryBudget, Reservation } from '../budget.js';
import { resolveInside, type ResolvedPath } from '../files/paths.js';
import { SMALL_IO_BYTES, type Probe, type WorkspaceFs } from '../files/workspace-fs.js';
import { runEditorOp, type EditorErrorCode, type EditorOp, type OpOutcome } from './editor-ops.js';
import { truncationMarker } from './result.js';

export interface EditorFs {
  /** What is at p (without following a link): nothing, a folder, something else, or a
   * regular file with its size, known before it is read, and its bytes when it holds at
   * most `readMaxBytes` (a store may read less eagerly: bytes null, then readFile). */
  probe(p: ResolvedPath, display: string, readMaxBytes: number): Promise<Probe>;
  readFile(p: ResolvedPath, display: string, maxBytes: number): Promise<Buffer>;
  writeFile(p: ResolvedPath, display: string, data: Buffer | string): Promise<void>;
  tree(p: ResolvedPath, display: string, maxEntries: number): Promise<string[]>;
}

/** The session's race-free workspace access as an EditorFs. */
export class WorkspaceEditorFs implements EditorFs {
  constructor(private readonly ws: WorkspaceFs) {}
  probe(p: ResolvedPath, display: string, readMaxBytes: number) {
    return this.ws.probe(p, display, readMaxBytes);
  }
  readFile(p: ResolvedPath, display: string, maxBytes: number) {
    return this.ws.readFile(p, display, maxBytes);
  }
  writeFile(p: ResolvedPath, display: string, data: Buffer | string) {
    return this.ws.writeFile(p, display, data);
  }
  tree(p: ResolvedPath, display: string, maxEntries: number) {
    return this.ws.tree(p, display, maxEntries);
  }
}

export interface EditorInput {
  command: 'view' | 'create' | 'str_replace' | 'insert' | 'undo_edit';
  path: string;
  file_text?: string | null;
  old_str?: string | null;
  new_str?: string | null;
  insert_line?: number | null;
  view_range?: number[] | null;
}

export interface EditorResult {
  stdout: string;
  stderr: string;
  return_code: number;
  details: Record<string, unknown>;
  /** 'output_bytes' when stdout or a detail was cut at the output cap; 'wall_clock' when
   * the operation was stopped at the call's timeout (the file is then unchanged). */
  limit_exceeded: 'output_bytes' | 'wall_clock' | null;
  stdout_dropped_bytes: number;
}

/** Largest file the editor reads whole. */
export const EDITOR_MAX_FILE_BYTES = 16 * 1024 * 1024;
/** Work (file bytes plus input characters) at most done on the event loop; above it, in a worker. */
export const INLINE_MAX_BYTES = 64 * 1024;
const MAX_TREE_ENTRIES = 10_000;
/** Worst case of one listing entry in memory: two 255-byte names as a two-byte string, plus the raw names. */
const TREE_ENTRY_MEMORY_BYTES = 1536;
export const UNDO_DEPTH = 20;
export const UNDO_MAX_ENTRIES = 200;
const MiB = 1024 * 1024;

class EditorError extends Error {
  constructor(
    message: string,
    readonly errorCode: EditorErrorCode = 'invalid_tool_input',
  ) {
    super(message);
  }
}

function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

/** The session's disk is full: from the file system, or as WorkspaceFs reports it. */
function isNoSpace(e: unknown): boolean {
  const code = errnoOf(e);
  if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  return isSandboxError(e) && e.code === 'SBX_FILE_TOO_LARGE' && /no space left/i.test(String(e.detail));
}

interface UndoEntry {
  seq: number;
  rel: string;
  bytes: number;
}

interface FileHistory {
  entries: UndoEntry[];
  /** Why older history of this file is gone (said by undo_edit once nothing is left). */
  lost: string | null;
}

export interface UndoOptions {
  /** A server-only folder on the session's own disk (Box.undoDir); it must exist. */
  dir: string;
  /** Snapshot bytes kept at most; 0 disables undo. */
  maxBytes: number;
  depth?: number;
  maxEntries?: number;
}

export type UndoPush = { saved: true; seq: number } | { saved: false; reason: string | null };

/**
 * Per-session undo history on disk: per file, a bounded stack of snapshots (the raw bytes
 * of the file before each edit), each in its own file `<dir>/<seq>` (names are counters,
 * never user strings). Memory holds only the index: at most `maxEntries` entries and as
 * many file records. Calls of one session are serialised by its queue, so no locking.
 */
export class UndoHistory {
  private readonly files = new Map<string, FileHistory>();
  /** Every entry, oldest first (a Map keeps insertion order). */
  private readonly order = new Map<number, UndoEntry>();
  private totalBytes = 0;
  private nextSeq = 1;
  private readonly depth: number;
  private readonly maxEntries: number;

  constructor(private readonly opts: UndoOptions) {
    this.depth = opts.depth ?? UNDO_DEPTH;
    this.maxEntries = opts.maxEntries ?? UNDO_MAX_ENTRIES;
  }

  get enabled(): boolean {
    return this.opts.maxBytes > 0;
  }

  /** Bytes of snapshots on disk. */
  get bytes(): number {
    return this.totalBytes;
  }

  get entries(): number {
    return this.order.size;
  }

  private get limitText(): string {
    return `SANDBOX_EDITOR_UNDO_MB=${Math.round((this.opts.maxBytes / MiB) * 100) / 100}`;
  }

  private file(seq: number): string {
    return `${this.opts.dir}/${seq}`;
  }

  /** Saves `data` as the newest snapshot of `rel`. Never throws: when it cannot be kept,
   * the file's older history is dropped too (undo must never skip an edit) and the reason
   * is returned. */
  async push(rel: string, data: Uint8Array): Promise<UndoPush> {
    if (!this.enabled) return { saved: false, reason: null };
    if (data.length > this.opts.maxBytes) {
      const reason = `the previous content (${data.length} bytes) is larger than the whole undo history may be (${this.limitText})`;
      await this.forget(rel, reason);
      return { saved: false, reason };
    }
    while (this.totalBytes + data.length > this.opts.maxBytes || this.order.size >= this.maxEntries) {
      if (!(await this.dropOldest(`older edits were dropped to keep the session's undo history within ${this.limitText} and ${this.maxEntries} entries`))) break;
    }
    const seq = this.nextSeq++;
    for (;;) {
      try {
        // A small snapshot is written with one synchronous call (the folder is the
        // server's own, on the box's tmpfs): see workspace-fs.ts on small I/O.
        if (data.length <= SMALL_IO_BYTES) writeFileSync(this.file(seq), data, { flag: 'wx', mode: 0o600 });
        else await fsp.writeFile(this.file(seq), data, { flag: 'wx', mode: 0o600 });
        break;
      } catch (e) {
        await fsp.rm(this.file(seq), { force: true }).catch(() => {});
        if (isNoSpace(e) && (await this.dropOldest("older edits were dropped because the session's disk is full (SANDBOX_WORKSPACE_MB)"))) continue;
        const reason = isNoSpace(e) ? "the session's disk is full (SANDBOX_WORKSPACE_MB)" : `the undo history could not be written (${errnoOf(e) ?? String(e)})`;
        await this.forget(rel, reason);
        return { saved: false, reason };
      }
    }
    const entry: UndoEntry = { seq, rel, bytes: data.length };
    const history = this.files.get(rel) ?? { entries: [], lost: null };
    this.files.set(rel, history);
    history.entries.push(entry);
    this.order.set(seq, entry);
    this.totalBytes += data.length;
    while (history.entries.length > this.depth) await this.remove(history.entries[0]!, `only the last ${this.depth} edits of a file are kept`);
    return { saved: true, seq };
  }

  has(seq: number): boolean {
    return this.order.has(seq);
  }

  /** The newest snapshot of `rel`, if any. */
  top(rel: string): UndoEntry | undefined {
    return this.files.get(rel)?.entries.at(-1);
  }

  lostReason(rel: string): string | null {
    return this.files.get(rel)?.lost ?? null;
  }

  /** Reads a snapshot and removes it from the history (and the disk). */
  async take(entry: UndoEntry): Promise<Buffer> {
    try {
      return entry.bytes <= SMALL_IO_BYTES ? readFileSync(this.file(entry.seq)) : await fsp.readFile(this.file(entry.seq));
    } finally {
      await this.remove(entry, null);
    }
  }

  /** Removes an entry pushed by an edit that then failed. */
  async discard(seq: number): Promise<void> {
    const entry = this.order.get(seq);
    if (entry) await this.remove(entry, null);
  }

  /** Drops the oldest snapshot of the session; false when there is none. */
  async dropOldest(reason: string): Promise<boolean> {
    const oldest = this.order.values().next();
    if (oldest.done) return false;
    await this.remove(oldest.value, reason);
    return true;
  }

  private async remove(entry: UndoEntry, reason: string | null): Promise<void> {
    if (!this.order.delete(entry.seq)) return;
    this.totalBytes -= entry.bytes;
    const history = this.files.get(entry.rel);
    if (history) {
      const i = history.entries.indexOf(entry);
      if (i >= 0) history.entries.splice(i, 1);
      if (reason !== null) history.lost = reason;
      if (history.entries.length === 0 && history.lost === null) this.files.delete(entry.rel);
    }
    if (entry.bytes <= SMALL_IO_BYTES) {
      try {
        unlinkSync(this.file(entry.seq));
      } catch {
        // Gone with the box, or unremovable: its bytes are no longer counted either way.
      }
    } else {
      await fsp.rm(this.file(entry.seq), { force: true }).catch(() => {});
    }
    this.boundFileRecords();
  }

  /** Drops every snapshot of `rel` and remembers why. */
  private async forget(rel: string, reason: string): Promise<void> {
    const history = this.files.get(rel);
    for (const entry of [...(history?.entries ?? [])]) await this.remove(entry, reason);
    const h = this.files.get(rel) ?? { entries: [], lost: null };
    h.lost = reason;
    this.files.set(rel, h);
    this.boundFileRecords();
  }

  /** Records of files with no snapshot left (only a reason) are bounded like entries. */
  private boundFileRecords(): void {
    if (this.files.size <= 2 * this.maxEntries) return;
    for (const [rel, h] of this.files) {
      if (this.files.size <= 2 * this.maxEntries) return;
      if (h.entries.length === 0) this.files.delete(rel);
    }
  }
}

export interface EditorWorkersOptions {
  maxThreads?: number;
  /** Tasks waiting for a thread at most; past it a call is refused with SBX_SERVER_BUSY. */
  maxQueue?: number;
  idleTimeoutMs?: number;
  /** V8 old-generation cap of each worker: a runaway task kills its worker, not the server. */
  maxOldGenerationMb?: number;
}

/**
 * The worker-thread pool for large editor operations (piscina, editor-worker.ts). Threads
 * start on first use and stop after idleTimeoutMs without work; idle threads do not keep
 * the process alive.
 */
export class EditorWorkers {
  private pool: Piscina | null = null;

  constructor(private readonly opts: EditorWorkersOptions = {}) {}

  /** Runs `op` in a thread. `signal` ends the task (and its thread); `deadline`, when it is
   * what fired, makes the call's answer the timeout's rather than a cancellation's. */
  async run(op: EditorOp, signal?: AbortSignal, deadline?: EditorDeadline): Promise<OpOutcome> {
    const pool = (this.pool ??= new Piscina({
      filename: new URL('./editor-worker.js', import.meta.url).href,
      minThreads: 0,
      maxThreads: this.opts.maxThreads ?? Math.max(1, Math.min(2, availableParallelism())),
      maxQueue: this.opts.maxQueue ?? 16,
      idleTimeout: this.opts.idleTimeoutMs ?? 30_000,
      resourceLimits: { maxOldGenerationSizeMb: this.opts.maxOldGenerationMb ?? 256 },
    }));
    // The bytes move to the worker (no copy); they must own their ArrayBuffer to be transferable.
    let bytes = op.bytes;
    if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) bytes = new Uint8Array(bytes);
    try {
      return (await pool.run({ ...op, bytes }, { transferList: bytes.byteLength > 0 ? [bytes.buffer as ArrayBuffer] : [], signal: signal ?? null })) as OpOutcome;
    } catch (e) {
      const message = String((e as Error)?.message ?? e);
      // (a task cancelled while it ran has its thread ended: piscina starts another)
      if ((e as Error)?.name === 'AbortError' && signal?.aborted) {
        if (deadline?.signal.aborted) {
          throw new EditorError(
            `${op.display}: the operation took longer than the call's timeout (${deadline.seconds}s, wall-clock limit) and was stopped; the file is unchanged`,
            'execution_time_exceeded',
          );
        }
        throw new EditorError(`${op.display}: the operation was cancelled (the client left, or the session was deleted)`);
      }
      if (/queue is at limit/i.test(message)) {
        throw new SandboxError('SBX_SERVER_BUSY', 'the server is busy with other large editor operations; retry shortly', { headers: { 'retry-after': '1' } });
      }
      if (errnoOf(e) === 'ERR_WORKER_OUT_OF_MEMORY') throw new EditorError(`${op.display}: the operation needed more memory than the editor may use; edit it with bash instead`);
      throw e;
    }
  }

  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = null;
    await pool?.destroy();
  }
}

export interface EditorOptions {
  /** SANDBOX_RUNNER_MAX_OUTPUT_BYTES: text of stdout and of each detail, at most. */
  maxOutputBytes: number;
  /** Reserves the memory of large operations; none: no reservation (unit tests). */
  budget?: MemoryBudget | null;
  /** Runs large operations off the event loop; none: everything inline (unit tests). */
  workers?: EditorWorkers | null;
  /** Threshold of work done inline (default INLINE_MAX_BYTES). */
  inlineMaxBytes?: number;
  /** Cancels the call's work in the worker pool (its thread is ended): the client left, or
   * the session was deleted. */
  signal?: AbortSignal;
  /** The call's timeout (`timeout_seconds`): when it fires, work still under way in the
   * worker pool is stopped as by `signal`, and the call answers with the wall-clock limit.
   * Work done on the event loop (small files) and the file writes are not cut short: an
   * edit is written whole or not at all. */
  deadline?: EditorDeadline;
}

/** A call's timeout as the editor sees it: aborted when it fires. */
export interface EditorDeadline {
  signal: AbortSignal;
  seconds: number;
}

interface Notes {
  lines: string[];
  limit: 'output_bytes' | null;
  stdoutDropped: number;
}

export class TextEditor {
  private readonly inlineMax: number;

  constructor(
    private readonly fs: EditorFs,
    private readonly undo: UndoHistory,
    private readonly opts: EditorOptions = { maxOutputBytes: MiB },
  ) {
    this.inlineMax = opts.inlineMaxBytes ?? INLINE_MAX_BYTES;
  }

  async run(input: EditorInput): Promise<EditorResult> {
    const notes: Notes = { lines: [], limit: null, stdoutDropped: 0 };
    try {
      const r = await this.dispatch(input, notes);
      const stderr = notes.lines.map((l) => `text_editor: ${l}\n`).join('');
      return { ...r, stderr, limit_exceeded: notes.limit, stdout_dropped_bytes: notes.stdoutDropped };
    } catch (e) {
      const failed = (message: string, errorCode: EditorErrorCode): EditorResult => ({
        stdout: '',
        stderr: `text_editor: ${message}\n`,
        return_code: 1,
        details: { error_code: errorCode },
        limit_exceeded: null,
        stdout_dropped_bytes: 0,
      });
      if (e instanceof EditorError) {
        const r = failed(e.message, e.errorCode);
        return e.errorCode === 'execution_time_exceeded' ? { ...r, limit_exceeded: 'wall_clock' } : r;
      }
      // The server being busy is the server's answer (503 with Retry-After), not the tool's.
      if (isSandboxError(e) && e.code !== 'SBX_SERVER_BUSY') return failed(String(e.detail), e.code === 'SBX_FILE_NOT_FOUND' ? 'file_not_found' : 'invalid_tool_input');
      throw e;
    }
  }

  private async dispatch(input: EditorInput, notes: Notes): Promise<Pick<EditorResult, 'stdout' | 'return_code' | 'details'>> {
    switch (input.command) {
      case 'view':
        return this.view(input, notes);
      case 'create':
        return this.create(input, notes);
      case 'str_replace':
        return this.strReplace(input, notes);
      case 'insert':
        return this.insert(input, notes);
      case 'undo_edit':
        return this.undoEdit(input);
      default: {
        const never: never = input.command;
        throw new EditorError(`unknown command: ${String(never)}`);
      }
    }
  }

  /** Reserves `bytes` of server memory for a large operation; null for small ones. */
  private reserve(bytes: number, large: boolean, what: string): Reservation | null {
    if (!large || !this.opts.budget) return null;
    return this.opts.budget.reserve(bytes, what);
  }

  /** Worst-case server memory of one operation on a file of `size` bytes (see editor-ops.ts):
   * the raw and normalised bytes, the decoded text or the new content, and the capped answer. */
  private opMemory(size: number, inputChars: number): number {
    return 4 * size + 6 * inputChars + 3 * this.opts.maxOutputBytes;
  }

  /** Runs an editor op on a regular file: reads it (with its memory reserved when large),
   * then runs the op inline or in a worker. The reservation is released by the caller. */
  private async runOp(
    p: ResolvedPath,
    display: string,
    inputChars: number,
    make: (bytes: Uint8Array) => EditorOp,
    probed?: Probe,
  ): Promise<{ out: OpOutcome & { ok: true }; reservation: Reservation | null }> {
    const found = probed ?? (await this.fs.probe(p, display, this.inlineMax));
    if (found.kind !== 'file') {
      if (found.kind === null) throw new EditorError(`file not found: ${display}`, 'file_not_found');
      throw new EditorError(found.kind === 'dir' ? `is a directory: ${display}` : `not a regular file: ${display}`);
    }
    const size = found.size;
    if (size > EDITOR_MAX_FILE_BYTES) throw new EditorError(`file is too large for this operation: ${display} is ${size} bytes, the limit is ${EDITOR_MAX_FILE_BYTES}`);
    const large = size + inputChars > this.inlineMax;
    let reservation = this.reserve(this.opMemory(size, inputChars), large, `the text editor on ${display}`);
    try {
      // A small file came with the probe; a large one is read once its memory is reserved.
      const bytes = found.bytes ?? (await this.fs.readFile(p, display, EDITOR_MAX_FILE_BYTES));
      if (bytes.length > size) {
        // The file grew since its size was read: reserve for what was read.
        reservation?.release();
        reservation = this.reserve(this.opMemory(bytes.length, inputChars), bytes.length + inputChars > this.inlineMax, `the text editor on ${display}`);
      }
      const op = make(bytes);
      const out = bytes.length + inputChars > this.inlineMax && this.opts.workers ? await this.opts.workers.run(op, this.workSignal(), this.opts.deadline) : runEditorOp(op);
      if (!out.ok) throw new EditorError(out.message, out.errorCode);
      return { out, reservation };
    } catch (e) {
      reservation?.release();
      throw e;
    }
  }

  /** What ends work in the worker pool: the cancellation, the deadline, or either. */
  private workSignal(): AbortSignal | undefined {
    const { signal, deadline } = this.opts;
    if (!deadline) return signal;
    return signal ? AbortSignal.any([signal, deadline.signal]) : deadline.signal;
  }

  private capNote(notes: Notes, droppedBytes: number, what: string, stdout: boolean): void {
    if (droppedBytes <= 0) return;
    notes.limit = 'output_bytes';
    if (stdout) notes.stdoutDropped += droppedBytes;
    notes.lines.push(`${outputLimitText(this.opts.maxOutputBytes)}; ${what}: ${droppedBytes} bytes were dropped`);
  }

  private async view(input: EditorInput, notes: Notes) {
    const p = resolveInside(input.path);
    // One walk: a small file comes with its bytes, handed on to runOp.
    const found = await this.fs.probe(p, input.path, this.inlineMax);
    if (found.kind === null) throw new EditorError(`file not found: ${input.path}`, 'file_not_found');
    if (found.kind === 'dir') {
      const reservation = this.reserve(MAX_TREE_ENTRIES * TREE_ENTRY_MEMORY_BYTES, true, `the listing of ${input.path}`);
      try {
        const entries = await this.fs.tree(p, input.path, MAX_TREE_ENTRIES);
        const { text, dropped } = capLines(entries, this.opts.maxOutputBytes);
        this.capNote(notes, dropped, 'the listing was cut', true);
        return { stdout: dropped > 0 ? text + truncationMarker(dropped) : text, return_code: 0, details: { file_type: 'directory' } };
      } finally {
        reservation?.release();
      }
    }
    const { out, reservation } = await this.runOp(
      p,
      input.path,
      0,
      (bytes) => ({
        op: 'view',
        bytes,
        display: input.path,
        maxOutputBytes: this.opts.maxOutputBytes,
        viewRange: input.view_range,
      }),
      found,
    );
    reservation?.release();
    this.capNote(notes, out.stdoutDroppedBytes, 'the file text was cut', true);
    return { stdout: out.stdout, return_code: 0, details: out.details };
  }

  private async create(input: EditorInput, notes: Notes) {
    if (input.file_text === undefined || input.file_text === null) throw new EditorError('create requires file_text');
    const p = resolveInside(input.path);
    // The previous content (the undo snapshot) comes with the probe when it is small.
    const found = await this.fs.probe(p, input.path, this.undo.enabled ? this.inlineMax : 0);
    if (found.kind === 'dir') throw new EditorError(`is a directory: ${input.path}`);
    if (found.kind === 'other') throw new EditorError(`not a regular file: ${input.path}`);
    const isUpdate = found.kind === 'file';
    let reservation: Reservation | null = null;
    try {
      let pushed: UndoPush | null = null;
      if (found.kind === 'file') {
        // The snapshot is the file's raw bytes: nothing is decoded or scanned.
        const size = found.size;
        if (size > EDITOR_MAX_FILE_BYTES) throw new EditorError(`file is too large for this operation: ${input.path} is ${size} bytes, the limit is ${EDITOR_MAX_FILE_BYTES}`);
        if (this.undo.enabled) {
          reservation = this.reserve(size, size > this.inlineMax, `the text editor on ${input.path}`);
          const previous = found.bytes ?? (await this.fs.readFile(p, input.path, EDITOR_MAX_FILE_BYTES));
          pushed = await this.undo.push(p.rel, previous);
        }
      }
      await this.writeEdit(p, input.path, input.file_text, pushed, notes);
    } finally {
      reservation?.release();
    }
    return {
      stdout: isUpdate ? `File overwritten: ${input.path}\n` : `File created: ${input.path}\n`,
      return_code: 0,
      details: { is_file_update: isUpdate },
    };
  }

  private async strReplace(input: EditorInput, notes: Notes) {
    if (input.old_str === undefined || input.old_str === null || input.new_str === undefined || input.new_str === null) {
      throw new EditorError('str_replace requires old_str and new_str');
    }
    if (input.old_str === '') throw new EditorError('old_str must not be empty');
    const oldStr = input.old_str;
    const newStr = input.new_str;
    const p = resolveInside(input.path);
    const { out, reservation } = await this.runOp(p, input.path, oldStr.length + newStr.length, (bytes) => ({
      op: 'str_replace',
      bytes,
      display: input.path,
      maxOutputBytes: this.opts.maxOutputBytes,
      oldStr,
      newStr,
    }));
    try {
      await this.applyEdit(p, input.path, out, notes);
    } finally {
      reservation?.release();
    }
    this.capNote(notes, out.detailDroppedBytes, 'the diff in `lines` was cut', false);
    return { stdout: out.stdout, return_code: 0, details: out.details };
  }

  private async insert(input: EditorInput, notes: Notes) {
    if (input.new_str === undefined || input.new_str === null || input.insert_line === undefined || input.insert_line === null) {
      throw new EditorError('insert requires new_str and insert_line');
    }
    const newStr = input.new_str;
    const insertLine = input.insert_line;
    const p = resolveInside(input.path);
    const { out, reservation } = await this.runOp(p, input.path, newStr.length, (bytes) => ({
      op: 'insert',
      bytes,
      display: input.path,
      maxOutputBytes: this.opts.maxOutputBytes,
      newStr,
      insertLine,
    }));
    try {
      await this.applyEdit(p, input.path, out, notes);
    } finally {
      reservation?.release();
    }
    return { stdout: out.stdout, return_code: 0, details: out.details };
  }

  /** Saves the file as it was on the undo history, then writes the new content. */
  private async applyEdit(p: ResolvedPath, display: string, out: OpOutcome & { ok: true }, notes: Notes): Promise<void> {
    const pushed = out.original ? await this.undo.push(p.rel, out.original) : null;
    await this.writeEdit(p, display, Buffer.from(out.written!.buffer, out.written!.byteOffset, out.written!.byteLength), pushed, notes);
  }

  /**
   * Writes an edit. When the session's disk is full, the oldest undo history is dropped
   * (this edit's own snapshot last) until the write fits: undo never costs an edit.
   */
  private async writeEdit(p: ResolvedPath, display: string, data: Buffer | string, pushed: UndoPush | null, notes: Notes): Promise<void> {
    for (;;) {
      try {
        await this.fs.writeFile(p, display, data);
        break;
      } catch (e) {
        if (isNoSpace(e) && (await this.undo.dropOldest("older edits were dropped because the session's disk is full (SANDBOX_WORKSPACE_MB)"))) continue;
        if (pushed?.saved) await this.undo.discard(pushed.seq);
        throw e;
      }
    }
    if (pushed && !pushed.saved && pushed.reason) notes.lines.push(`this edit cannot be undone: ${pushed.reason}`);
    if (pushed?.saved && !this.undo.has(pushed.seq)) notes.lines.push("this edit cannot be undone: the session's disk is full (SANDBOX_WORKSPACE_MB)");
  }

  private async undoEdit(input: EditorInput) {
    const p = resolveInside(input.path);
    if (!this.undo.enabled) throw new EditorError('undo is disabled on this server (SANDBOX_EDITOR_UNDO_MB=0)', 'unavailable');
    const entry = this.undo.top(p.rel);
    if (!entry) {
      const lost = this.undo.lostReason(p.rel);
      throw new EditorError(`no edits to undo for ${input.path}${lost ? ` (${lost})` : ''}`);
    }
    const reservation = this.reserve(entry.bytes, entry.bytes > this.inlineMax, `undo of ${input.path}`);
    try {
      let previous: Buffer;
      try {
        previous = await this.undo.take(entry);
      } catch (e) {
        throw new EditorError(`the undo history of ${input.path} could not be read (${errnoOf(e) ?? String(e)})`, 'unavailable');
      }
      // Taking the snapshot freed its disk space: the restored file fits where it was.
      for (;;) {
        try {
          await this.fs.writeFile(p, input.path, previous);
          break;
        } catch (e) {
          if (isNoSpace(e) && (await this.undo.dropOldest("older edits were dropped because the session's disk is full (SANDBOX_WORKSPACE_MB)"))) continue;
          throw e;
        }
      }
    } finally {
      reservation?.release();
    }
    return { stdout: `Reverted ${input.path}\n`, return_code: 0, details: {} };
  }
}

/** `entries` one per line (each ending with a newline), at most `cap` UTF-8 bytes kept. */
function capLines(entries: string[], cap: number): { text: string; dropped: number } {
  const kept: string[] = [];
  let room = cap;
  let dropped = 0;
  for (const e of entries) {
    const n = Buffer.byteLength(e, 'utf8') + 1;
    if (dropped === 0 && n <= room) {
      kept.push(e, '\n');
      room -= n;
      continue;
    }
    if (dropped === 0 && room > 0) {
      // Cut the entry at a character boundary within the room left.
      const { read, written } = new TextEncoder().encodeInto(e, new Uint8Array(room));
      kept.push(e.slice(0, read));
      dropped += n - written;
      room = 0;
      continue;
    }
    dropped += n;
  }
  return { text: kept.join(''), dropped };
}
