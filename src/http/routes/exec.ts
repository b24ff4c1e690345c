import type { App, AppDeps } from '../app.js';
import type { ExecBody as ExecBodyInput } from '../../sessions/exec.js';
import { ErrorBody, ExecBody, ExecResponse, SessionParams } from '../schemas.js';

export function registerExecRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/sessions/:id/exec',
    {
      schema: {
        summary: 'Run Python, bash or the text editor in the session',
        params: SessionParams,
        body: ExecBody,
        response: { 200: ExecResponse, 400: ErrorBody, 404: ErrorBody, 422: ErrorBody, 429: ErrorBody },
      },
    },
    async (req) => deps.exec.exec(req.params.id, req.body as ExecBodyInput),
  );
}
