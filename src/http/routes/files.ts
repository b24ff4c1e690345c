import Type from 'typebox';
import mime from 'mime-types';
import type { App, AppDeps } from '../app.js';
import { ErrorBody, FileEntry, SessionParams } from '../schemas.js';
import { SandboxError } from '../../errors.js';
import { resolveInside } from '../../files/paths.js';

const MAX_LIST_ENTRIES = 100_000;
const EXTRA_TYPES: Record<string, string> = {
  py: 'text/x-python',
  ipynb: 'application/x-ipynb+json',
  parquet: 'application/vnd.apache.parquet',
  log: 'text/plain',
  tsv: 'text/tab-separated-values',
};

export function mimeOf(name: string): string | null {
  const ext = name.includes('.') ? name.slice(name.lastIndexOf('.') + 1).toLowerCase() : '';
  return EXTRA_TYPES[ext] ?? (mime.lookup(name) || null);
}

/** RFC 6266 attachment header with an ASCII fallback and the UTF-8 name. */
function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

export function registerFileRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/sessions/:id/files',
    {
      schema: {
        summary: 'Upload a file (multipart: part "file", optional field "path")',
        params: SessionParams,
        consumes: ['multipart/form-data'],
        response: { 201: Type.Object({ path: Type.String(), size_bytes: Type.Integer() }), 403: ErrorBody, 404: ErrorBody, 413: ErrorBody, 422: ErrorBody },
      },
    },
    async (req, reply) => {
      const session = deps.sessions.get(req.params.id);
      session.touch();
      const fs = session.box.fs;
      let staged: { staged: string; size: number; filename: string } | null = null;
      let path: string | undefined;
      try {
        for await (const part of req.parts()) {
          if (part.type === 'file') {
            if (part.fieldname !== 'file' || staged) {
              part.file.resume();
              continue;
            }
            const s = await fs.stage(part.file);
            staged = { ...s, filename: part.filename };
            if (part.file.truncated) throw new SandboxError('SBX_FILE_TOO_LARGE', 'file exceeds upload limit');
          } else if (part.fieldname === 'path' && typeof part.value === 'string') {
            path = part.value;
          }
        }
        if (!staged) throw new SandboxError('SBX_VALIDATION', [{ type: 'missing', loc: ['body', 'file'], msg: 'Field required', input: null }]);
        const dest = path || staged.filename || 'upload.bin';
        const resolved = resolveInside(dest);
        await fs.commit(staged.staged, resolved, dest);
        session.touch();
        return reply.code(201).send({ path: resolved.rel, size_bytes: staged.size });
      } catch (e) {
        if (staged) await fs.discard(staged.staged);
        const err = e as { name?: string; statusCode?: number; code?: string; message?: string };
        // A body busboy cannot parse is the client's fault: a 400, never a 500.
        if (err.name !== 'SandboxError' && err.statusCode === undefined && err.code === undefined) {
          throw new SandboxError('SBX_BAD_REQUEST', `malformed multipart body: ${err.message ?? 'unreadable'}`);
        }
        throw e;
      }
    },
  );

  app.get(
    '/sessions/:id/files',
    {
      schema: {
        summary: 'Download a file (regular files only; never follows a link)',
        params: SessionParams,
        querystring: Type.Object({ path: Type.String() }),
        response: { 400: ErrorBody, 403: ErrorBody, 404: ErrorBody, 413: ErrorBody },
      },
    },
    async (req, reply) => {
      const session = deps.sessions.get(req.params.id);
      session.touch();
      const display = req.query.path;
      const resolved = resolveInside(display);
      const { stream, size } = await session.box.fs.streamFile(resolved, display, deps.config.maxDownloadBytes);
      const name = resolved.segments.at(-1) ?? 'file';
      let type = mimeOf(name) ?? 'application/octet-stream';
      if (type.startsWith('text/')) type += '; charset=utf-8';
      return reply
        .header('content-type', type)
        .header('content-length', String(size))
        .header('content-disposition', contentDisposition(name))
        .header('x-content-type-options', 'nosniff')
        .header('content-security-policy', 'sandbox')
        .send(stream as never);
    },
  );

  app.get(
    '/sessions/:id/files/list',
    {
      schema: {
        summary: 'List files (non-recursive, files only; extension: recursive=true adds folders)',
        params: SessionParams,
        querystring: Type.Object({ path: Type.String({ default: '.' }), recursive: Type.Boolean({ default: false }) }),
        response: { 200: Type.Object({ files: Type.Array(FileEntry) }), 403: ErrorBody, 404: ErrorBody },
      },
    },
    async (req) => {
      const session = deps.sessions.get(req.params.id);
      session.touch();
      const display = req.query.path;
      const files = await session.box.fs.list(resolveInside(display), display, { recursive: req.query.recursive, maxEntries: MAX_LIST_ENTRIES }, mimeOf);
      return { files };
    },
  );
}
