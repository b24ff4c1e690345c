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
import { SandboxError } from '../errors.js';
import type { Session } from './session.js';
import type { EditorWorkers } from '../tools/text-editor.js';
import { appendNotes, buildResponse, type ExecResponse, type ToolRun } from '../tools/result.js';
import { TOOLS, TOOL_NAMES, isToolName, type ToolCallContext, type ToolName, type ToolServices } from './tools.js';

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

  /** Runs one call in `session` (the route resolved it once). `signal` aborts when the
   * client is gone: a waiting call leaves the queue, a running one is interrupted as at a
   * timeout. */
  async exec(session: Session, body: ExecBody, signal?: AbortSignal): Promise<ExecResponse> {
    const tool = body.tool;
    if (!isToolName(tool)) throw new SandboxError('SBX_UNKNOWN_TOOL', `unknown tool: ${tool}; expected one of ${TOOL_NAMES.join(', ')}`);
    session.touch();
    const toolUseId = body.tool_use_id || `srvtoolu_${randomHex(12)}`;
    const started = performance.now();
    this.validate(tool, body.input);
    const timeoutMs = Math.min(body.timeout_seconds ?? this.config.defaultTimeoutSeconds, this.config.maxTimeoutSeconds) * 1000;
    const call = { session, input: body.input, timeoutMs, signal };
    const run = await session.guard(() => session.serialize(this.config.execQueueMax, () => this.runWithArtifacts(tool, call), signal));
    return buildResponse(TOOLS[tool].resultBlockType, toolUseId, run, performance.now() - started);
  }

  /** Runs the tool between two looks at the workspace: the files the call created or
   * modified are kept and listed in its result (files/artifacts.ts). */
  private async runWithArtifacts(tool: ToolName, call: ToolCallContext): Promise<ToolRun> {
    if (this.config.artifactsMaxFiles === 0) return TOOLS[tool].run(this.services, call);
    const store = call.session.box.artifacts;
    await store.begin();
    const run = await TOOLS[tool].run(this.services, call);
    const { files, notes } = await store.collect();
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
