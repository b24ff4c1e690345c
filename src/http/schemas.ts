/** Schemas shared by the routes: they validate requests and generate /openapi.json. */
import Type from 'typebox';
import { LimitKindSchema } from '../limits.js';
import { TOOL_NAMES } from '../sessions/tools.js';
import { BashToolResultSchema, EditorToolResultSchema, RESULT_FORMATS } from '../tools/anthropic-format.js';

export const SessionParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128, description: 'Session id (sbx_<replica>_…)' }) });

export const ErrorBody = Type.Object(
  {
    detail: Type.Union([Type.String(), Type.Array(Type.Unknown())]),
    code: Type.String({ description: 'Stable machine code, e.g. SBX_SESSION_NOT_FOUND' }),
  },
  { description: 'Error' },
);

export const SessionHandle = Type.Object({
  session_id: Type.String(),
  created_at: Type.Number({ description: 'POSIX seconds' }),
  last_activity_at: Type.Number({ description: 'POSIX seconds' }),
  idle_timeout_seconds: Type.Integer(),
  max_lifetime_seconds: Type.Integer(),
});

export const CreateSessionBody = Type.Object(
  {
    idle_timeout_seconds: Type.Optional(Type.Integer({ minimum: 1 })),
    max_lifetime_seconds: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  { additionalProperties: true, description: 'Lifetime hints (null or absent: the server default); values above the server ceilings are clamped' },
);

/** Longest tool_use_id accepted (Anthropic's ids are about 30 characters). */
export const TOOL_USE_ID_MAX_CHARS = 256;

export const ExecBody = Type.Object(
  {
    tool: Type.String({ description: TOOL_NAMES.join(' | ') }),
    input: Type.Object(
      {},
      {
        additionalProperties: true,
        description:
          'code_execution: {code}; bash_code_execution: {command}; text_editor_code_execution: {command, path, file_text?, old_str?, new_str?, insert_line?, view_range?}',
      },
    ),
    timeout_seconds: Type.Optional(Type.Integer({ minimum: 1, description: 'Default 30; clamped to SANDBOX_RUNNER_WALL_CLOCK_SECONDS' })),
    // Echoed twice in the answer: bounded, so no id can make an answer large.
    tool_use_id: Type.Optional(Type.Union([Type.String({ maxLength: TOOL_USE_ID_MAX_CHARS }), Type.Null()])),
    result_format: Type.Optional(
      Type.Union([Type.Literal(RESULT_FORMATS[0]), Type.Literal(RESULT_FORMATS[1]), Type.Null()], {
        description:
          'extension: "v1" (default) or "anthropic": result_block in the native shapes of Anthropic\'s code_execution_20250825 tool (bash and text editor blocks, *_tool_result_error variants)',
      }),
    ),
  },
  { additionalProperties: true },
);

export const ExecResponse = Type.Object({
  tool_use_id: Type.String(),
  // Contract v1 first (the default), then the native blocks of result_format "anthropic".
  result_block: Type.Union([
    Type.Object({
      type: Type.String(),
      tool_use_id: Type.String(),
      content: Type.Object(
        {
          type: Type.Literal('code_execution_result'),
          stdout: Type.String(),
          stderr: Type.String(),
          return_code: Type.Integer(),
          content: Type.Array(Type.Object({ type: Type.String(), file_id: Type.String(), filename: Type.String() }, { additionalProperties: true })),
        },
        { additionalProperties: true },
      ),
    }),
    BashToolResultSchema,
    EditorToolResultSchema,
  ]),
  execution_time_ms: Type.Integer(),
  limit_exceeded: Type.Union([LimitKindSchema, Type.Null()], { description: 'extension: which limit fired' }),
  interpreter_restarted: Type.Boolean({ description: 'extension: the interpreter was restarted and its state lost' }),
  stdout_dropped_bytes: Type.Integer({ description: 'extension' }),
  stderr_dropped_bytes: Type.Integer({ description: 'extension' }),
});

export const FileEntry = Type.Object({
  path: Type.String(),
  size_bytes: Type.Integer(),
  mime_type: Type.Union([Type.String(), Type.Null()]),
  modified_at: Type.Number(),
  is_dir: Type.Optional(Type.Boolean()),
});

export const FileListResponse = Type.Object({
  files: Type.Array(FileEntry),
  truncated: Type.Optional(
    Type.Boolean({ description: 'extension: true when the listing stopped at SANDBOX_MAX_LIST_ENTRIES or SANDBOX_MAX_LIST_BYTES and more entries exist; absent otherwise' }),
  ),
});
