/**
 * POST /sessions/{id}/exec: resolves the tool (tools.ts), validates its input, runs the
 * call in the session's queue, and shapes the result into the contract v1 response
 * (tools/result.ts).
 */
import { randomHex } from '../ids.js';
import Value from 'typebox/value';
import { Compile } from 'typebox/compile';
import type { TSchema } from 'typebox';
import type { Config } from '../config.js';
import type { MemoryBudget } from '../budget.js';
import { SandboxError, isSandboxError } from '../errors.js';
import type { Session } from './session.js';
import type { EditorWorkers } from '../tools/text-editor.js';
import { appendNotes, buildResponse, type ToolRun } from '../tools/result.js';
import type { OutputListener } from '../runner/interpreter.js';
import { refusalAnswer, refusalCodeOf, refusalMessage, toAnthropicAnswer, type EditorCommand, type ExecAnswer, type ResultFormat } from '../tools/anthropic-format.js';
import { TOOLS, TOOL_NAMES, isToolName, type ToolCallContext, type ToolName, type ToolServices } from './tools.js';

export interface ExecBody {
  tool: string;
  input: Record<string, unknown>;
  timeout_seconds?: number;
  tool_use_id?: string | null;
  /** 'anthropic': answer with Anthropic's native blocks (tools/anthropic-format.ts). */
  result_format?: ResultFormat | null;
}

/** A safe echo of an offending value: scalars (strings cut short); never a deep structure. */
function preview(v: unknown): unknown {
  if (typeof v === 'string') return v.length > 200 ? `${v.slice(0, 200)}…` : v;
  if (v === null || typeof v === 'number' || typeof v === 'boolean') return v;
  return Array.isArray(v) ? '<array>' : typeof v === 'object' ? '<object>' : String(v);
}

/** What a streamed call is told as it runs (http/exec-streams.ts). */
export interface ExecHooks {
  /** The call leaves the queue and starts (called once, synchronously, before the tool runs). */
  onStart?: (toolUseId: string) => void;
  /** Output the call keeps, as it comes (python and bash; the editor has none). */
  onOutput?: OutputListener;
}

export class ExecService {
  private readonly validators: Record<ToolName, { schema: TSchema; check: (v: unknown) => boolean }>;
  private readonly services: ToolServices;

  constructor(
    private readonly config: Config,
    budget: MemoryBudget,
    /** The worker pool for large editor operations (shared by every session). */
    editorWorkers: EditorWorkers,
  ) {
    this.services = { config, budget, editorWorkers };
    const validator = (name: ToolName) => {
      const schema: TSchema = TOOLS[name].inputSchema(config);
      const compiled = Compile(schema);
      return { schema, check: (v: unknown) => compiled.Check(v) };
    };
    this.validators = Object.fromEntries(TOOL_NAMES.map((name) => [name, validator(name)])) as unknown as ExecService['validators'];
  }

  /** Runs one call in `session` (the route resolved it once) and returns the whole answer
   * in the format the body asks for. `signal` aborts when the client is gone: a waiting
   * call leaves the queue, a running one is interrupted as at a timeout. `hooks`
   * (streaming) are told when the call starts and of its output. */
  async exec(session: Session, body: ExecBody, signal?: AbortSignal, hooks?: ExecHooks): Promise<ExecAnswer> {
    const tool = body.tool;
    if (!isToolName(tool)) throw new SandboxError('SBX_UNKNOWN_TOOL', `unknown tool: ${tool}; expected one of ${TOOL_NAMES.join(', ')}`);
    session.touch();
    const toolUseId = body.tool_use_id || `srvtoolu_${randomHex(12)}`;
    const started = performance.now();
    const blockType = TOOLS[tool].resultBlockType;
    try {
      this.validate(tool, body.input);
      const timeoutMs = Math.min(body.timeout_seconds ?? this.config.defaultTimeoutSeconds, this.config.maxTimeoutSeconds) * 1000;
      const call = { session, input: body.input, timeoutMs, signal, onOutput: hooks?.onOutput };
      const start = hooks?.onStart
        ? () => {
            hooks.onStart?.(toolUseId);
            return this.runWithArtifacts(tool, call);
          }
        : () => this.runWithArtifacts(tool, call);
      const run = await session.guard(() => session.serialize(this.config.execQueueMax, start, signal));
      const v1 = buildResponse(blockType, toolUseId, run, performance.now() - started);
      if (body.result_format !== 'anthropic') return v1;
      // (the editor's input was validated: its command is one of EditorCommand)
      return toAnthropicAnswer(v1, tool === 'text_editor_code_execution' ? { editorCommand: body.input.command as EditorCommand } : {});
    } catch (e) {
      // Native format: a call refused before it ran is an error block, not an HTTP error.
      const code = body.result_format === 'anthropic' && isSandboxError(e) ? refusalCodeOf(e.code) : null;
      if (code === null) throw e;
      return refusalAnswer(blockType, toolUseId, code, refusalMessage((e as SandboxError).detail), performance.now() - started);
    }
  }

  /** Runs the tool between two looks at the workspace: the files the call created or
   * modified are kept and listed in its result (files/artifacts.ts). */
  private async runWithArtifacts(tool: ToolName, call: ToolCallContext): Promise<ToolRun> {
    if (this.config.artifactsMaxFiles === 0) return TOOLS[tool].run(this.services, call);
    const store = call.session.box.artifacts;
    await store.begin();
    // The editor changes nothing but the files it writes itself: those are looked at, not
    // the whole workspace (ArtifactStore.collectWritten).
    const editor = tool === 'text_editor_code_execution';
    if (editor) call.session.box.fs.takeWritten();
    const run = await TOOLS[tool].run(this.services, call);
    const written = editor ? call.session.box.fs.takeWritten() : null;
    const { files, notes } = written !== null ? await store.collectWritten(written) : await store.collect();
    return { ...run, files, stderr: appendNotes(run.stderr, notes) };
  }

  private validate(tool: ToolName, input: Record<string, unknown>): void {
    const { schema, check } = this.validators[tool];
    if (check(input)) return;
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
}
