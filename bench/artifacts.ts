/**
 * `node dist/bench/artifacts.js`: what the artifact scan (src/files/artifacts.ts) costs a
 * call, measured two ways.
 *
 * 1. In process, the added code alone: ArtifactStore.begin() + collect() on a real folder
 *    on tmpfs (/dev/shm, as a box's tmpfs when the server is root), for a call that writes
 *    no file (empty workspace; a workspace of 100 files) and for a call that wrote 100
 *    small files (collect() then copies them). This is the figure the target (at most
 *    50 us at p50 for a warm exec that writes no file) is about.
 * 2. Over HTTP against two real servers, interleaved: the server's own time of a warm
 *    print(1) (Fastify's elapsedTime from the access log, 0.01 ms resolution) with
 *    artifacts off (SANDBOX_ARTIFACTS_MAX_FILES=0) and on; and a Python call writing 100
 *    files. On a shared machine the difference is within noise; it is shown for scale.
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { ArtifactStore } from '../src/files/artifacts.js';
import { WorkspaceFs } from '../src/files/workspace-fs.js';
import { mimeOf } from '../src/files/mime.js';
import { startServer, createSession, py, type TestServer } from '../test/helpers/server.js';

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const fmt = (xs: number[], unit: string, scale = 1) => `n=${xs.length} p50=${(pct(xs, 50) * scale).toFixed(1)}${unit} p90=${(pct(xs, 90) * scale).toFixed(1)}${unit}`;

async function inProcess(): Promise<Record<string, string>> {
  const root = mkdtempSync('/dev/shm/sbx-bench-artifacts-');
  try {
    const ws = `${root}/workspace`;
    const store = `${root}/artifacts`;
    const staging = `${root}/staging`;
    for (const d of [ws, store, staging]) mkdirSync(d);
    const fs = new WorkspaceFs(ws, null, staging);
    const limits = { maxFiles: 200, maxBytes: 64 << 20, scanMaxEntries: 10_000, keepMax: 1000, keepBytes: 256 << 20 };
    const a = new ArtifactStore(ws, store, fs, limits, mimeOf);
    const out: Record<string, string> = {};
    const noChange = async (label: string, n: number) => {
      const xs: number[] = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        await a.begin();
        const r = await a.collect();
        xs.push(performance.now() - t0);
        if (r.files.length !== 0) throw new Error('a call that wrote nothing listed files');
      }
      out[label] = fmt(xs.slice(n / 5), ' us', 1000);
    };
    {
      await noChange('no file written, empty workspace', 5000);
      for (let i = 0; i < 100; i++) writeFileSync(`${ws}/f${i}.txt`, `seed ${i}\n`);
      await a.begin();
      await a.collect();
      await noChange('no file written, workspace of 100 files', 5000);
      const xs: number[] = [];
      for (let k = 0; k < 60; k++) {
        await a.begin();
        for (let i = 0; i < 100; i++) writeFileSync(`${ws}/f${i}.txt`, `call ${k} file ${i}\n`);
        const t0 = performance.now();
        const r = await a.collect();
        xs.push(performance.now() - t0);
        if (r.files.length !== 100) throw new Error(`expected 100 files, got ${r.files.length}`);
      }
      out['100 files written (scan + 100 copies)'] = fmt(xs.slice(10), ' us', 1000);
      return out;
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

function serverMs(s: TestServer, id: string): number[] {
  const xs: number[] = [];
  for (const line of s.logs().split('\n')) {
    if (!line.includes(id) || !line.includes('"/sessions/:id/exec"')) continue;
    try {
      const rec = JSON.parse(line) as { session_id?: string; duration_ms?: number };
      if (rec.session_id === id && typeof rec.duration_ms === 'number') xs.push(rec.duration_ms);
    } catch {
      /* not JSON */
    }
  }
  return xs;
}

async function overHttp(): Promise<Record<string, string>> {
  const [off, on] = await Promise.all([startServer({ SANDBOX_ARTIFACTS_MAX_FILES: '0' }), startServer({})]);
  try {
    const [idOff, idOn] = await Promise.all([createSession(off), createSession(on)]);
    const N = 600;
    for (let i = 0; i < N; i++) {
      await py(off, idOff, 'print(1)');
      await py(on, idOn, 'print(1)');
    }
    const idWrite = await createSession(on);
    const code = "for i in range(100):\n    open(f'out/f{i}.txt', 'w').write(str(i))";
    await py(on, idWrite, "import os\nos.makedirs('out', exist_ok=True)");
    for (let i = 0; i < 60; i++) {
      const r = await py(on, idWrite, code);
      if (r.body.result_block.content.content.length !== 100) throw new Error('expected 100 artifacts');
    }
    const idWriteOff = await createSession(off);
    await py(off, idWriteOff, "import os\nos.makedirs('out', exist_ok=True)");
    for (let i = 0; i < 60; i++) await py(off, idWriteOff, code);
    await new Promise((r) => setTimeout(r, 500)); // the log reaches the pipe every 200 ms
    const skip = (xs: number[], n: number) => xs.slice(n);
    return {
      'print(1), artifacts off (server ms)': fmt(skip(serverMs(off, idOff), 200), ' ms'),
      'print(1), artifacts on (server ms)': fmt(skip(serverMs(on, idOn), 200), ' ms'),
      'write 100 files, artifacts off (server ms)': fmt(skip(serverMs(off, idWriteOff), 11), ' ms'),
      'write 100 files, artifacts on (server ms)': fmt(skip(serverMs(on, idWrite), 11), ' ms'),
    };
  } finally {
    await Promise.all([off.stop(), on.stop()]);
  }
}

const micro = await inProcess();
console.log('artifact scan, in process (begin + collect):');
for (const [k, v] of Object.entries(micro)) console.log(`  ${k}: ${v}`);
const http = await overHttp();
console.log('over HTTP, server time per call (Fastify elapsedTime):');
for (const [k, v] of Object.entries(http)) console.log(`  ${k}: ${v}`);
