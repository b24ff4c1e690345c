import Type from 'typebox';
import { promises as fsp } from 'node:fs';
import type { App, AppDeps } from '../app.js';
import { ErrorBody, SessionParams } from '../schemas.js';
import { generateStub, validateRouting, validateToolNames } from '../../tools/platform-tools.js';
import { SESSION_LIB_DIR } from '../../sandbox/bwrap-args.js';

/** Bounds of a registration: its body is validated (and its stub written) whole. */
const MAX_TOOLS = 1000;
const MAX_DOC_CHARS = 16 * 1024;
const REGISTER_BODY_LIMIT = 4 * 1024 * 1024;

const RegisterBody = Type.Object({
  callback_url: Type.String({ maxLength: 4096 }),
  token: Type.String({ maxLength: 4096 }),
  tools: Type.Array(Type.Object({ name: Type.String({ maxLength: 128 }), doc: Type.Optional(Type.String({ maxLength: MAX_DOC_CHARS })) }), { default: [], maxItems: MAX_TOOLS }),
  timeout_seconds: Type.Integer({ minimum: 1, maximum: 3600, default: 300 }),
});

export function registerToolRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/sessions/:id/programmatic-tools/register',
    {
      bodyLimit: REGISTER_BODY_LIMIT,
      schema: {
        summary: "Register programmatic tools callable from the session's Python as _platform_tools",
        params: SessionParams,
        body: RegisterBody,
        response: { 200: Type.Object({ stub_path: Type.String(), tool_count: Type.Integer() }), 404: ErrorBody, 422: ErrorBody },
      },
    },
    async (req) => {
      const session = deps.sessions.get(req.params.id);
      session.touch();
      const { callback_url, token, tools, timeout_seconds } = req.body;
      validateRouting(callback_url, token);
      validateToolNames(tools);
      // The stub holds neither the URL nor the token; those stay in the server.
      await session.guard(() => fsp.writeFile(`${session.box.libDir}/_platform_tools.py`, generateStub(tools, timeout_seconds), { mode: 0o644 }));
      session.tools = { callbackUrl: callback_url, token, names: new Set(tools.map((t) => t.name)), timeoutSeconds: timeout_seconds };
      return { stub_path: `${SESSION_LIB_DIR}/_platform_tools.py`, tool_count: tools.length };
    },
  );
}
