/**
 * The worker-thread side of the text editor's pool (text-editor.ts, EditorWorkers): runs
 * one pure editor operation (editor-ops.ts) off the server's event loop. The file's bytes
 * arrive transferred (not copied); the new content and the original bytes go back the
 * same way, so a 16 MiB edit costs the main thread no copy and no scan.
 */
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { runEditorOp, type EditorOp, type OpOutcome } from './editor-ops.js';

export default function runEditorTask(op: EditorOp): OpOutcome {
  const out = runEditorOp(op);
  if (!out.ok) return out;
  const buffers = new Set<ArrayBuffer>();
  for (const b of [out.written, out.original]) if (b && b.byteLength > 0) buffers.add(b.buffer as ArrayBuffer);
  if (buffers.size === 0) return out;
  return move({ [transferableSymbol]: [...buffers], [valueSymbol]: out }) as unknown as OpOutcome;
}
