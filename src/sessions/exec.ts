/**
 * POST /sessions/{id}/exec: validates the tool input, runs the call in the session's
 * queue, and shapes the result (tools/result.ts). Python's stdout and stderr lose one
 * trailing newline (as the reference does, clients compare exact strings); bash output
 * is returned as written. A stream over the cap ends with the reference's truncation
 * marker. Any limit adds one plain-English line to stderr and sets limit_exceeded.
 */
import { randomHex } from '../ids.js';
import Type from 'typebox';
import Value from 'typebox/value';
import { Compile } from 'typebox/compile';
import type { Config } from '../config.js';
import type { MemoryBudget } from '../budget.js';
import { SandboxError } from '../errors.js';
import type { SessionManager } from './manager.js';
import type { Session } from './session.js';
import { detectLimit, describeLimit, type LimitKind } from '../limits.js';
import { TextEditor, WorkspaceEditorFs, type EditorWorkers, type EditorInput } from '../tools/text-editor.js';
import { buildResponse, truncationMarker, appendNotes, stripOneNewline, type ExecResponse, type ToolName, type ToolRun } from '../tools/result.js';
import { callRouter } from '../tools/platform-tools.js';
import type { CappedBuffer } from '../runner/output.js';

export const TOOL_NAMES = ['code_execution', 'bash_code_execution', 'text_editor_code_execution'] as const;

export function toolInputSchemas(maxCodeChars: number) {
  return {
    code_execution: Type.Object({ code: Type.String({ minLength: 1, maxLength: maxCodeChars }) }),
    bash_code_execution: Type.Object({ command: Type.String({ minLength: 1, maxLength: maxCodeChars }) }),
    text_editor_code_execution: Type.Object({
      command: Type.Union(['view', 'create', 'str_replace', 'insert', 'undo_edit'].map((c) => Type.Literal(c))),
      path: Type.String(),
      file_text: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      old_str: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      new_str: Type.Optional(Type.Union([Type.String(), Type.Null()])),
      insert_line: Type.Optional(Type.Union([Type.Integer(), Type.Null()])),
      view_range: Type.Optional(Type.Union([Type.Array(Type.Integer()), Type.Null()])),
    }),
  };
}

export interface ExecBody {
  tool: string;
  input: Record<string, unknown>;
  timeout_seconds?: number;
  tool_use_id?: string | null;
}

/** A safe echo of an offending value: scalars (strings cut short); never a deep structure. */
function preview(v: unknown): unknown {
  if (typeof v === 'string') return v.length > 200 ? `${v.slice(0, 200)}…` : v;
  if (v === null || typeof v === 'number' || typeof v === 'boolean') return v;
  return Array.isArray(v) ? '<array>' : typeof v === 'object' ? '<object>' : String(v);
}

export class ExecService {
  private readonly schemas: ReturnType<typeof toolInputSchemas>;
  private readonly checks: Record<ToolName, (v: unknown) => boolean>;

  constructor(
    private readonly config: Config,
    private readonly sessions: SessionManager,
    private readonly budget: MemoryBudget,
    /** The worker pool for large editor operations (shared by every session). */
    private readonly editorWorkers: EditorWorkers,
  ) {
    this.schemas = toolInputSchemas(config.maxCodeChars);
    const compiled = (name: ToolName) => {
      const validator = Compile(this.schemas[name]);
      return (v: unknown) => validator.Check(v);
    };
    this.checks = {
      code_execution: compiled('code_execution'),
      bash_code_execution: compiled('bash_code_execution'),
      text_editor_code_execution: compiled('text_editor_code_execution'),
    };
  }

  /** Runs one call. `signal` aborts when the client is gone: a waiting call leaves the
   * queue, a running one is interrupted as at a timeout. */
  async exec(sessionId: string, body: ExecBody, signal?: AbortSignal): Promise<ExecResponse> {
    if (!(TOOL_NAMES as readonly string[]).includes(body.tool)) {
      throw new SandboxError('SBX_UNKNOWN_TOOL', `unknown tool: ${body.tool}; expected one of ${TOOL_NAMES.join(', ')}`);
    }
    const tool = body.tool as ToolName;
    const session = this.sessions.get(sessionId);
    session.touch();
    const toolUseId = body.tool_use_id || `srvtoolu_${randomHex(12)}`;
    const started = performance.now();
    this.validate(tool, body.input);
    const timeoutMs = Math.min(body.timeout_seconds ?? this.config.defaultTimeoutSeconds, this.config.maxTimeoutSeconds) * 1000;
    const run = await session.guard(() => session.serialize(this.config.execQueueMax, () => this.run(session, tool, body.input, timeoutMs, signal), signal));
    return buildResponse(tool, toolUseId, run, performance.now() - started);
  }

  private validate(tool: ToolName, input: Record<string, unknown>): void {
    if (this.checks[tool](input)) return;
    const schema = this.schemas[tool];
    // Value.Errors lists every problem; the tool schemas are flat, so arrays are the only
    // place a hostile input can multiply them: its errors are taken from a copy whose
    // arrays are cut to a few items.
    const shallow = Object.fromEntries(Object.entries(input).map(([k, v]) => [k, Array.isArray(v) ? v.slice(0, 4) : v]));
    const detail = Value.Errors(schema, shallow)
      .slice(0, 20)
      .map((e) => ({
        type: e.keyword,
        loc: e.instancePath === '' ? [] : e.instancePath.slice(1).split('/'),
        msg: e.keyword === 'required' ? `Field required: ${String((e.params as { requiredProperties?: string[] }).requiredProperties?.join(', ') ?? '')}` : e.message,
        input: preview(e.instancePath === '' ? shallow : Value.Pointer.Get(shallow, e.instancePath)),
      }));
    if (detail.length === 0) detail.push({ type: 'type', loc: [], msg: `invalid input for ${tool}: an array holds a value of the wrong type`, input: '<object>' });
    throw new SandboxError('SBX_VALIDATION', detail);
  }

  private async run(session: Session, tool: ToolName, input: Record<string, unknown>, timeoutMs: number, signal: AbortSignal | undefined): Promise<ToolRun> {
    switch (tool) {
      case 'code_execution':
        return this.runCode(session, input.code as string, timeoutMs, signal);
      case 'bash_code_execution':
        return this.runBash(session, input.command as string, timeoutMs, signal);
      case 'text_editor_code_execution': {
        const editor = new TextEditor(new WorkspaceEditorFs(session.box.fs), session.undo, {
          maxOutputBytes: this.config.maxOutputBytes,
          budget: this.budget,
          workers: this.editorWorkers,
        });
        const r = await editor.run(input as unknown as EditorInput);
        return {
          stdout: r.stdout,
          stderr: r.stderr,
          returnCode: r.return_code,
          details: r.details,
          limit: r.limit_exceeded,
          interpreterRestarted: false,
          stdoutDroppedBytes: r.stdout_dropped_bytes,
          stderrDroppedBytes: 0,
        };
      }
      default: {
        const never: never = tool;
        throw new SandboxError('SBX_UNKNOWN_TOOL', `unknown tool: ${String(never)}`);
      }
    }
  }

  private async runCode(session: Session, code: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<ToolRun> {
    const box = session.box;
    const diedWhileIdle = await box.ensureInterpreter();
    const tools = session.tools;
    const outcome = await box.interpreter.exec({
      code,
      timeoutMs,
      maxOutputBytes: this.config.maxOutputBytes,
      onToolCall: tools
        ? (call) => callRouter(tools, call, { maxReplyBytes: this.config.toolReplyMaxBytes, reserve: (bytes) => this.budget.reserve(bytes, 'a tool reply') })
        : undefined,
      signal,
    });
    if (outcome.stateLost) box.restartInterpreter().catch(() => {}); // ready for the next call
    if (diedWhileIdle) {
      outcome.notes.unshift('runner: the interpreter had stopped since the last call; it was restarted and its state was lost');
      outcome.stateLost = true;
    }
    const stdoutDropped = outcome.stdout.dropped + outcome.droppedByDriver.stdout;
    const stderrDropped = outcome.stderr.dropped + outcome.droppedByDriver.stderr;
    const stdout = stripOneNewline(outcome.stdout.text()) + (stdoutDropped > 0 ? truncationMarker(stdoutDropped) : '');
    let stderr = stripOneNewline(outcome.stderr.text()) + (stderrDropped > 0 ? truncationMarker(stderrDropped) : '');
    let { limit, notes } = this.classify('runner', outcome.limit, outcome.returnCode, outcome.stderr, outcome.notes, stdoutDropped + stderrDropped);
    if ((limit === null || limit === 'output_bytes') && box.consumeOomKill()) {
      limit = 'memory';
      notes = [...notes, `runner: a process was killed by the sandbox memory limit (${this.config.memoryMb} MiB, SANDBOX_RUNNER_MEMORY_MB); interpreter state was kept`];
    }
    stderr = appendNotes(stderr, notes);
    return { stdout, stderr, returnCode: outcome.returnCode, limit, interpreterRestarted: outcome.stateLost, stdoutDroppedBytes: stdoutDropped, stderrDroppedBytes: stderrDropped };
  }

  private async runBash(session: Session, command: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<ToolRun> {
    const o = await session.box.runBash(command, timeoutMs, this.config.maxOutputBytes, signal);
    const stdout = o.stdout.text() + (o.stdout.dropped > 0 ? truncationMarker(o.stdout.dropped) : '');
    let stderr = o.stderr.text() + (o.stderr.dropped > 0 ? truncationMarker(o.stderr.dropped) : '');
    const dropped = o.stdout.dropped + o.stderr.dropped;
    const { limit, notes } = this.classify('bash', o.limit, o.returnCode, null, o.notes, dropped);
    stderr = appendNotes(stderr, notes);
    return { stdout, stderr, returnCode: o.returnCode, limit, interpreterRestarted: false, stdoutDroppedBytes: o.stdout.dropped, stderrDroppedBytes: o.stderr.dropped };
  }

  /** The limit to report: the one the runner saw, else one the program's failure shows,
   * else the output cap if bytes were dropped. */
  private classify(
    prefix: 'runner' | 'bash',
    limit: LimitKind | null,
    returnCode: number,
    stderr: CappedBuffer | null,
    notes: string[],
    droppedBytes: number,
  ): { limit: LimitKind | null; notes: string[] } {
    if (limit) return { limit, notes };
    if (stderr && returnCode !== 0) {
      const seen = detectLimit(returnCode, stderr.text());
      if (seen) return { limit: seen, notes: [...notes, `${prefix}: ${describeLimit(seen, this.config)}`] };
    }
    if (droppedBytes > 0) return { limit: 'output_bytes', notes: [...notes, `${prefix}: ${describeLimit('output_bytes', this.config)}; ${droppedBytes} bytes were dropped`] };
    return { limit: null, notes };
  }
}
