import type { App, AppDeps } from '../app.js';
import type { ExecBody as ExecBodyInput } from '../../sessions/exec.js';
import { ErrorBody, ExecBody, ExecResponse, SessionParams } from '../schemas.js';

export function registerExecRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/sessions/:id/exec',
    {
      bodyLimit: execBodyLimit(deps.config.maxCodeChars),
      schema: {
        summary: 'Run Python, bash or the text editor in the session',
        params: SessionParams,
        body: ExecBody,
        response: { 200: ExecResponse, 400: ErrorBody, 404: ErrorBody, 422: ErrorBody, 429: ErrorBody, 503: ErrorBody },
      },
    },
    async (req, reply) => {
      // A client that goes away before its answer cancels the call: a waiting call leaves
      // the queue, a running one is interrupted as at a timeout (its slot is freed).
      const gone = new AbortController();
      const onClose = () => {
        if (!reply.raw.writableEnded) gone.abort();
      };
      reply.raw.once('close', onClose);
      try {
        return await deps.exec.exec(req.params.id, req.body as ExecBodyInput, gone.signal);
      } finally {
        reply.raw.off('close', onClose);
      }
    },
  );
}

/** Code or a command of maxCodeChars characters, JSON-escaped, plus room for the other
 * fields; at least 1 MiB (the text editor's file_text travels here too). */
export function execBodyLimit(maxCodeChars: number): number {
  return Math.max(1024 * 1024, maxCodeChars * 8 + 64 * 1024);
}
