/**
 * The three tools of contract v1, one record each: its name, the schema of its input, the
 * result block type it answers with, and how it runs in a session. Everything else (the
 * unknown-tool check, validation, the OpenAPI description, dispatch) is derived from this
 * table, so a fourth tool is one more record here.
 *
 * Output policy (as the reference, clients compare exact strings): Python's stdout and
 * stderr lose one trailing newline, bash output is returned as written; a stream over the
 * cap keeps its head and its tail with the reference's truncation marker between them,
 * which names the spill file holding the complete output (files/spill.ts); any limit adds
 * one plain-English line to stderr and sets limit_exceeded.
 */
import Type, { type TSchema } from 'typebox';
import type { Config } from '../config.js';
import type { MemoryBudget } from '../budget.js';
import type { Session } from './session.js';
import { detectLimit, describeLimit, type LimitKind } from '../limits.js';
import { TextEditor, WorkspaceEditorFs, type EditorWorkers, type EditorInput } from '../tools/text-editor.js';
import { truncationMarker, appendNotes, stripOneNewline, type ToolRun } from '../tools/result.js';
import { callRouter } from '../tools/platform-tools.js';
import type { CappedBuffer } from '../runner/output.js';
import type { OutputListener } from '../runner/interpreter.js';
import { OutputSpill, spillCallName } from '../files/spill.js';
import type { Box } from './box.js';

/** What a tool needs of the server besides its session. */
export interface ToolServices {
  config: Config;
  budget: MemoryBudget;
  /** The worker pool for large editor operations (shared by every session). */
  editorWorkers: EditorWorkers;
}

/** One call: its session, its validated input, its deadline, and its client's presence. */
export interface ToolCallContext {
  session: Session;
  input: Record<string, unknown>;
  timeoutMs: number;
  /** Aborts when the client disconnects. */
  signal: AbortSignal | undefined;
  /** Streaming: told of the output the call keeps as it comes (python and bash). */
  onOutput?: OutputListener;
}

export interface ToolDef {
  resultBlockType: string;
  inputSchema: (config: Config) => TSchema;
  run: (services: ToolServices, call: ToolCallContext) => Promise<ToolRun>;
}

const nullable = <T extends TSchema>(t: T) => Type.Optional(Type.Union([t, Type.Null()]));

export const TOOLS = {
  code_execution: {
    resultBlockType: 'code_execution_tool_result',
    inputSchema: (c) => Type.Object({ code: Type.String({ minLength: 1, maxLength: c.maxCodeChars }) }),
    run: runPython,
  },
  bash_code_execution: {
    resultBlockType: 'bash_code_execution_tool_result',
    inputSchema: (c) => Type.Object({ command: Type.String({ minLength: 1, maxLength: c.maxCodeChars }) }),
    run: runBash,
  },
  text_editor_code_execution: {
    resultBlockType: 'text_editor_code_execution_tool_result',
    inputSchema: () =>
      Type.Object({
        command: Type.Union(['view', 'create', 'str_replace', 'insert', 'undo_edit'].map((c) => Type.Literal(c))),
        path: Type.String(),
        file_text: nullable(Type.String()),
        old_str: nullable(Type.String()),
        new_str: nullable(Type.String()),
        insert_line: nullable(Type.Integer()),
        view_range: nullable(Type.Array(Type.Integer())),
      }),
    run: runEditor,
  },
} satisfies Record<string, ToolDef>;

export type ToolName = keyof typeof TOOLS;
export const TOOL_NAMES = Object.keys(TOOLS) as ToolName[];

export function isToolName(name: string): name is ToolName {
  return Object.hasOwn(TOOLS, name);
}

async function runPython({ config, budget }: ToolServices, { session, input, timeoutMs, signal, onOutput }: ToolCallContext): Promise<ToolRun> {
  const box = session.box;
  const tools = session.tools;
  const spill = newSpills(config, box);
  let outcome;
  try {
    outcome = await box.runPython(input.code as string, timeoutMs, config.maxOutputBytes, {
      onToolCall: tools
        ? (call, stop) => callRouter(tools, call, { maxReplyBytes: config.toolReplyMaxBytes, reserve: (bytes) => budget.reserve(bytes, 'a tool reply'), signal: stop })
        : undefined,
      signal,
      onOutput,
      spill: spill ? { ...spill, maxBytes: config.outputSpillMaxBytes } : undefined,
    });
  } catch (e) {
    discardSpills(spill);
    throw e;
  }
  const name = spillCallName();
  const out = await shapeStream(outcome.stdout, outcome.droppedByDriver.stdout, spill?.stdout, `${name}-stdout.txt`, stripOneNewline);
  const err = await shapeStream(outcome.stderr, outcome.droppedByDriver.stderr, spill?.stderr, `${name}-stderr.txt`, stripOneNewline);
  const stdoutDropped = out.dropped;
  const stderrDropped = err.dropped;
  const stdout = out.text;
  let stderr = err.text;
  let { limit, notes } = classify(config, 'runner', outcome.limit, outcome.returnCode, outcome.stderr, outcome.notes, stdoutDropped + stderrDropped);
  if ((limit === null || limit === 'output_bytes') && box.consumeOomKill()) {
    limit = 'memory';
    notes = [...notes, `runner: a process was killed: ${describeLimit('memory', config)}; interpreter state was kept`];
  }
  stderr = appendNotes(stderr, notes);
  return { stdout, stderr, returnCode: outcome.returnCode, limit, interpreterRestarted: outcome.stateLost, stdoutDroppedBytes: stdoutDropped, stderrDroppedBytes: stderrDropped };
}

async function runBash({ config }: ToolServices, { session, input, timeoutMs, signal, onOutput }: ToolCallContext): Promise<ToolRun> {
  const spill = newSpills(config, session.box);
  let o;
  try {
    o = await session.box.runBash(input.command as string, timeoutMs, config.maxOutputBytes, signal, onOutput, spill);
  } catch (e) {
    discardSpills(spill);
    throw e;
  }
  const name = spillCallName();
  const out = await shapeStream(o.stdout, 0, spill?.stdout, `${name}-stdout.txt`, (s) => s);
  const err = await shapeStream(o.stderr, 0, spill?.stderr, `${name}-stderr.txt`, (s) => s);
  const dropped = out.dropped + err.dropped;
  const { limit, notes } = classify(config, 'bash', o.limit, o.returnCode, null, o.notes, dropped);
  const stderr = appendNotes(err.text, notes);
  return { stdout: out.text, stderr, returnCode: o.returnCode, limit, interpreterRestarted: false, stdoutDroppedBytes: out.dropped, stderrDroppedBytes: err.dropped };
}

/** A call's spill sinks, when SANDBOX_OUTPUT_SPILL_MAX_BYTES is above the output cap. */
function newSpills(config: Config, box: Box): { stdout: OutputSpill; stderr: OutputSpill } | undefined {
  if (config.outputSpillMaxBytes <= config.maxOutputBytes) return undefined;
  return {
    stdout: new OutputSpill(box.stagingDir, config.outputSpillMaxBytes, box.fs),
    stderr: new OutputSpill(box.stagingDir, config.outputSpillMaxBytes, box.fs),
  };
}

function discardSpills(spill: { stdout: OutputSpill; stderr: OutputSpill } | undefined): void {
  spill?.stdout.discard();
  spill?.stderr.discard();
}

/**
 * A stream's text for the result: whole when it fit its cap; else its head, the marker
 * (how many bytes were left out, and the spill file that holds the complete output), and
 * its tail. `trim` is applied to the end of the text (Python loses one trailing newline).
 */
async function shapeStream(
  buf: CappedBuffer,
  droppedByDriver: number,
  spill: OutputSpill | undefined,
  spillName: string,
  trim: (s: string) => string,
): Promise<{ text: string; dropped: number }> {
  const dropped = buf.dropped + droppedByDriver;
  if (!buf.overflowed && dropped === 0) {
    spill?.discard();
    return { text: trim(buf.head()), dropped: 0 };
  }
  let where: string | undefined;
  if (spill?.used) {
    const path = await spill.commit(spillName);
    if (path === null) where = `the complete output could not be saved: ${spill.failure ?? 'unknown error'}`;
    else if (spill.failure !== null) where = `its first ${spill.written} bytes are in ${path} (then ${spill.failure})`;
    else if (spill.dropped > 0 || droppedByDriver > 0) where = `its first ${spill.written} bytes are in ${path} (SANDBOX_OUTPUT_SPILL_MAX_BYTES)`;
    else where = `the complete output is in ${path}`;
  } else {
    spill?.discard();
  }
  const marker = truncationMarker(dropped, where);
  return { text: buf.overflowed ? `${buf.head()}${marker}\n${trim(buf.tail())}` : trim(buf.head()) + marker, dropped };
}

async function runEditor({ config, budget, editorWorkers }: ToolServices, { session, input, signal, timeoutMs }: ToolCallContext): Promise<ToolRun> {
  // (its work in the worker pool stops when the client leaves or the session goes; the
  // listeners go with the call: the session's signal lives as long as the session)
  const cancel = new AbortController();
  const stop = () => cancel.abort();
  if (signal?.aborted || session.ended.aborted) stop();
  signal?.addEventListener('abort', stop, { once: true });
  session.ended.addEventListener('abort', stop, { once: true });
  // (the call's timeout_seconds: work past it in the worker pool is stopped)
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), timeoutMs);
  const editor = new TextEditor(new WorkspaceEditorFs(session.box.fs), session.undo, {
    maxOutputBytes: config.maxOutputBytes,
    budget,
    workers: editorWorkers,
    signal: cancel.signal,
    deadline: { signal: deadline.signal, seconds: timeoutMs / 1000 },
  });
  let r: Awaited<ReturnType<TextEditor['run']>>;
  try {
    r = await editor.run(input as unknown as EditorInput);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', stop);
    session.ended.removeEventListener('abort', stop);
  }
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

/** The limit to report: the one the runner saw, else one the program's failure shows,
 * else the output cap if bytes were dropped. */
function classify(
  config: Config,
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
    if (seen) return { limit: seen, notes: [...notes, `${prefix}: ${describeLimit(seen, config)}`] };
  }
  if (droppedBytes > 0) return { limit: 'output_bytes', notes: [...notes, `${prefix}: ${describeLimit('output_bytes', config)}; ${droppedBytes} bytes were dropped`] };
  return { limit: null, notes };
}
