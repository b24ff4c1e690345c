/**
 * The file API: upload (multipart, staged then renamed in), download (exactly the bytes
 * announced, or a dropped connection), listing (capped by entries and by JSON size, then
 * `truncated: true`; streamed out in chunks with a yield between them).
 *
 * A session can be deleted or reaped while one of these runs: its box and folder go away
 * under the operation. Every failure (and every success that landed in a folder being
 * removed) of an operation whose session was closed meanwhile answers 404
 * SBX_SESSION_NOT_FOUND, never a 500; uploads and listings stop at the next chunk or
 * name, downloads at the next chunk or within WATCH_INTERVAL_MS for a client that reads
 * nothing, so no fd keeps a deleted workspace alive for long.
 *
 * Lookups keyed by names from the workspace or the client are Maps (mime-types' own
 * table is a null-prototype object): `x.constructor` or `x.__proto__` is just a name.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { promises as fsp } from 'node:fs';
import { Readable } from 'node:stream';
import Type from 'typebox';
import type { Config } from '../../config.js';
import type { MemoryBudget } from '../../budget.js';
import type { RoutePlugin } from '../types.js';
import { sessionOf } from '../scoped-session.js';
import { ErrorBody, FileListResponse, SessionParams } from '../schemas.js';
import { SandboxError } from '../../errors.js';
import { releaseWithResponse } from '../hold.js';
import { resolveInside } from '../../files/paths.js';
import { mimeOf } from '../../files/mime.js';
import { listHeldBytes, listReserveBytes, type FileEntry as Entry } from '../../files/workspace-fs.js';

/** Size of the pieces a listing answer is written in; the event loop runs between them. */
const LIST_CHUNK_CHARS = 64 * 1024;
/** How often a running download checks that its session still exists. */
const WATCH_INTERVAL_MS = 250;

/** A listing answer as JSON text in pieces of about LIST_CHUNK_CHARS, yielding to the
 * event loop between pieces: the same bytes the response schema would give. */
async function* listingJson(entries: Entry[], truncated: boolean): AsyncGenerator<string> {
  let chunk = '{"files":[';
  for (let i = 0; i < entries.length; i++) {
    chunk += (i === 0 ? '' : ',') + JSON.stringify(entries[i]);
    if (chunk.length >= LIST_CHUNK_CHARS) {
      yield chunk;
      chunk = '';
      await yieldToLoop();
    }
  }
  yield `${chunk}]${truncated ? ',"truncated":true' : ''}}`;
}

/** RFC 6266 attachment header with an ASCII fallback and the UTF-8 name. */
export function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

export interface FileRoutesOptions {
  budget: Pick<MemoryBudget, 'reserve'>;
  config: Pick<Config, 'maxDownloadBytes' | 'maxListEntries' | 'maxListBytes'>;
}

/** Registered inside the /sessions/:id scope (session.ts): each call counts as activity. */
export const fileRoutes: RoutePlugin<FileRoutesOptions> = (app, deps, done) => {
  app.post(
    '/sessions/:id/files',
    {
      config: { touchSession: true },
      schema: {
        summary: 'Upload a file (multipart: part "file", optional field "path")',
        params: SessionParams,
        consumes: ['multipart/form-data'],
        response: { 201: Type.Object({ path: Type.String(), size_bytes: Type.Integer() }), 403: ErrorBody, 404: ErrorBody, 413: ErrorBody, 422: ErrorBody },
      },
    },
    async (req, reply) => {
      const session = sessionOf(req);
      const fs = session.box.fs;
      const cancelled = () => session.closed;
      let staged: { staged: string; size: number; filename: string } | null = null;
      let path: string | undefined;
      try {
        for await (const part of req.parts()) {
          if (part.type === 'file') {
            if (part.fieldname !== 'file' || staged) {
              part.file.resume();
              continue;
            }
            const s = await fs.stage(part.file, cancelled);
            staged = { ...s, filename: part.filename };
            if (part.file.truncated) throw new SandboxError('SBX_FILE_TOO_LARGE', 'file exceeds upload limit');
          } else if (part.fieldname === 'path' && typeof part.value === 'string') {
            path = part.value;
          }
        }
        if (!staged) throw new SandboxError('SBX_VALIDATION', [{ type: 'missing', loc: ['body', 'file'], msg: 'Field required', input: null }]);
        const dest = path || staged.filename || 'upload.bin';
        const resolved = resolveInside(dest);
        await session.fileRequest(() => fs.commit(staged!.staged, resolved, dest));
        session.touch();
        return reply.code(201).send({ path: resolved.rel, size_bytes: staged.size });
      } catch (e) {
        if (staged) await fs.discard(staged.staged).catch(() => {});
        // Refused before the body was read to its end (a full disk, a file too large): the
        // rest of it is read and dropped (no memory: bounded by the route's body limit and
        // the request timeout), so the client can finish sending and read the answer, and
        // the connection can carry its next request. (Left unread, a keep-alive client that
        // reused the connection waited for an answer that could not come; closed at once,
        // a client still sending saw a reset instead of the answer.)
        if (!req.raw.complete) {
          req.raw.unpipe();
          req.raw.resume();
        }
        if (session.closed) throw session.gone();
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
      config: { touchSession: true },
      schema: {
        summary: 'Download a file (regular files only; never follows a link)',
        params: SessionParams,
        querystring: Type.Object({ path: Type.String() }),
        response: { 400: ErrorBody, 403: ErrorBody, 404: ErrorBody, 413: ErrorBody },
      },
    },
    async (req, reply) => {
      const session = sessionOf(req);
      const display = req.query.path;
      const resolved = resolveInside(display);
      const { stream, size } = await session.guard(async () => {
        const opened = await session.fileRequest(() => session.box.fs.streamFile(resolved, display, deps.config.maxDownloadBytes, () => session.closed));
        if (session.closed && opened.stream instanceof Readable) opened.stream.destroy();
        return opened;
      });
      if (stream instanceof Readable) {
        // A deleted session's workspace is not kept alive by a download: the stream checks
        // before each chunk, and this timer catches a client that stopped reading. The
        // stream ends with an error, and the connection with it (Content-Length was sent).
        const watch = setInterval(() => {
          if (session.closed) stream.destroy(session.gone());
        }, WATCH_INTERVAL_MS);
        watch.unref();
        stream.once('close', () => clearInterval(watch));
      }
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
    '/sessions/:id/artifacts/:file_id',
    {
      config: { touchSession: true },
      schema: {
        summary: 'Download an artifact: a file as it was when the call that listed it ended (extension)',
        description:
          "file_id comes from a result's inner content. The bytes are the session's own copy: a later rewrite or delete of the workspace file does not change them. 404 for an id this session does not hold (another session's, or one evicted past SANDBOX_ARTIFACTS_KEEP_MAX / _KEEP_MB).",
        params: Type.Object({ id: SessionParams.properties.id, file_id: Type.String({ minLength: 1, maxLength: 64 }) }),
        response: { 404: ErrorBody, 422: ErrorBody },
      },
    },
    async (req, reply) => {
      const session = sessionOf(req);
      const fileId = (req.params as { file_id: string }).file_id;
      const kept = session.box.artifacts.get(fileId);
      const notFound = () => new SandboxError('SBX_FILE_NOT_FOUND', `artifact not found: ${fileId.slice(0, 64)}`);
      if (!kept) throw notFound();
      // The copy is the server's own (a 0700 folder the sandbox cannot see): a plain path.
      const handle = await session
        .guard(() => fsp.open(kept.file, 'r'))
        .catch((e: unknown) => {
          if ((e as SandboxError).code === 'SBX_SESSION_NOT_FOUND') throw e;
          throw notFound(); // evicted since the lookup
        });
      const size = kept.entry.size_bytes;
      let body: Buffer | Readable;
      if (size === 0) {
        await handle.close();
        body = Buffer.alloc(0);
      } else {
        // (Nobody writes the copy: it holds exactly size bytes.)
        body = handle.createReadStream({ start: 0, end: size - 1 });
      }
      const name = kept.entry.filename.split('/').at(-1) ?? 'file';
      let type = kept.entry.mime_type ?? 'application/octet-stream';
      if (type.startsWith('text/')) type += '; charset=utf-8';
      return reply
        .header('content-type', type)
        .header('content-length', String(size))
        .header('content-disposition', contentDisposition(name))
        .header('x-content-type-options', 'nosniff')
        .header('content-security-policy', 'sandbox')
        .send(body as never);
    },
  );

  app.get(
    '/sessions/:id/files/list',
    {
      config: { touchSession: true },
      schema: {
        summary: 'List files (non-recursive, files only; extension: recursive=true adds folders)',
        description:
          'At most SANDBOX_MAX_LIST_ENTRIES entries and SANDBOX_MAX_LIST_BYTES of entry JSON; past either the walk stops and the answer carries truncated: true (extension).',
        params: SessionParams,
        querystring: Type.Object({ path: Type.String({ default: '.' }), recursive: Type.Boolean({ default: false }) }),
        response: {
          200: FileListResponse,
          403: ErrorBody,
          404: ErrorBody,
          503: ErrorBody,
        },
      },
    },
    async (req, reply) => {
      const session = sessionOf(req);
      const display = req.query.path;
      const resolved = resolveInside(display);
      const limits = { maxEntries: deps.config.maxListEntries, maxBytes: deps.config.maxListBytes };
      // Held until the answer is written (or the connection dies): the entries live that long.
      const reservation = deps.budget.reserve(listReserveBytes(limits), 'a file listing');
      let handedOver = false;
      try {
        const listing = await session.fileRequest(() =>
          session.box.fs.list(resolved, display, { recursive: req.query.recursive, ...limits, cancelled: () => session.closed }, mimeOf),
        );
        const { entries, truncated } = listing;
        // From here on it holds what it found, not what it might have: a small listing
        // that a client reads slowly keeps a small share of the budget.
        reservation.shrink(listHeldBytes(listing));
        const body = Readable.from(listingJson(entries, truncated), { objectMode: false });
        body.once('close', () => reservation.release());
        releaseWithResponse(reply.raw, reservation);
        handedOver = true;
        return reply.header('content-type', 'application/json; charset=utf-8').send(body as never);
      } finally {
        if (!handedOver) reservation.release();
      }
    },
  );
  done();
};
