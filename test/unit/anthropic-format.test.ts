/**
 * The pure mapping from contract v1 answers to Anthropic's code_execution_20250825 blocks
 * (src/tools/anthropic-format.ts), on fabricated v1 answers: every block shape, the field
 * names of the SDK types (exactly, nothing added), the error codes, the produced-file refs,
 * and the answer fields that stay as in v1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Value from 'typebox/value';
import {
  BASH_ERROR_CODES,
  EDITOR_ERROR_CODES,
  BashToolResultSchema,
  EditorToolResultSchema,
  leanAnthropicAnswer,
  refusalAnswer,
  refusalCodeOf,
  refusalMessage,
  toAnthropicAnswer,
  toAnthropicBlock,
  type AnthropicResultBlock,
} from '../../src/tools/anthropic-format.js';
import { buildResponse, type ExecResponse, type ToolRun } from '../../src/tools/result.js';
import type { LimitKind } from '../../src/limits.js';

const ID = 'srvtoolu_0123456789abcdef01234567';

function v1(blockType: string, run: Partial<ToolRun> = {}): ExecResponse {
  return buildResponse(
    blockType,
    ID,
    { stdout: '', stderr: '', returnCode: 0, limit: null, interpreterRestarted: false, stdoutDroppedBytes: 0, stderrDroppedBytes: 0, ...run },
    12.7,
  );
}

/** Field names of the SDK types (anthropic-sdk-python, types/beta), sorted. */
const SDK_KEYS: Record<string, string[]> = {
  bash_code_execution_tool_result: ['content', 'tool_use_id', 'type'],
  text_editor_code_execution_tool_result: ['content', 'tool_use_id', 'type'],
  bash_code_execution_result: ['content', 'return_code', 'stderr', 'stdout', 'type'],
  bash_code_execution_output: ['file_id', 'type'],
  bash_code_execution_tool_result_error: ['error_code', 'type'],
  text_editor_code_execution_view_result: ['content', 'file_type', 'num_lines', 'start_line', 'total_lines', 'type'],
  text_editor_code_execution_create_result: ['is_file_update', 'type'],
  text_editor_code_execution_str_replace_result: ['lines', 'new_lines', 'new_start', 'old_lines', 'old_start', 'type'],
  text_editor_code_execution_tool_result_error: ['error_code', 'error_message', 'type'],
};

/** The block and its content have exactly the SDK's fields, and validate against the schemas. */
function assertExact(block: AnthropicResultBlock): void {
  assert.deepEqual(Object.keys(block).sort(), SDK_KEYS[block.type]);
  assert.deepEqual(Object.keys(block.content).sort(), SDK_KEYS[block.content.type], `fields of ${block.content.type}`);
  if (block.content.type === 'bash_code_execution_result') for (const f of block.content.content) assert.deepEqual(Object.keys(f).sort(), SDK_KEYS[f.type]);
  const schema = block.type === 'bash_code_execution_tool_result' ? BashToolResultSchema : EditorToolResultSchema;
  assert.ok(Value.Check(schema, block), `${JSON.stringify(block)} matches its schema`);
}

test('the error codes are the SDK enums', () => {
  assert.deepEqual([...BASH_ERROR_CODES], ['invalid_tool_input', 'unavailable', 'too_many_requests', 'execution_time_exceeded', 'output_file_too_large']);
  assert.deepEqual([...EDITOR_ERROR_CODES], ['invalid_tool_input', 'unavailable', 'too_many_requests', 'execution_time_exceeded', 'file_not_found']);
});

test('python maps to a bash_code_execution_result; every other answer field stays as in v1', () => {
  const a = v1('code_execution_tool_result', { stdout: '4', stderr: 'warn', returnCode: 1, interpreterRestarted: true, stdoutDroppedBytes: 3, stderrDroppedBytes: 5 });
  const n = toAnthropicAnswer(a);
  assert.deepEqual(n.result_block, {
    type: 'bash_code_execution_tool_result',
    tool_use_id: ID,
    content: { type: 'bash_code_execution_result', stdout: '4', stderr: 'warn', return_code: 1, content: [] },
  });
  assertExact(n.result_block);
  const rest = (x: object) => Object.fromEntries(Object.entries(x).filter(([k]) => k !== 'result_block'));
  assert.deepEqual(rest(n), rest(a));
  assert.equal(Object.keys(rest(n)).length, 6);
  assert.equal(n.execution_time_ms, 12);
  assert.equal(n.interpreter_restarted, true);
});

test('bash keeps its output as written, return code included', () => {
  const b = toAnthropicBlock(v1('bash_code_execution_tool_result', { stdout: 'hi\n', stderr: 'err\n', returnCode: 3 }));
  assert.deepEqual(b.content, { type: 'bash_code_execution_result', stdout: 'hi\n', stderr: 'err\n', return_code: 3, content: [] });
  assertExact(b);
});

test('produced files become bash_code_execution_output refs (file_id only); other entries are left out', () => {
  const files = [
    { type: 'code_execution_output', file_id: 'file_011CNha8iCJcU1wXNR6q4V8w', filename: 'chart.png' },
    { type: 'something_else', file_id: 'file_x', filename: 'x.bin' },
    { type: 'code_execution_output', file_id: '', filename: 'empty-id.txt' },
    { type: 'code_execution_output', file_id: 'file_2', filename: 'data.csv' },
  ];
  for (const t of ['code_execution_tool_result', 'bash_code_execution_tool_result']) {
    const b = toAnthropicBlock(v1(t, { files }));
    assert.equal(b.content.type, 'bash_code_execution_result');
    assert.deepEqual((b.content as { content: unknown }).content, [
      { type: 'bash_code_execution_output', file_id: 'file_011CNha8iCJcU1wXNR6q4V8w' },
      { type: 'bash_code_execution_output', file_id: 'file_2' },
    ]);
    assertExact(b);
  }
});

test('a wall-clock timeout is execution_time_exceeded, a file over the size limit output_file_too_large; other limits stay results', () => {
  const expected: [LimitKind, string | null][] = [
    ['wall_clock', 'execution_time_exceeded'],
    ['file_size', 'output_file_too_large'],
    ['memory', null],
    ['cpu', null],
    ['output_bytes', null],
    ['processes', null],
    ['disk', null],
  ];
  for (const t of ['code_execution_tool_result', 'bash_code_execution_tool_result']) {
    for (const [limit, code] of expected) {
      const a = v1(t, { stdout: 'partial', stderr: `runner: ${limit}\n`, returnCode: 137, limit });
      const n = toAnthropicAnswer(a);
      assertExact(n.result_block);
      assert.equal(n.limit_exceeded, limit);
      if (code === null)
        assert.deepEqual(n.result_block.content, { type: 'bash_code_execution_result', stdout: 'partial', stderr: `runner: ${limit}\n`, return_code: 137, content: [] });
      else assert.deepEqual(n.result_block.content, { type: 'bash_code_execution_tool_result_error', error_code: code });
    }
  }
});

const EDITOR = 'text_editor_code_execution_tool_result';

test('editor view of a file: a view result with the v1 detail fields', () => {
  const a = v1(EDITOR, { stdout: 'two\nthree', details: { file_type: 'text', num_lines: 2, start_line: 2, total_lines: 3 } });
  const b = toAnthropicBlock(a, { editorCommand: 'view' });
  assert.deepEqual(b, {
    type: EDITOR,
    tool_use_id: ID,
    content: { type: 'text_editor_code_execution_view_result', content: 'two\nthree', file_type: 'text', num_lines: 2, start_line: 2, total_lines: 3 },
  });
  assertExact(b);
});

test('editor view of a folder: a text view of the listing, line counts null', () => {
  const b = toAnthropicBlock(v1(EDITOR, { stdout: 'a.txt\nsub\nsub/b.txt\n', details: { file_type: 'directory' } }), { editorCommand: 'view' });
  assert.deepEqual(b.content, {
    type: 'text_editor_code_execution_view_result',
    content: 'a.txt\nsub\nsub/b.txt\n',
    file_type: 'text',
    num_lines: null,
    start_line: null,
    total_lines: null,
  });
  assertExact(b);
});

test('editor create: is_file_update as v1 says; undo_edit: a create result that updates the file', () => {
  for (const isUpdate of [false, true]) {
    const b = toAnthropicBlock(v1(EDITOR, { stdout: 'File created: a.txt\n', details: { is_file_update: isUpdate } }), { editorCommand: 'create' });
    assert.deepEqual(b.content, { type: 'text_editor_code_execution_create_result', is_file_update: isUpdate });
    assertExact(b);
  }
  const u = toAnthropicBlock(v1(EDITOR, { stdout: 'Reverted a.txt\n', details: {} }), { editorCommand: 'undo_edit' });
  assert.deepEqual(u.content, { type: 'text_editor_code_execution_create_result', is_file_update: true });
  assertExact(u);
});

test('editor str_replace: the diff hunk; insert (no hunk in v1): a str_replace result with null fields', () => {
  const hunk = { old_start: 1, old_lines: 3, new_start: 1, new_lines: 3, lines: [' one', '-two', '+TWO', ' three'] };
  const b = toAnthropicBlock(v1(EDITOR, { stdout: 'Edited a.txt\n', details: hunk }), { editorCommand: 'str_replace' });
  assert.deepEqual(b.content, { type: 'text_editor_code_execution_str_replace_result', ...hunk });
  assertExact(b);
  const i = toAnthropicBlock(v1(EDITOR, { stdout: 'Inserted into a.txt\n', details: {} }), { editorCommand: 'insert' });
  assert.deepEqual(i.content, { type: 'text_editor_code_execution_str_replace_result', lines: null, new_lines: null, new_start: null, old_lines: null, old_start: null });
  assertExact(i);
});

test('without the command, it is told from the v1 detail fields', () => {
  assert.equal(
    toAnthropicBlock(v1(EDITOR, { stdout: 'x', details: { file_type: 'text', num_lines: 1, start_line: 1, total_lines: 1 } })).content.type,
    'text_editor_code_execution_view_result',
  );
  assert.equal(toAnthropicBlock(v1(EDITOR, { details: { is_file_update: false } })).content.type, 'text_editor_code_execution_create_result');
  assert.equal(
    toAnthropicBlock(v1(EDITOR, { details: { old_start: 1, old_lines: 1, new_start: 1, new_lines: 1, lines: ['-a', '+b'] } })).content.type,
    'text_editor_code_execution_str_replace_result',
  );
});

test('editor errors: the error block, codes mapped to Anthropic list, message without the text_editor prefix', () => {
  const cases: [string, string][] = [
    ['file_not_found', 'file_not_found'],
    ['invalid_tool_input', 'invalid_tool_input'],
    ['string_not_found', 'invalid_tool_input'],
    ['unavailable', 'unavailable'],
    ['something_new', 'invalid_tool_input'],
  ];
  for (const [v1Code, code] of cases) {
    const b = toAnthropicBlock(v1(EDITOR, { stderr: 'text_editor: file not found: nope.txt\n', returnCode: 1, details: { error_code: v1Code } }), { editorCommand: 'view' });
    assert.deepEqual(b.content, { type: 'text_editor_code_execution_tool_result_error', error_code: code, error_message: 'file not found: nope.txt' });
    assertExact(b);
  }
  const two = toAnthropicBlock(v1(EDITOR, { stderr: 'text_editor: first\ntext_editor: second\n', returnCode: 1, details: { error_code: 'invalid_tool_input' } }), {
    editorCommand: 'create',
  });
  assert.equal((two.content as { error_message: string }).error_message, 'first\nsecond');
  const silent = toAnthropicBlock(v1(EDITOR, { stderr: '', returnCode: 1, details: { error_code: 'unavailable' } }), { editorCommand: 'undo_edit' });
  assert.equal((silent.content as { error_message: unknown }).error_message, null);
});

test('calls refused before they run: error blocks of the tool, with the v1 answer fields', () => {
  assert.equal(refusalCodeOf('SBX_VALIDATION'), 'invalid_tool_input');
  assert.equal(refusalCodeOf('SBX_SESSION_BUSY'), 'too_many_requests');
  assert.equal(refusalCodeOf('SBX_SERVER_BUSY'), 'unavailable');
  for (const code of ['SBX_SESSION_NOT_FOUND', 'SBX_UNKNOWN_TOOL', 'SBX_BAD_REQUEST', 'SBX_INTERNAL', 'SBX_SHUTTING_DOWN']) assert.equal(refusalCodeOf(code), null, code);

  const e = refusalAnswer(EDITOR, ID, 'too_many_requests', 'session busy', 3.9);
  assert.deepEqual(e, {
    tool_use_id: ID,
    result_block: {
      type: EDITOR,
      tool_use_id: ID,
      content: { type: 'text_editor_code_execution_tool_result_error', error_code: 'too_many_requests', error_message: 'session busy' },
    },
    execution_time_ms: 3,
    limit_exceeded: null,
    interpreter_restarted: false,
    stdout_dropped_bytes: 0,
    stderr_dropped_bytes: 0,
  });
  assertExact(e.result_block);
  for (const t of ['code_execution_tool_result', 'bash_code_execution_tool_result']) {
    const b = refusalAnswer(t, ID, 'invalid_tool_input', 'input: Field required: code', 0);
    assert.deepEqual(b.result_block, {
      type: 'bash_code_execution_tool_result',
      tool_use_id: ID,
      content: { type: 'bash_code_execution_tool_result_error', error_code: 'invalid_tool_input' },
    });
    assertExact(b.result_block);
  }
});

test('refusal messages: a string as it is, the first problem of a validation list with its place', () => {
  assert.equal(refusalMessage('too busy'), 'too busy');
  assert.equal(refusalMessage([{ type: 'required', loc: [], msg: 'Field required: path', input: '<object>' }]), 'input: Field required: path');
  assert.equal(refusalMessage([{ type: 'type', loc: ['view_range', '0'], msg: 'must be integer', input: 'a' }, { msg: 'second' }]), 'input.view_range.0: must be integer');
  assert.equal(refusalMessage([]), 'invalid tool input');
});

test('lean native answers: text cut, the note added where the block has text, diff lines dropped', () => {
  const note = 'server: cut\n';
  const big = 'x'.repeat(100);
  const bash = leanAnthropicAnswer(toAnthropicAnswer(v1('bash_code_execution_tool_result', { stdout: big, stderr: big })), 10, note);
  const bc = bash.result_block.content as { stdout: string; stderr: string };
  assert.ok(bc.stdout.startsWith('x'.repeat(10)) && bc.stdout.length < 100);
  assert.ok(bc.stderr.endsWith(`\n${note}`));
  assert.equal(bash.limit_exceeded, 'output_bytes');
  assertExact(bash.result_block);
  const view = leanAnthropicAnswer(
    toAnthropicAnswer(v1(EDITOR, { stdout: big, details: { file_type: 'text', num_lines: 1, start_line: 1, total_lines: 1 } }), { editorCommand: 'view' }),
    10,
    note,
  );
  assert.ok((view.result_block.content as { content: string }).content.endsWith(note));
  assertExact(view.result_block);
  const diff = leanAnthropicAnswer(
    toAnthropicAnswer(v1(EDITOR, { details: { old_start: 1, old_lines: 1, new_start: 1, new_lines: 1, lines: ['-a', '+b'] } }), { editorCommand: 'str_replace' }),
    10,
    note,
  );
  assert.equal((diff.result_block.content as { lines: unknown }).lines, null);
  assert.equal((diff.result_block.content as { old_start: unknown }).old_start, 1);
  assertExact(diff.result_block);
  const timeout = toAnthropicAnswer(v1('bash_code_execution_tool_result', { limit: 'wall_clock' }));
  assert.deepEqual(leanAnthropicAnswer(timeout, 10, note).result_block, timeout.result_block);
});
