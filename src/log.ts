/**
 * The server's logger: pino, JSON lines on stdout. Fastify is given this same instance.
 * Secrets never reach it: request bodies, headers and tool tokens are not logged.
 */
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'otari-sandbox-container' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization'], censor: '[redacted]' },
  });
}
