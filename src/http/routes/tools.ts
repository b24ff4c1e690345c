import Type from 'typebox';
import { promises as fsp } from 'node:fs';
import type { App, AppDeps } from '../app.js';
import { ErrorBody, SessionParams } from '../schemas.js';
import { SandboxError } from '../../errors.js';
import { generateStub, validateToolNames } from '../../tools/platform-tools.js';
import { SESSION_LIB_DIR } from '../../sandbox/bwrap-args.js';

const RegisterBody = Type.Object({
  callback_url: Type.String(),
  token: Type.String(),
  tools: Type.Array(Type.Object({ name: Type.String(), doc: Type.Optional(Type.String()) }), { default: [] }),
  timeout_seconds: Type.Integer({ minimum: 1, maximum: 3600, default: 300 }),
});

export function registerToolRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/sessions/:id/programmatic-tools/register',
    {
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
      if (callback_url.trim() === '') throw new SandboxError('SBX_VALIDATION', 'callback_url must not be empty');
      if (token === '') throw new SandboxError('SBX_VALIDATION', 'token must not be empty');
      let url: URL;
      try {
        url = new URL(callback_url);
      } catch {
        throw new SandboxError('SBX_VALIDATION', 'callback_url is not a valid URL');
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new SandboxError('SBX_VALIDATION', 'callback_url must be http or https');
      validateToolNames(tools);
      // The stub holds neither the URL nor the token; those stay in the server.
      await fsp.writeFile(`${session.box.libDir}/_platform_tools.py`, generateStub(tools, timeout_seconds), { mode: 0o644 });
      session.tools = { callbackUrl: callback_url, token, names: new Set(tools.map((t) => t.name)), timeoutSeconds: timeout_seconds };
      return { stub_path: `${SESSION_LIB_DIR}/_platform_tools.py`, tool_count: tools.length };
    },
  );
}
