/**
 * The server's logger: pino, JSON lines on stdout. Fastify is given this same instance.
 * Secrets never reach it: request bodies, headers and tool tokens are not logged.
 *
 * Lines are buffered (up to 8 KiB) and written at most 200 ms late, so the access log
 * costs no write() per request on the exec path; the buffer is flushed when the process
 * exits, whatever the reason.
 *
 * Writing never blocks the event loop: a reader that stops reading stdout (a stalled log
 * collector, a full pipe) would otherwise freeze every session. Writes are asynchronous;
 * past MAX_BUFFERED_BYTES waiting, new lines are dropped; a closed stdout is ignored; the
 * flush at exit gives up instead of waiting for a reader that does not come.
 */
import { constants as C, fstatSync, openSync } from 'node:fs';
import { Socket } from 'node:net';
import { pino, type Logger as PinoLogger } from 'pino';
import sonicBoom from 'sonic-boom';

export type Logger = PinoLogger;

const FLUSH_EVERY_MS = 200;
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

export function createLogger(level: string): Logger {
  let exiting = false;
  // First of every exit listener (pino's own flushes too): no retry waits at exit.
  process.prependListener('exit', () => {
    exiting = true;
  });
  const stdout = openStdout();
  // sonic-boom itself, at 5 (pino 10 bundles 4, whose synchronous flush at exit sleeps and
  // retries for ever on any error but EAGAIN: a closed stdout pipe froze the exit).
  const dest = new sonicBoom.SonicBoom({
    fd: stdout.fd,
    sync: false,
    minLength: 8192,
    maxLength: MAX_BUFFERED_BYTES,
    // A full pipe: retried later by a timer while running; given up on at exit.
    retryEAGAIN: () => !exiting,
  });
  // stdout can go away (a closed pipe: EPIPE). Logging is then lost, never fatal.
  dest.on('error', () => {});
  const timer = setInterval(() => {
    try {
      dest.flush();
    } catch {
      /* not open yet, or gone */
    }
  }, FLUSH_EVERY_MS);
  timer.unref();
  process.on('exit', () => {
    try {
      dest.flushSync();
      stdout.handle?.destroy();
    } catch {
      /* stdout is full or gone */
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

/**
 * A non-blocking descriptor of stdout: a write to a full pipe or socket then fails with
 * EAGAIN (retried later by a timer, or dropped past MAX_BUFFERED_BYTES) instead of waiting,
 * on a libuv thread or on the loop at exit, for a reader that may never come.
 *  - A pipe (FIFO) is opened again through /proc: a description of our own, whose
 *    O_NONBLOCK touches no other process sharing the pipe.
 *  - A socket cannot be reopened (ENXIO); libuv sets O_NONBLOCK on it when a handle is
 *    opened on it, which this one is for (held for the life of the process, never used).
 *  - A file or a terminal is used as it is.
 */
function openStdout(): { fd: number; handle: Socket | null } {
  try {
    const st = fstatSync(1);
    if (st.isFIFO()) return { fd: openSync('/proc/self/fd/1', C.O_WRONLY | C.O_APPEND | C.O_NONBLOCK), handle: null }; // libuv adds O_CLOEXEC
    if (st.isSocket()) return { fd: 1, handle: new Socket({ fd: 1, readable: false, writable: false }).unref() };
  } catch {
    /* keep fd 1 as it is */
  }
  return { fd: 1, handle: null };
}
