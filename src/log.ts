/**
 * The server's logger: pino, JSON lines on stdout. Fastify is given this same instance.
 * Secrets never reach it: request bodies, headers and tool tokens are not logged.
 *
 * Lines are buffered (up to 8 KiB) and written at most 200 ms late, so the access log
 * costs no write() per request on the exec path; the buffer is flushed synchronously
 * when the process exits, whatever the reason.
 */
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

const FLUSH_EVERY_MS = 200;

export function createLogger(level: string): Logger {
  const dest = pino.destination({ dest: 1, sync: true, minLength: 8192 });
  const timer = setInterval(() => dest.flush(), FLUSH_EVERY_MS);
  timer.unref();
  process.on('exit', () => {
    try {
      dest.flushSync();
    } catch {
      /* stdout is gone */
    }
  });
  return pino(
    {
      level,
      base: { service: 'otari-sandbox-container' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization'], censor: '[redacted]' },
    },
    dest,
  );
}
