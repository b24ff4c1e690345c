/**
 * Streaming latency: the delay between a program writing a line and the client receiving
 * the `stdout` event that carries it (POST /sessions/{id}/exec with
 * `Accept: text/event-stream`, README "Streaming").
 *
 * The program (Python, or bash) writes a line every 20 ms holding the wall-clock time of
 * the write (time.time(), `date +%s.%N`); the client notes the wall-clock time each event
 * arrives (performance.timeOrigin + performance.now(): sub-millisecond, the same host
 * clock the sandbox reads). Each line gives one sample: arrival - write. The 20 ms gap
 * keeps the pipeline idle between lines, so each sample is one line's own trip (the
 * driver's relay, the frame, the server's event, the socket), not a queue's.
 *
 * `node dist/bench/stream-latency.js [--n 200]` starts its own server (as the tests do)
 * and prints the figures as JSON; bench.ts runs measureStreamLatency() as figure 15.
 */
import { request } from 'node:http';

export interface LatencySamples {
  python: number[];
  bash: number[];
}

const nowMs = () => performance.timeOrigin + performance.now();

/** Runs one streamed call and returns one delay (ms) per line written. */
async function streamedDelays(baseUrl: string, sessionId: string, tool: string, input: Record<string, unknown>, timeoutSeconds: number): Promise<number[]> {
  const body = JSON.stringify({ tool, input, timeout_seconds: timeoutSeconds });
  return new Promise<number[]>((resolve, reject) => {
    const req = request(
      `${baseUrl}/sessions/${sessionId}/exec`,
      { method: 'POST', headers: { accept: 'text/event-stream', 'content-type': 'application/json' } },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`streamed exec: HTTP ${res.statusCode}`));
          return;
        }
        res.setEncoding('utf8');
        const delays: number[] = [];
        let buf = '';
        let result: any = null;
        res.on('data', (chunk: string) => {
          const at = nowMs();
          buf += chunk;
          let i: number;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event === 'stdout' && data) {
              for (const line of (JSON.parse(data) as { text: string }).text.split('\n')) {
                const written = Number(line.trim()) * 1000;
                if (line.trim() !== '' && Number.isFinite(written)) delays.push(at - written);
              }
            } else if (event === 'result' && data) result = JSON.parse(data);
          }
        });
        res.on('end', () => {
          if (result?.result_block?.content?.return_code !== 0) reject(new Error(`the timed program failed: ${JSON.stringify(result).slice(0, 500)}`));
          else resolve(delays);
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** `n` samples of each tool, in session `sessionId` of the server at `baseUrl`. */
export async function measureStreamLatency(baseUrl: string, sessionId: string, n: number): Promise<LatencySamples> {
  const python = await streamedDelays(
    baseUrl,
    sessionId,
    'code_execution',
    { code: `import sys, time\nfor _ in range(${n}):\n    time.sleep(0.02)\n    sys.stdout.write(repr(time.time()) + '\\n')` },
    Math.ceil(n * 0.05) + 30,
  );
  const bash = await streamedDelays(
    baseUrl,
    sessionId,
    'bash_code_execution',
    { command: `for i in $(seq ${n}); do sleep 0.02; date +%s.%N; done` },
    Math.ceil(n * 0.1) + 30,
  );
  return { python, bash };
}

async function main(): Promise<void> {
  const { startServer, createSession } = await import('../test/helpers/server.js');
  const { stats } = await import('./figures.js');
  const i = process.argv.indexOf('--n');
  const n = i > 0 ? Number(process.argv[i + 1]) : 200;
  const server = await startServer();
  try {
    const id = await createSession(server);
    await measureStreamLatency(server.url, id, 20); // warm-up
    const s = await measureStreamLatency(server.url, id, n);
    const round = (x: ReturnType<typeof stats>) => x && Object.fromEntries(Object.entries(x).map(([k, v]) => [k, Math.round(v * 100) / 100]));
    process.stdout.write(`${JSON.stringify({ unit: 'ms', python: round(stats(s.python)), bash: round(stats(s.bash)) })}\n`);
  } finally {
    await server.stop();
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\/dist\//, '/dist/'))) {
  main().catch((e: unknown) => {
    process.stderr.write(`${String((e as Error)?.stack ?? e)}\n`);
    process.exit(1);
  });
}
