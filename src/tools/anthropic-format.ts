/**
 * Anthropic-native result blocks, opt-in per call with `result_format: "anthropic"` on
 * POST /sessions/{id}/exec. The default stays contract v1 (tools/result.ts); this module is
 * a pure mapping from a v1 answer (plus the editor command of the call) to the blocks of
 * Anthropic's `code_execution_20250825` tool, so a gateway can hand them to
 * Anthropic-shaped clients unchanged. Every other answer field (tool_use_id,
 * execution_time_ms, limit_exceeded, interpreter_restarted, *_dropped_bytes) stays as in v1.
 *
 * Shapes, with the SDK type each one matches (anthropic-sdk-python / -typescript, beta
 * types; field names are the SDK's snake_case ones, nothing is added inside a block):
 * - BetaBashCodeExecutionToolResultBlock {type: 'bash_code_execution_tool_result',
 *   tool_use_id, content}, content one of
 *   - BetaBashCodeExecutionResultBlock {type: 'bash_code_execution_result', stdout, stderr,
 *     return_code, content: BetaBashCodeExecutionOutputBlock[]}
 *   - BetaBashCodeExecutionOutputBlock {type: 'bash_code_execution_output', file_id}
 *   - BetaBashCodeExecutionToolResultError {type: 'bash_code_execution_tool_result_error',
 *     error_code}
 * - BetaTextEditorCodeExecutionToolResultBlock {type:
 *   'text_editor_code_execution_tool_result', tool_use_id, content}, content one of
 *   - BetaTextEditorCodeExecutionViewResultBlock {type:
 *     'text_editor_code_execution_view_result', content, file_type, num_lines, start_line,
 *     total_lines}
 *   - BetaTextEditorCodeExecutionCreateResultBlock {type:
 *     'text_editor_code_execution_create_result', is_file_update}
 *   - BetaTextEditorCodeExecutionStrReplaceResultBlock {type:
 *     'text_editor_code_execution_str_replace_result', lines, new_lines, new_start,
 *     old_lines, old_start}
 *   - BetaTextEditorCodeExecutionToolResultError {type:
 *     'text_editor_code_execution_tool_result_error', error_code, error_message}
 *
 * Choices where this server has more than the Anthropic tool (documented in the README):
 * - Python (`code_execution`) answers with the bash blocks: the 20250825 tool has only
 *   bash and the text editor (Python runs there as a bash command).
 * - A wall-clock timeout is `execution_time_exceeded` and a file over the file-size limit
 *   `output_file_too_large` (error blocks: no stdout or stderr, as Anthropic answers);
 *   any other limit is a normal result whose stderr says which limit fired.
 * - The editor's `insert` answers with a str_replace result (its diff hunk), `undo_edit`
 *   with a create result (`is_file_update: true`: the file was rewritten whole), and a
 *   folder `view` with a view result of file_type "text" holding the listing (line counts
 *   null). The editor's own `string_not_found` is `invalid_tool_input` (Anthropic's list
 *   has no such code); the message is in `error_message` either way.
 * - Calls refused before they run, which contract v1 answers with a 4xx/503, are 200 with
 *   an error block: input that fails validation `invalid_tool_input` (v1: 422), a full
 *   session queue `too_many_requests` (v1: 429), a server short of memory or workers
 *   `unavailable` (v1: 503). An unknown tool (400: no block type to answer with), an
 *   unknown session (404) and a malformed request body stay HTTP errors.
 * - Produced files: each v1 inner entry of type `code_execution_output` with a file_id
 *   becomes {type: 'bash_code_execution_output', file_id} (Anthropic's file refs carry no
 *   filename); for the text editor there is no file list in the native shapes.
 */
import Type, { type Static } from 'typebox';
import type { ExecResponse } from './result.js';

export const RESULT_FORMATS = ['v1', 'anthropic'] as const;
export type ResultFormat = (typeof RESULT_FORMATS)[number];

const nullableInt = () => Type.Union([Type.Integer(), Type.Null()]);

/** BetaBashCodeExecutionToolResultError.error_code */
const BashErrorCodeSchema = Type.Union([
  Type.Literal('invalid_tool_input'),
  Type.Literal('unavailable'),
  Type.Literal('too_many_requests'),
  Type.Literal('execution_time_exceeded'),
  Type.Literal('output_file_too_large'),
]);
/** BetaTextEditorCodeExecutionToolResultError.error_code */
const EditorErrorCodeSchema = Type.Union([
  Type.Literal('invalid_tool_input'),
  Type.Literal('unavailable'),
  Type.Literal('too_many_requests'),
  Type.Literal('execution_time_exceeded'),
  Type.Literal('file_not_found'),
]);
export type BashErrorCode = Static<typeof BashErrorCodeSchema>;
export type EditorErrorCodeNative = Static<typeof EditorErrorCodeSchema>;
export const BASH_ERROR_CODES: readonly BashErrorCode[] = BashErrorCodeSchema.anyOf.map((s) => s.const);
export const EDITOR_ERROR_CODES: readonly EditorErrorCodeNative[] = EditorErrorCodeSchema.anyOf.map((s) => s.const);
/** Codes of a call refused before it ran: valid for both tools. */
export type RefusalCode = 'invalid_tool_input' | 'too_many_requests' | 'unavailable';

/** BetaBashCodeExecutionOutputBlock */
export const BashOutputBlockSchema = Type.Object({ type: Type.Literal('bash_code_execution_output'), file_id: Type.String() });
/** BetaBashCodeExecutionResultBlock */
export const BashResultSchema = Type.Object({
  type: Type.Literal('bash_code_execution_result'),
  stdout: Type.String(),
  stderr: Type.String(),
  return_code: Type.Integer(),
  content: Type.Array(BashOutputBlockSchema),
});
/** BetaBashCodeExecutionToolResultError */
export const BashErrorSchema = Type.Object({ type: Type.Literal('bash_code_execution_tool_result_error'), error_code: BashErrorCodeSchema });
/** BetaBashCodeExecutionToolResultBlock */
export const BashToolResultSchema = Type.Object({
  type: Type.Literal('bash_code_execution_tool_result'),
  tool_use_id: Type.String(),
  content: Type.Union([BashResultSchema, BashErrorSchema]),
});

/** BetaTextEditorCodeExecutionViewResultBlock */
export const ViewResultSchema = Type.Object({
  type: Type.Literal('text_editor_code_execution_view_result'),
  content: Type.String(),
  file_type: Type.Union([Type.Literal('text'), Type.Literal('image'), Type.Literal('pdf')]),
  num_lines: nullableInt(),
  start_line: nullableInt(),
  total_lines: nullableInt(),
});
/** BetaTextEditorCodeExecutionCreateResultBlock */
export const CreateResultSchema = Type.Object({ type: Type.Literal('text_editor_code_execution_create_result'), is_file_update: Type.Boolean() });
/** BetaTextEditorCodeExecutionStrReplaceResultBlock */
export const StrReplaceResultSchema = Type.Object({
  type: Type.Literal('text_editor_code_execution_str_replace_result'),
  lines: Type.Union([Type.Array(Type.String()), Type.Null()]),
  new_lines: nullableInt(),
  new_start: nullableInt(),
  old_lines: nullableInt(),
  old_start: nullableInt(),
});
/** BetaTextEditorCodeExecutionToolResultError */
export const EditorErrorSchema = Type.Object({
  type: Type.Literal('text_editor_code_execution_tool_result_error'),
  error_code: EditorErrorCodeSchema,
  error_message: Type.Union([Type.String(), Type.Null()]),
});
/** BetaTextEditorCodeExecutionToolResultBlock */
export const EditorToolResultSchema = Type.Object({
  type: Type.Literal('text_editor_code_execution_tool_result'),
  tool_use_id: Type.String(),
  content: Type.Union([ViewResultSchema, CreateResultSchema, StrReplaceResultSchema, EditorErrorSchema]),
});

export type BashToolResultBlock = Static<typeof BashToolResultSchema>;
export type EditorToolResultBlock = Static<typeof EditorToolResultSchema>;
export type AnthropicResultBlock = BashToolResultBlock | EditorToolResultBlock;
export type AnthropicExecResponse = Omit<ExecResponse, 'result_block'> & { result_block: AnthropicResultBlock };
/** What POST /exec answers: contract v1, or the native blocks when asked for. */
export type ExecAnswer = ExecResponse | AnthropicExecResponse;

export type EditorCommand = 'view' | 'create' | 'str_replace' | 'insert' | 'undo_edit';

/** What the mapping needs besides the v1 answer: the editor command of the call (without
 * it, the command is told from the v1 detail fields). */
export interface CallInfo {
  editorCommand?: EditorCommand;
}

/** The native block of a v1 answer (v1 answers are never error-shaped: see the module comment). */
export function toAnthropicBlock(v1: ExecResponse, call: CallInfo = {}): AnthropicResultBlock {
  const block = v1.result_block;
  const c = block.content;
  const id = block.tool_use_id;
  if (block.type === 'text_editor_code_execution_tool_result')
    return { type: 'text_editor_code_execution_tool_result', tool_use_id: id, content: editorContent(c, call.editorCommand) };
  // Python and bash: the bash blocks.
  let content: BashToolResultBlock['content'];
  if (v1.limit_exceeded === 'wall_clock') content = { type: 'bash_code_execution_tool_result_error', error_code: 'execution_time_exceeded' };
  else if (v1.limit_exceeded === 'file_size') content = { type: 'bash_code_execution_tool_result_error', error_code: 'output_file_too_large' };
  else {
    content = {
      type: 'bash_code_execution_result',
      stdout: c.stdout,
      stderr: c.stderr,
      return_code: c.return_code,
      content: fileRefs(c.content),
    };
  }
  return { type: 'bash_code_execution_tool_result', tool_use_id: id, content };
}

/** The whole answer in the native format: every field but result_block as in v1. */
export function toAnthropicAnswer(v1: ExecResponse, call: CallInfo = {}): AnthropicExecResponse {
  return { ...v1, result_block: toAnthropicBlock(v1, call) };
}

/** The answer to a call refused before it ran (see the module comment), as an error block
 * of the tool's v1 block type (`text_editor_…` gets the editor's, every other the bash one). */
export function refusalAnswer(v1BlockType: string, toolUseId: string, code: RefusalCode, message: string, executionTimeMs: number): AnthropicExecResponse {
  const result_block: AnthropicResultBlock =
    v1BlockType === 'text_editor_code_execution_tool_result'
      ? {
          type: 'text_editor_code_execution_tool_result',
          tool_use_id: toolUseId,
          content: { type: 'text_editor_code_execution_tool_result_error', error_code: code, error_message: message },
        }
      : { type: 'bash_code_execution_tool_result', tool_use_id: toolUseId, content: { type: 'bash_code_execution_tool_result_error', error_code: code } };
  return {
    tool_use_id: toolUseId,
    result_block,
    execution_time_ms: Math.max(0, Math.trunc(executionTimeMs)),
    limit_exceeded: null,
    interpreter_restarted: false,
    stdout_dropped_bytes: 0,
    stderr_dropped_bytes: 0,
  };
}

/** The native error code of a server error that refuses a call, or null: it stays an HTTP error. */
export function refusalCodeOf(sandboxErrorCode: string): RefusalCode | null {
  switch (sandboxErrorCode) {
    case 'SBX_VALIDATION':
      return 'invalid_tool_input';
    case 'SBX_SESSION_BUSY':
      return 'too_many_requests';
    case 'SBX_SERVER_BUSY':
      return 'unavailable';
    default:
      return null;
  }
}

/** One line of an error's detail (a string, or a FastAPI-style list of problems). */
export function refusalMessage(detail: unknown): string {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    const first = detail[0] as { loc?: unknown; msg?: unknown } | undefined;
    if (first && typeof first.msg === 'string') {
      const loc = Array.isArray(first.loc) && first.loc.length > 0 ? `input.${first.loc.join('.')}: ` : 'input: ';
      return `${loc}${first.msg}`;
    }
  }
  return 'invalid tool input';
}

function fileRefs(files: ExecResponse['result_block']['content']['content']): { type: 'bash_code_execution_output'; file_id: string }[] {
  const out: { type: 'bash_code_execution_output'; file_id: string }[] = [];
  for (const f of files)
    if (f.type === 'code_execution_output' && typeof f.file_id === 'string' && f.file_id !== '') out.push({ type: 'bash_code_execution_output', file_id: f.file_id });
  return out;
}

const intOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isInteger(v) ? v : null);

function editorContent(c: ExecResponse['result_block']['content'], given: EditorCommand | undefined): EditorToolResultBlock['content'] {
  const errorCode = c.error_code;
  if (c.return_code !== 0 || typeof errorCode === 'string') {
    const code: EditorErrorCodeNative = (EDITOR_ERROR_CODES as readonly string[]).includes(errorCode as string) ? (errorCode as EditorErrorCodeNative) : 'invalid_tool_input';
    return { type: 'text_editor_code_execution_tool_result_error', error_code: code, error_message: editorMessage(c.stderr) };
  }
  const command: EditorCommand =
    given ?? (c.file_type !== undefined ? 'view' : c.is_file_update !== undefined ? 'create' : c.old_start !== undefined ? 'str_replace' : 'undo_edit');
  switch (command) {
    case 'view': {
      const isText = c.file_type === 'text';
      return {
        type: 'text_editor_code_execution_view_result',
        content: c.stdout,
        file_type: 'text',
        num_lines: isText ? intOrNull(c.num_lines) : null,
        start_line: isText ? intOrNull(c.start_line) : null,
        total_lines: isText ? intOrNull(c.total_lines) : null,
      };
    }
    case 'create':
      return { type: 'text_editor_code_execution_create_result', is_file_update: c.is_file_update === true };
    case 'undo_edit':
      return { type: 'text_editor_code_execution_create_result', is_file_update: true };
    case 'str_replace':
    case 'insert':
      return {
        type: 'text_editor_code_execution_str_replace_result',
        lines: Array.isArray(c.lines) ? c.lines.filter((l): l is string => typeof l === 'string') : null,
        new_lines: intOrNull(c.new_lines),
        new_start: intOrNull(c.new_start),
        old_lines: intOrNull(c.old_lines),
        old_start: intOrNull(c.old_start),
      };
  }
}

/** The editor's stderr as one message: its `text_editor: ` prefixes and final newline dropped. */
function editorMessage(stderr: string): string | null {
  const text = stderr.replace(/^text_editor: /gm, '').replace(/\n$/, '');
  return text === '' ? null : text;
}

/**
 * A native answer cut to fit a server short of memory (the route's lean path, as for v1):
 * each text field at most `maxChars` characters, the diff lines dropped, and `note` added
 * where the block has room for text (stderr, the viewed text, the error message).
 */
export function leanAnthropicAnswer(a: AnthropicExecResponse, maxChars: number, note: string): AnthropicExecResponse {
  const cut = (s: string) => (s.length > maxChars ? `${s.slice(0, maxChars)}\n... [output cut: the server is short of memory for answers]` : s);
  const withNote = (s: string) => `${cut(s)}${s === '' || s.endsWith('\n') ? '' : '\n'}${note}`;
  const b = a.result_block;
  let result_block: AnthropicResultBlock;
  if (b.type === 'bash_code_execution_tool_result') {
    const c = b.content;
    result_block = c.type === 'bash_code_execution_result' ? { ...b, content: { ...c, stdout: cut(c.stdout), stderr: withNote(c.stderr) } } : b;
  } else {
    const c = b.content;
    switch (c.type) {
      case 'text_editor_code_execution_view_result':
        result_block = { ...b, content: { ...c, content: withNote(c.content) } };
        break;
      case 'text_editor_code_execution_str_replace_result':
        result_block = { ...b, content: { ...c, lines: null } };
        break;
      case 'text_editor_code_execution_tool_result_error':
        result_block = { ...b, content: { ...c, error_message: c.error_message === null ? null : cut(c.error_message) } };
        break;
      case 'text_editor_code_execution_create_result':
        result_block = b;
        break;
    }
  }
  return { ...a, result_block, limit_exceeded: a.limit_exceeded ?? 'output_bytes' };
}
