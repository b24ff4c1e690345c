/**
 * GET /sessions/{id}/exec/streams/{stream_id}: resumes a streamed exec call
 * (exec-streams.ts) after the event named by the `Last-Event-ID` header (or the
 * `last_event_id` query parameter, for clients that cannot set headers; neither: from the
 * first event). 400 for an id that is not a non-negative integer or is past the stream's
 * last event; 404 for an unknown stream (or one of another session); 410 when the events
 * after it are no longer kept (the detail names the id to resume from instead).
 */
import Type from 'typebox';
import { SandboxError } from '../../errors.js';
import type { ExecStreams } from '../exec-streams.js';
import type { RoutePlugin } from '../types.js';
import { ErrorBody, SessionParams } from '../schemas.js';

export interface StreamRoutesOptions {
  streams: ExecStreams;
}

const StreamParams = Type.Object({ ...SessionParams.properties, stream_id: Type.String({ minLength: 1, maxLength: 64, description: 'Stream id (str_…)' }) });
const StreamQuery = Type.Object({ last_event_id: Type.Optional(Type.String({ maxLength: 32, description: 'As the Last-Event-ID header' })) });

export const streamRoutes: RoutePlugin<StreamRoutesOptions> = (app, deps, done) => {
  app.get(
    '/sessions/:id/exec/streams/:stream_id',
    {
      schema: {
        summary: 'Resume a streamed exec call after the event named by Last-Event-ID',
        params: StreamParams,
        querystring: StreamQuery,
        response: { 400: ErrorBody, 404: ErrorBody, 410: ErrorBody, 503: ErrorBody },
      },
    },
    async (req, reply) => {
      const afterId = parseLastEventId(req.headers['last-event-id'] ?? req.query.last_event_id);
      const stream = deps.streams.find(req.params.id, req.params.stream_id);
      stream.checkResume(afterId);
      void reply.hijack();
      stream.attach(reply.raw, afterId, req.log);
      return reply;
    },
  );
  done();
};

/** The id of the last event a client has (0: none). */
export function parseLastEventId(value: string | string[] | undefined): number {
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  if (text.trim() === '') return 0; // an empty id is no id (as EventSource sends it)
  if (!/^\s*\d{1,15}\s*$/.test(text)) {
    throw new SandboxError('SBX_BAD_REQUEST', `Last-Event-ID must be the id of an event of this stream (a non-negative integer), not ${JSON.stringify(text.slice(0, 40))}`);
  }
  return Number(text);
}
