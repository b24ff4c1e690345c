import Type from 'typebox';
import { promises as fsp } from 'node:fs';
import type { RoutePlugin } from '../types.js';
import { sessionOf } from '../scoped-session.js';
import { ErrorBody, SessionParams } from '../schemas.js';
import { SandboxError } from '../../errors.js';
import { generateStub, validateRouting, validateToolNames } from '../../tools/platform-tools.js';
import { SANDBOX_PATHS } from '../../sandbox/spec.js';

/** Bounds of a registration: its body is validated (and its stub written) whole. */
const MAX_TOOLS = 1000;
const MAX_DOC_CHARS = 16 * 1024;
const REGISTER_BODY_LIMIT = 4 * 1024 * 1024;

export const RegisterBody = Type.Object({
  callback_url: Type.String({ maxLength: 4096 }),
  token: Type.String({ maxLength: 4096 }),
  tools: Type.Array(Type.Object({ name: Type.String({ maxLength: 128 }), doc: Type.Optional(Type.String({ maxLength: MAX_DOC_CHARS })) }), { default: [], maxItems: MAX_TOOLS }),
  timeout_seconds: Type.Integer({ minimum: 1, maximum: 3600, default: 300 }),
});

/** Registered inside the /sessions/:id scope (session.ts): a registration counts as
 * activity. It needs nothing beyond the session. */
export const toolRoutes: RoutePlugin<Record<never, never>> = (app, _opts, done) => {
  app.post(
    '/sessions/:id/programmatic-tools/register',
    {
      bodyLimit: REGISTER_BODY_LIMIT,
      config: { touchSession: true },
      schema: {
        summary: "Register programmatic tools callable from the session's Python as _platform_tools",
        params: SessionParams,
        body: RegisterBody,
        response: { 200: Type.Object({ stub_path: Type.String(), tool_count: Type.Integer() }), 404: ErrorBody, 422: ErrorBody },
      },
    },
    async (req) => {
      const session = sessionOf(req);
      const { callback_url, token, tools, timeout_seconds } = req.body;
      validateRouting(callback_url, token);
      validateToolNames(tools);
      // The stub holds neither the URL nor the token; those stay in the server.
      // Written whole and renamed in: a full disk leaves the previous stub as it was.
      await session.guard(async () => {
        const stub = `${session.box.libDir}/_platform_tools.py`;
        const staged = `${stub}.${process.pid}.tmp`;
        try {
          await fsp.writeFile(staged, generateStub(tools, timeout_seconds), { mode: 0o644 });
          await fsp.rename(staged, stub);
        } catch (e) {
          await fsp.rm(staged, { force: true }).catch(() => {});
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'ENOSPC' || code === 'EDQUOT')
            throw new SandboxError('SBX_FILE_TOO_LARGE', "no space left in the session's folder for the tools module (SANDBOX_WORKSPACE_MB)");
          throw e;
        }
      });
      session.tools = { callbackUrl: callback_url, token, names: new Set(tools.map((t) => t.name)), timeoutSeconds: timeout_seconds };
      return { stub_path: `${SANDBOX_PATHS.sessionLib}/_platform_tools.py`, tool_count: tools.length };
    },
  );
  done();
};
