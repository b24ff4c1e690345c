/**
 * The text editor tool: view / create / str_replace / insert / undo_edit.
 * Pure logic over an EditorFs (workspace-fs.ts in the server, an in-memory map in unit
 * tests). Messages follow the Python reference (`text_editor: …` errors, `Edited <path>`
 * …); `create` may overwrite (Anthropic semantics, reported with is_file_update) and
 * pushes the previous content on the undo history. Result details are the Anthropic
 * code_execution_20250825 fields, added next to the contract v1 fields.
 */
import { SandboxError } from '../errors.js';
import { resolveInside, type ResolvedPath } from '../files/paths.js';

export interface EditorFs {
  kind(p: ResolvedPath): Promise<'file' | 'dir' | 'other' | null>;
  readFile(p: ResolvedPath, display: string, maxBytes: number): Promise<Buffer>;
  writeFile(p: ResolvedPath, display: string, data: string): Promise<void>;
  tree(p: ResolvedPath, display: string, maxEntries: number): Promise<string[]>;
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
}

/** Largest file the editor reads whole. */
export const EDITOR_MAX_FILE_BYTES = 16 * 1024 * 1024;
const MAX_TREE_ENTRIES = 10_000;
const UNDO_DEPTH = 20;
const UNDO_MAX_BYTES = 64 * 1024 * 1024;

class EditorError extends Error {
  constructor(
    message: string,
    readonly errorCode: 'file_not_found' | 'invalid_tool_input' | 'string_not_found' | 'unavailable' = 'invalid_tool_input',
  ) {
    super(message);
  }
}

/** Per-session undo history: per file, a bounded stack of previous contents. */
export class UndoHistory {
  private stacks = new Map<string, string[]>();
  private bytes = 0;

  push(rel: string, text: string): void {
    const stack = this.stacks.get(rel) ?? [];
    stack.push(text);
    this.bytes += text.length;
    if (stack.length > UNDO_DEPTH) this.bytes -= stack.shift()!.length;
    this.stacks.set(rel, stack);
    // Past the byte budget, forget the oldest entries of the largest histories first.
    while (this.bytes > UNDO_MAX_BYTES) {
      let victim: string[] | undefined;
      for (const s of this.stacks.values()) if (s.length > 0 && (!victim || s.length > victim.length)) victim = s;
      if (!victim) break;
      this.bytes -= victim.shift()!.length;
    }
  }

  pop(rel: string): string | undefined {
    const text = this.stacks.get(rel)?.pop();
    if (text !== undefined) this.bytes -= text.length;
    return text;
  }
}

/** Universal newlines, as Python's text mode reads files. */
function normaliseNewlines(text: string): string {
  return text.replace(/\r\n?/g, '\n');
}

function splitLines(text: string): string[] {
  if (text === '') return [];
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return lines;
}

/** 1-based line numbers of each occurrence of needle. */
function lineNumbersOf(text: string, needle: string): number[] {
  const out: number[] = [];
  let from = 0;
  for (;;) {
    const i = text.indexOf(needle, from);
    if (i < 0) return out;
    out.push(text.slice(0, i).split('\n').length);
    from = i + Math.max(1, needle.length);
  }
}

export class TextEditor {
  constructor(
    private readonly fs: EditorFs,
    private readonly undo: UndoHistory,
  ) {}

  async run(input: EditorInput): Promise<EditorResult> {
    try {
      return await this.dispatch(input);
    } catch (e) {
      if (e instanceof EditorError) return { stdout: '', stderr: `text_editor: ${e.message}\n`, return_code: 1, details: { error_code: e.errorCode } };
      const se = e as SandboxError;
      if (se?.name === 'SandboxError') {
        const code = se.code === 'SBX_FILE_NOT_FOUND' ? 'file_not_found' : 'invalid_tool_input';
        return { stdout: '', stderr: `text_editor: ${String(se.detail)}\n`, return_code: 1, details: { error_code: code } };
      }
      throw e;
    }
  }

  private async dispatch(input: EditorInput): Promise<EditorResult> {
    switch (input.command) {
      case 'view':
        return this.view(input);
      case 'create':
        return this.create(input);
      case 'str_replace':
        return this.strReplace(input);
      case 'insert':
        return this.insert(input);
      case 'undo_edit':
        return this.undoEdit(input);
      default: {
        const never: never = input.command;
        throw new EditorError(`unknown command: ${String(never)}`);
      }
    }
  }

  private async readText(p: ResolvedPath, display: string, strict: boolean): Promise<string> {
    const kind = await this.fs.kind(p);
    if (kind === null) throw new EditorError(`file not found: ${display}`, 'file_not_found');
    if (kind === 'dir') throw new EditorError(`is a directory: ${display}`);
    if (kind === 'other') throw new EditorError(`not a regular file: ${display}`);
    const buf = await this.fs.readFile(p, display, EDITOR_MAX_FILE_BYTES);
    if (strict) {
      try {
        return normaliseNewlines(new TextDecoder('utf-8', { fatal: true }).decode(buf));
      } catch {
        throw new EditorError(`${display} is not valid UTF-8 text; edit it with bash instead`);
      }
    }
    return normaliseNewlines(buf.toString('utf8'));
  }

  private async view(input: EditorInput): Promise<EditorResult> {
    const p = resolveInside(input.path);
    const kind = await this.fs.kind(p);
    if (kind === null) throw new EditorError(`file not found: ${input.path}`, 'file_not_found');
    if (kind === 'dir') {
      const entries = await this.fs.tree(p, input.path, MAX_TREE_ENTRIES);
      return { stdout: `${entries.join('\n')}\n`, stderr: '', return_code: 0, details: { file_type: 'directory' } };
    }
    const text = await this.readText(p, input.path, false);
    const lines = splitLines(text);
    const range = input.view_range;
    if (range && range.length > 0) {
      if (range.length !== 2 || !range.every((n) => Number.isInteger(n))) throw new EditorError('view_range must be two integers [start, end]');
      const [rawStart, rawEnd] = range as [number, number];
      const end = rawEnd === -1 ? lines.length : Math.min(lines.length, rawEnd);
      const start = Math.max(1, rawStart);
      if (rawEnd !== -1 && rawEnd < rawStart) throw new EditorError(`invalid view_range [${rawStart}, ${rawEnd}]: end is before start`);
      if (start > lines.length && lines.length > 0) throw new EditorError(`invalid view_range [${rawStart}, ${rawEnd}]: ${input.path} has ${lines.length} lines`);
      const shown = lines.slice(start - 1, end);
      return {
        stdout: shown.join('\n'),
        stderr: '',
        return_code: 0,
        details: { file_type: 'text', num_lines: shown.length, start_line: start, total_lines: lines.length },
      };
    }
    return { stdout: text, stderr: '', return_code: 0, details: { file_type: 'text', num_lines: lines.length, start_line: 1, total_lines: lines.length } };
  }

  private async create(input: EditorInput): Promise<EditorResult> {
    if (input.file_text === undefined || input.file_text === null) throw new EditorError('create requires file_text');
    const p = resolveInside(input.path);
    const kind = await this.fs.kind(p);
    if (kind === 'dir') throw new EditorError(`is a directory: ${input.path}`);
    if (kind === 'other') throw new EditorError(`not a regular file: ${input.path}`);
    const isUpdate = kind === 'file';
    if (isUpdate) this.undo.push(p.rel, await this.readText(p, input.path, false));
    await this.fs.writeFile(p, input.path, input.file_text);
    return {
      stdout: isUpdate ? `File overwritten: ${input.path}\n` : `File created: ${input.path}\n`,
      stderr: '',
      return_code: 0,
      details: { is_file_update: isUpdate },
    };
  }

  private async strReplace(input: EditorInput): Promise<EditorResult> {
    if (input.old_str === undefined || input.old_str === null || input.new_str === undefined || input.new_str === null) {
      throw new EditorError('str_replace requires old_str and new_str');
    }
    if (input.old_str === '') throw new EditorError('old_str must not be empty');
    const p = resolveInside(input.path);
    const text = await this.readText(p, input.path, true);
    const oldStr = normaliseNewlines(input.old_str);
    const newStr = normaliseNewlines(input.new_str);
    const where = lineNumbersOf(text, oldStr);
    if (where.length === 0) throw new EditorError(`old_str not found in ${input.path}`, 'string_not_found');
    if (where.length > 1) throw new EditorError(`old_str matched ${where.length} times in ${input.path} (lines ${where.join(', ')}); must be unique`);
    const index = text.indexOf(oldStr);
    const updated = text.slice(0, index) + newStr + text.slice(index + oldStr.length);
    this.undo.push(p.rel, text);
    await this.fs.writeFile(p, input.path, updated);
    return { stdout: `Edited ${input.path}\n`, stderr: '', return_code: 0, details: diffHunk(text, index, oldStr, newStr) };
  }

  private async insert(input: EditorInput): Promise<EditorResult> {
    if (input.new_str === undefined || input.new_str === null || input.insert_line === undefined || input.insert_line === null) {
      throw new EditorError('insert requires new_str and insert_line');
    }
    const p = resolveInside(input.path);
    const text = await this.readText(p, input.path, true);
    const lines = text.split(/(?<=\n)/).filter((l) => l !== '');
    const n = input.insert_line;
    if (!Number.isInteger(n) || n < 0 || n > lines.length) throw new EditorError(`insert_line ${n} out of range for ${input.path} (it has ${lines.length} lines)`);
    let add = normaliseNewlines(input.new_str);
    if (!add.endsWith('\n')) add += '\n';
    // Inserting after a last line that lacks its newline must not glue the two together.
    if (n === lines.length && n > 0 && !lines[n - 1]!.endsWith('\n')) lines[n - 1] += '\n';
    lines.splice(n, 0, add);
    this.undo.push(p.rel, text);
    await this.fs.writeFile(p, input.path, lines.join(''));
    return { stdout: `Inserted into ${input.path}\n`, stderr: '', return_code: 0, details: {} };
  }

  private async undoEdit(input: EditorInput): Promise<EditorResult> {
    const p = resolveInside(input.path);
    const previous = this.undo.pop(p.rel);
    if (previous === undefined) throw new EditorError(`no edits to undo for ${input.path}`);
    await this.fs.writeFile(p, input.path, previous);
    return { stdout: `Reverted ${input.path}\n`, stderr: '', return_code: 0, details: {} };
  }
}

/** The unified-diff hunk of one replacement, with up to 3 lines of context (Anthropic's fields). */
export function diffHunk(before: string, index: number, oldStr: string, newStr: string): Record<string, unknown> {
  const CONTEXT = 3;
  const beforeLines = before.split('\n');
  const firstLine = before.slice(0, index).split('\n').length; // 1-based line where old_str starts
  const oldLines = oldStr.split('\n').length;
  const after = before.slice(0, index) + newStr + before.slice(index + oldStr.length);
  const afterLines = after.split('\n');
  const newLinesCount = newStr.split('\n').length;
  const ctxStart = Math.max(1, firstLine - CONTEXT);
  const oldEnd = firstLine + oldLines - 1;
  const newEnd = firstLine + newLinesCount - 1;
  // A final newline ends the last line; it does not start an empty one.
  const realLines = before.endsWith('\n') ? beforeLines.length - 1 : beforeLines.length;
  const tailOld = Math.min(Math.max(realLines, oldEnd), oldEnd + CONTEXT);
  const lines: string[] = [];
  for (let i = ctxStart; i < firstLine; i++) lines.push(` ${beforeLines[i - 1]}`);
  for (let i = firstLine; i <= oldEnd; i++) lines.push(`-${beforeLines[i - 1]}`);
  for (let i = firstLine; i <= newEnd; i++) lines.push(`+${afterLines[i - 1]}`);
  for (let i = oldEnd + 1; i <= tailOld; i++) lines.push(` ${beforeLines[i - 1]}`);
  return {
    old_start: ctxStart,
    old_lines: tailOld - ctxStart + 1,
    new_start: ctxStart,
    new_lines: tailOld - ctxStart + 1 + (newLinesCount - oldLines),
    lines,
  };
}
