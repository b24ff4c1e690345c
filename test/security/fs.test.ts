/**
 * Hostile inputs 1-17 of docs/threat-model.md (file system and file API), except 16
 * (zip extraction: the server offers none). Host files that a confused server would leak
 * or overwrite are canaries in a folder of the test's own (never mounted in a sandbox):
 * any appearance of their content in a response, or any new file next to them, fails.
 */
import { before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile, lstat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { MAIN } from '../helpers/server.js';
import {
  api,
  assertRefused,
  attacker,
  download,
  editor,
  exists,
  finishCase,
  listFiles,
  notHung,
  postChecks,
  py,
  pyMarker,
  randomText,
  rawRequest,
  serverReadBytes,
  serverRssKb,
  sh,
  startSuite,
  stopSuite,
  upload,
  serverErrors,
  pidsWithMarker,
  type Suite,
} from './support.js';

const MiB = 1024 * 1024;
/** The editor's own cap on a file it reads (EDITOR_MAX_FILE_BYTES in text-editor.ts). */
const EDITOR_MAX_FILE_BYTES = 16 * MiB;
let S: Suite;
const CANARY = randomText('HOST-CANARY');
const VICTIM_SECRET = randomText('VICTIM-SECRET');
let canaryDir: string;
let canaryFile: string;
let dropDir: string;

before(async () => {
  S = await startSuite({ SANDBOX_MAX_DOWNLOAD_BYTES: String(32 * MiB), SANDBOX_MAX_UPLOAD_BYTES: String(8 * MiB) });
  canaryDir = `${S.hostDir}/canary`;
  canaryFile = `${canaryDir}/secret.txt`;
  dropDir = `${S.hostDir}/drop`;
  await mkdir(canaryDir, { recursive: true });
  await mkdir(dropDir, { recursive: true });
  await writeFile(canaryFile, CANARY);
  await writeFile(`${canaryDir}/f`, CANARY);
  const w = await sh(S.server, S.victim, `printf %s '${VICTIM_SECRET}' > /workspace/secret.txt`);
  assert.equal(w.return_code, 0);
});

after(async () => {
  await stopSuite(S);
});

/** Nothing a response carries may be a host file. */
function assertNoHostData(body: Buffer | string, what: string): void {
  const text = Buffer.isBuffer(body) ? body.toString('latin1') : body;
  assert.ok(!text.includes(CANARY), `${what}: host canary leaked`);
  assert.ok(!text.includes(VICTIM_SECRET), `${what}: the victim's file leaked`);
  assert.ok(!/root:[x*!]?:0:0:/.test(text), `${what}: a host passwd/shadow file leaked`);
}

async function assertCanaryIntact(what: string): Promise<void> {
  assert.equal(await readFile(canaryFile, 'utf8'), CANARY, `${what}: host canary file modified`);
  assert.deepEqual((await readdir(canaryDir)).sort(), ['f', 'secret.txt'], `${what}: files appeared in the host canary folder`);
  assert.deepEqual(await readdir(dropDir), [], `${what}: files appeared in the host drop folder`);
}

test('#1 host paths (sessions root, the victim workspace, /home, /root, the install dir) are not mounted', async (t) => {
  const a = await attacker(S, t);
  const installDir = dirname(dirname(dirname(MAIN)));
  const paths = [
    S.sessionsRoot,
    S.victimBox.dir,
    `${S.victimBox.dir}/workspace/secret.txt`,
    S.hostDir,
    canaryFile,
    '/home',
    '/root',
    installDir,
    `${installDir}/src`,
    '/var/sandbox/sessions',
    '/srv',
    '/run',
    '/var',
  ];
  const code = `import os, json
res = {}
for p in ${JSON.stringify(paths)}:
    try:
        if os.path.isdir(p): os.listdir(p)
        else: open(p, 'rb').read()
        res[p] = 'OK'
    except OSError as e:
        res[p] = e.errno
print(json.dumps(res))`;
  const r = await py(S.server, a.id, code);
  assert.equal(r.return_code, 0, r.stderr);
  const res = JSON.parse(r.stdout) as Record<string, number | string>;
  for (const p of paths) assert.equal(res[p], 2, `${p} must be ENOENT inside the sandbox, got ${res[p]}`);
  const b = await sh(
    S.server,
    a.id,
    `ls ${S.sessionsRoot} /home /root ${installDir} 2>&1; cat ${S.victimBox.dir}/workspace/secret.txt 2>&1; grep -rls '${VICTIM_SECRET}' /workspace /tmp /dev/shm /etc /opt 2>/dev/null; true`,
  );
  assert.equal(b.return_code, 0);
  assert.equal((b.stdout.match(/No such file or directory/g) ?? []).length, 5, b.stdout);
  assertNoHostData(b.stdout, 'bash');
  await finishCase(S, a);
});

test('#2 API traversal: ../, absolute, raw %2e%2e%2f, a/../../b, sibling prefixes', async (t) => {
  const a = await attacker(S, t);
  const victimName = S.victimBox.dir.slice(S.sessionsRoot.length + 1);
  const decoded = [
    '../../etc/passwd',
    '/etc/passwd',
    'a/../../b',
    '../secret.txt',
    `../../${victimName}/workspace/secret.txt`,
    `/workspace/../../${victimName}/workspace/secret.txt`,
    '/workspace/../etc/passwd',
    '/workspace2/x',
    '/workspacex/../etc/passwd',
    `${S.hostDir}/canary/secret.txt`,
    `/workspace/../../../../../../..${canaryFile}`,
  ];
  // Odd but legal names: they stay inside (there is simply no such file).
  const oddNames = ['..\\..\\etc\\passwd', '....//....//etc/passwd', '.../etc/passwd'];
  const rawQueries = [
    '%2e%2e%2f%2e%2e%2fetc%2fpasswd',
    '..%2f..%2f..%2f..%2fetc%2fpasswd',
    '%2e%2e/%2e%2e/etc/passwd',
    '%252e%252e%252fetc%252fpasswd',
    '%2fetc%2fpasswd',
    `%2e%2e%2f%2e%2e%2f${victimName}%2fworkspace%2fsecret.txt`,
    '..%5c..%5cetc%5cpasswd',
  ];
  const queries = [...decoded.map((p) => encodeURIComponent(p)), ...oddNames.map((p) => encodeURIComponent(p)), ...rawQueries];
  for (const q of queries) {
    const d = await rawRequest(S.server, { path: `/sessions/${a.id}/files?path=${q}` });
    assertRefused(d.status, `download ${q}`);
    assertNoHostData(d.body, `download ${q}`);
    const l = await rawRequest(S.server, { path: `/sessions/${a.id}/files/list?path=${q}` });
    assertRefused(l.status, `list ${q}`);
    assertNoHostData(l.body, `list ${q}`);
  }
  // Dot segments in the URL path itself (sent raw, never normalised by the client).
  for (const p of [`/sessions/${a.id}/files/../../../etc/passwd`, `/sessions/${a.id}/%2e%2e/%2e%2e/etc/passwd`, `/sessions/../../etc/passwd`, `/%2e%2e%2f%2e%2e%2fetc%2fpasswd`]) {
    const r = await rawRequest(S.server, { path: p });
    assertRefused(r.status, `raw URL ${p}`);
    assertNoHostData(r.body, `raw URL ${p}`);
  }
  for (const p of decoded) {
    const v = await editor(S.server, a.id, { command: 'view', path: p });
    assert.equal(v.status, 200);
    assert.equal(v.return_code, 1, `editor view ${p} must fail`);
    assertNoHostData(JSON.stringify(v.body), `editor view ${p}`);
    const c = await editor(S.server, a.id, { command: 'create', path: p.replace(/[^/\\]+$/, 'pwned'), file_text: 'pwned' });
    assert.equal(c.return_code, 1, `editor create ${p} must fail`);
  }
  for (const p of ['../pwned', '../../pwned', `/workspace/../../../../../..${dropDir}/pwned`, `${dropDir}/pwned`, `../../${victimName}/workspace/pwned`]) {
    const u = await upload(S.server, a.id, 'pwned', { path: p });
    assertRefused(u.status, `upload to ${p}`);
  }
  // A multipart filename with traversal and no path field.
  const u2 = await upload(S.server, a.id, 'pwned', { filename: `../../../../../../..${dropDir}/pwned` });
  assert.ok(u2.status === 201 || (u2.status >= 400 && u2.status < 500), `upload with a traversal filename: ${u2.status}`);
  if (u2.status === 201) assert.ok(!String(u2.body.path).includes('..'), `stored inside the workspace: ${JSON.stringify(u2.body)}`);
  await assertCanaryIntact('after traversal uploads');
  assert.ok(!(await exists(`${S.sessionsRoot}/pwned`)) && !(await exists(`${a.box.dir}/pwned`)), 'nothing written next to the workspace');
  assert.ok(!(await exists(`${S.victimBox.dir}/workspace/pwned`)), "nothing written into the victim's workspace");
  await finishCase(S, a);
});

test('#3 #5 symlinks planted inside are never followed by download, list, upload or the editor', async (t) => {
  const a = await attacker(S, t);
  const victimName = S.victimBox.dir.slice(S.sessionsRoot.length + 1);
  const plant = await sh(
    S.server,
    a.id,
    [
      'cd /workspace',
      'ln -s / root',
      'ln -s /etc/shadow s',
      'ln -s /etc/passwd p',
      `ln -s ${canaryDir} c`,
      `ln -s ${canaryFile} cf`,
      `ln -s ${dropDir} uploads`,
      'ln -s .. up',
      'ln -s ../.. up2',
      `ln -s ${S.victimBox.dir}/workspace v`,
      'mkdir real && ln -s ../../.. real/deep',
      'ls -la',
    ].join(' && '),
  );
  assert.equal(plant.return_code, 0, plant.stderr);
  const reads = [
    'root/etc/passwd',
    's',
    'p',
    'c/secret.txt',
    'c/f',
    'cf',
    'up/tmp',
    `up2/${victimName}/workspace/secret.txt`,
    'v/secret.txt',
    `real/deep/${victimName}/workspace/secret.txt`,
    'up/lib/_platform_tools.py',
  ];
  for (const p of reads) {
    const d = await download(S.server, a.id, p);
    assertRefused(d.status, `download ${p}`);
    assertNoHostData(d.body, `download ${p}`);
    const v = await editor(S.server, a.id, { command: 'view', path: p });
    assert.equal(v.return_code, 1, `editor view ${p}`);
    assertNoHostData(JSON.stringify(v.body), `editor view ${p}`);
  }
  for (const p of ['root', 'c', 'up', 'up2', 'v', 'real/deep', 'uploads']) {
    const l = await listFiles(S.server, a.id, p, true);
    assert.ok(l.status === 200 || (l.status >= 400 && l.status < 500), `list ${p}: ${l.status}`);
    if (l.status === 200) assert.deepEqual(l.body.files, [], `list ${p} must not show what the link points to`);
    assertNoHostData(JSON.stringify(l.body), `list ${p}`);
    const v = await editor(S.server, a.id, { command: 'view', path: p });
    assert.equal(v.return_code, 1, `editor view of the linked folder ${p}`);
  }
  const all = await listFiles(S.server, a.id, '.', true);
  assert.equal(all.status, 200);
  const names = (all.body.files as { path: string }[]).map((f) => f.path);
  for (const link of ['root', 's', 'p', 'c', 'cf', 'uploads', 'up', 'up2', 'v', 'real/deep']) {
    assert.ok(!names.some((n) => n === link || n.startsWith(`${link}/`)), `recursive list follows or lists the link ${link}: ${names.join(',')}`);
  }
  // Writes through links (case 5): upload, editor create / str_replace / insert.
  for (const p of ['uploads/x', 'c/x', 'up/x', 'v/pwned', 'real/deep/pwned']) {
    const u = await upload(S.server, a.id, 'pwned', { path: p });
    assertRefused(u.status, `upload ${p}`);
    const c = await editor(S.server, a.id, { command: 'create', path: p, file_text: 'pwned' });
    assert.equal(c.return_code, 1, `editor create ${p}`);
  }
  for (const p of ['cf', 'c/secret.txt', 'p']) {
    const sr = await editor(S.server, a.id, { command: 'str_replace', path: p, old_str: CANARY.slice(0, 8), new_str: 'pwned' });
    assert.equal(sr.return_code, 1, `editor str_replace ${p}`);
    const ins = await editor(S.server, a.id, { command: 'insert', path: p, insert_line: 0, new_str: 'pwned' });
    assert.equal(ins.return_code, 1, `editor insert ${p}`);
    const cr = await editor(S.server, a.id, { command: 'create', path: p, file_text: 'pwned' });
    assert.equal(cr.return_code, 1, `editor create over the link ${p}`);
  }
  // Uploading onto the link itself may replace the link inside the workspace, never its target.
  const over = await upload(S.server, a.id, 'replaced', { path: 'cf' });
  assert.ok(over.status === 201 || (over.status >= 400 && over.status < 500), `upload onto a link: ${over.status}`);
  if (over.status === 201) {
    const st = await lstat(`${a.box.dir}/workspace/cf`);
    assert.ok(st.isFile() && !st.isSymbolicLink(), 'the link was replaced by a regular file inside the workspace');
  }
  await assertCanaryIntact('after writes through links');
  assert.ok(!(await exists(`${S.victimBox.dir}/workspace/pwned`)), "nothing written into the victim's workspace");
  await finishCase(S, a);
});

test('#4 TOCTOU: d flips between a folder and a link to a host folder while d/f is downloaded 200 times', async (t) => {
  const a = await attacker(S, t);
  const marker = pyMarker();
  // renameat2(RENAME_EXCHANGE) swaps the folder and the link atomically, so `d` always
  // exists and is a folder or a link at any instant; now and then `d` also vanishes and
  // reappears (the window where a server would create it).
  const flipper = `#${marker}
import ctypes, os, shutil, time
libc = ctypes.CDLL(None, use_errno=True)
os.chdir('/workspace')
os.makedirs('d', exist_ok=True)
open('d/f', 'w').write('inside')
os.symlink(${JSON.stringify(canaryDir)}, 'dalt')
end = time.time() + 25
n = 0
while time.time() < end:
    if libc.renameat2(-100, b'd', -100, b'dalt', 2) != 0:
        raise OSError(ctypes.get_errno(), 'renameat2')
    n += 1
    if n % 64 == 0:
        os.rename('d', 'dgone')
        try:
            os.rename('dgone', 'd')
        except OSError:
            # The server made d/ (an upload's parent) in the gap: remove it, put ours back.
            if os.path.islink('d'):
                os.unlink('d')
            else:
                shutil.rmtree('d', ignore_errors=True)
            os.rename('dgone', 'd')
`;
  const start = await py(
    S.server,
    a.id,
    `import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', ${JSON.stringify(flipper)}], start_new_session=True)\nimport time; time.sleep(0.3)`,
  );
  assert.equal(start.return_code, 0, start.stderr);
  assert.ok((await pidsWithMarker(marker)).length > 0, 'the flipper runs');
  const statuses = new Map<number, number>();
  const uploadFailures: string[] = []; // uploads and editor creates that answered 5xx
  let inside = 0;
  for (let i = 0; i < 200; i++) {
    const d = await download(S.server, a.id, 'd/f');
    statuses.set(d.status, (statuses.get(d.status) ?? 0) + 1);
    assertNoHostData(d.body, `download #${i}`);
    if (d.status === 200) {
      assert.equal(d.body.toString(), 'inside', `download #${i} returned something else`);
      inside++;
    } else assertRefused(d.status, `download #${i}`);
    if (i % 4 === 0) {
      const u = await upload(S.server, a.id, 'pwned', { path: `d/up-${i}` });
      if (!(u.status === 201 || (u.status >= 400 && u.status < 500))) uploadFailures.push(`upload #${i}: ${u.status} ${JSON.stringify(u.body)}`);
    }
    if (i % 10 === 0) {
      const l = await listFiles(S.server, a.id, 'd', false);
      assertNoHostData(JSON.stringify(l.body), `list #${i}`);
      if (l.status === 200)
        assert.ok(
          (l.body.files as { path: string }[]).every((f) => /^d\/(f|up-\d+|ed-\d+)$/.test(f.path)),
          `list #${i}: ${JSON.stringify(l.body)}`,
        );
      const v = await editor(S.server, a.id, { command: 'view', path: 'd/f' });
      assertNoHostData(JSON.stringify(v.body), `editor view #${i}`);
      const c = await editor(S.server, a.id, { command: 'create', path: `d/ed-${i}`, file_text: 'pwned' });
      if (c.status !== 200) uploadFailures.push(`editor create #${i}: ${c.status} ${JSON.stringify(c.body)}`);
    }
  }
  t.diagnostic(`download statuses: ${JSON.stringify([...statuses])}`);
  assert.ok(inside > 0, 'the real file was served at least once (the race was live)');
  assert.ok(
    [...statuses.keys()].some((s) => s !== 200),
    'the link was refused at least once (the race was live)',
  );
  await assertCanaryIntact('after the TOCTOU loop');
  // A race may refuse a write (4xx, or an editor error result); it must never be an internal error.
  assert.deepEqual(uploadFailures, [], `writes racing a folder swap answered 5xx:\n${serverErrors(S)}`);
  await finishCase(S, a, [marker]);
});

test('#6 text editor on a FIFO, a file above its cap and a binary file: refused or capped, no hang', async (t) => {
  const a = await attacker(S, t);
  const prep = await sh(S.server, a.id, "cd /workspace && mkfifo ff && truncate -s 100M big && printf 'bin\\x00\\xff\\xfe\\x80 tail' > bin && printf 'ok\\n' > text");
  assert.equal(prep.return_code, 0, prep.stderr);
  // No clock: a FIFO opened without O_NONBLOCK waits for a writer that never comes, so a
  // call that answers at all did not block on it (notHung only names the hang); and the
  // server's read count shows the 100 MB file was never read, however fast that would be.
  const timed = async (input: Record<string, unknown>) => {
    const read0 = await serverReadBytes(S.server);
    const r = await notHung(editor(S.server, a.id, input), JSON.stringify(input));
    const read = (await serverReadBytes(S.server)) - read0;
    assert.equal(r.status, 200, `${JSON.stringify(input)}: ${JSON.stringify(r.body)}`);
    assert.ok(read < EDITOR_MAX_FILE_BYTES, `${JSON.stringify(input)}: the server read ${read} bytes (the 100 MB file?)`);
    return r;
  };
  for (const input of [
    { command: 'view', path: 'ff' },
    { command: 'create', path: 'ff', file_text: 'x' },
    { command: 'str_replace', path: 'ff', old_str: 'a', new_str: 'b' },
    { command: 'insert', path: 'ff', insert_line: 0, new_str: 'b' },
    { command: 'view', path: 'big' },
    { command: 'str_replace', path: 'big', old_str: 'a', new_str: 'b' },
    { command: 'insert', path: 'big', insert_line: 0, new_str: 'b' },
    { command: 'str_replace', path: 'bin', old_str: 'bin', new_str: 'x' },
  ]) {
    const r = await timed(input);
    assert.equal(r.return_code, 1, `${JSON.stringify(input)} must be refused: ${r.stdout}`);
  }
  const vb = await timed({ command: 'view', path: 'bin' });
  assert.ok(vb.return_code === 0 || vb.return_code === 1, 'view of a binary file answers');
  const st = await lstat(`${a.box.dir}/workspace/ff`);
  assert.ok(st.isFIFO(), 'the FIFO is still a FIFO (never replaced or written)');
  const ok = await timed({ command: 'view', path: 'text' });
  assert.equal(ok.stdout, 'ok\n');
  await finishCase(S, a);
});

test('#7 hard links to files outside the workspace fail', async (t) => {
  const a = await attacker(S, t);
  const r = await sh(
    S.server,
    a.id,
    'cd /workspace; for src in /etc/passwd /opt/sandbox/driver.py /usr/bin/python3 /etc/ld.so.cache; do ln "$src" "l-$(basename $src)"; echo "rc=$?"; done; ls',
  );
  assert.equal((r.stdout.match(/rc=0/g) ?? []).length, 0, `a hard link succeeded: ${r.stdout}`);
  assert.equal((r.stderr.match(/Invalid cross-device link|Operation not permitted/g) ?? []).length, 4, r.stderr);
  assert.ok(!r.stdout.includes('l-'), 'no link was created');
  await finishCase(S, a);
});

test('#8 four (and more) FIFOs downloaded, viewed and listed at once: refused without waiting for a writer, server keeps serving', async (t) => {
  const a = await attacker(S, t);
  const prep = await sh(S.server, a.id, 'cd /workspace && mkfifo f1 f2 f3 f4 f5 f6 f7 f8 && echo hello > plain');
  assert.equal(prep.return_code, 0, prep.stderr);
  // No clock: no writer ever opens these FIFOs, so an open that waits for one never
  // returns; every request answering at all is the proof (notHung only names a hang).
  const fifos = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8'];
  const [downloads, views, lists] = await notHung(
    Promise.all([
      Promise.all(fifos.map((f) => download(S.server, a.id, f))),
      Promise.all(fifos.map((f) => editor(S.server, a.id, { command: 'view', path: f }))),
      Promise.all([listFiles(S.server, a.id, '.'), listFiles(S.server, a.id, 'f1'), listFiles(S.server, a.id, '.', true)]),
    ]),
    'downloads, views and listings of FIFOs',
  );
  for (const d of downloads) assert.equal(d.status, 400, 'a FIFO is not a regular file');
  for (const v of views) assert.equal(v.return_code, 1);
  assert.equal(lists[0].status, 200);
  assert.deepEqual(
    (lists[0].body.files as { path: string }[]).map((f) => f.path),
    ['plain'],
    'FIFOs are not listed as files',
  );
  assert.ok(lists[1].status >= 400 && lists[1].status < 500, `list of a FIFO path: ${lists[1].status}`);
  // Node's file-system thread pool (4 threads) is not starved: had the FIFO requests left
  // threads blocked in open() (e.g. answered by a timer while the open still waits), these
  // regular file operations would queue behind them for ever.
  const [d, u] = await notHung(Promise.all([download(S.server, a.id, 'plain'), upload(S.server, a.id, 'data', { path: 'up.txt' })]), 'file operations after the FIFOs');
  assert.equal(d.status, 200);
  assert.equal(d.body.toString(), 'hello\n');
  assert.equal(u.status, 201);
  await finishCase(S, a);
});

test('#9 device nodes cannot be made; links to devices and socket files are refused by the API', async (t) => {
  const a = await attacker(S, t);
  const r = await sh(
    S.server,
    a.id,
    'cd /workspace; mknod node c 1 3; echo rc=$?; ln -s /dev/zero z; python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.bind(\'/workspace/sock\')"; ls -la',
  );
  assert.match(r.stdout, /rc=[1-9]/, 'mknod fails');
  assert.match(r.stderr, /Operation not permitted/, r.stderr);
  assert.ok(!/ node$/m.test(r.stdout), 'no device node');
  for (const p of ['z', 'sock', 'node']) {
    // (no clock: a download that followed z to /dev/zero would stream for ever, or read
    // megabytes before a cap; the server's read count says it read none of it)
    const read0 = await serverReadBytes(S.server);
    const d = await notHung(download(S.server, a.id, p), `download ${p}`);
    const read = (await serverReadBytes(S.server)) - read0;
    assertRefused(d.status, `download ${p}`);
    assert.ok(read < MiB, `download ${p}: the server read ${read} bytes`);
    const v = await editor(S.server, a.id, { command: 'view', path: p });
    assert.equal(v.return_code, 1, `editor view ${p}`);
  }
  await finishCase(S, a);
});

test('#10 a sparse file above the download cap is refused before streaming (413); 1 TiB sparse is refused by RLIMIT_FSIZE', async (t) => {
  const a = await attacker(S, t);
  const r = await sh(S.server, a.id, 'cd /workspace && truncate -s 100M sparse && du -k sparse; truncate -s 1T huge; echo rc=$?; ls -la');
  assert.match(r.stdout, /^0\s+sparse/m, 'the file is sparse');
  assert.ok(!/rc=0/.test(r.stdout), 'a 1 TiB file is refused (RLIMIT_FSIZE)');
  // "Before streaming" by bytes, not by a clock: the server's read count grows by a file it
  // serves (the control below), and not by the 100 MB it refuses.
  const control = await sh(S.server, a.id, 'head -c 4194304 /dev/urandom > /workspace/control');
  assert.equal(control.return_code, 0, control.stderr);
  let read0 = await serverReadBytes(S.server);
  const served = await download(S.server, a.id, 'control');
  assert.equal(served.status, 200);
  const controlRead = (await serverReadBytes(S.server)) - read0;
  assert.ok(controlRead >= 4 * MiB, `the read count sees a 4 MiB download (${controlRead} bytes)`);
  read0 = await serverReadBytes(S.server);
  const d = await download(S.server, a.id, 'sparse');
  const read = (await serverReadBytes(S.server)) - read0;
  assert.equal(d.status, 413, `download over SANDBOX_MAX_DOWNLOAD_BYTES: ${d.body.toString().slice(0, 200)}`);
  assert.ok(d.body.length < 4096, 'no file bytes are streamed');
  assert.ok(read < MiB, `refused without reading the file: the server read ${read} bytes`);
  await finishCase(S, a);
});

test('#11 20,000 files, a 10,000-level folder chain and long names: listing answers, cleanup completes', async (t) => {
  const a = await attacker(S, t);
  const code = `import os
os.makedirs('/workspace/many')
for i in range(20000):
    open('/workspace/many/%d' % i, 'w').close()
os.makedirs('/workspace/deep')
os.chdir('/workspace/deep')
for i in range(10000):
    os.mkdir('d'); os.chdir('d')
open('x', 'w').write('bottom')
os.chdir('/workspace')
open('n' * 255, 'w').write('long')
print(len(os.listdir('/workspace/many')))`;
  const r = await py(S.server, a.id, code, { timeout_seconds: 60 });
  assert.equal(r.return_code, 0, r.stderr);
  assert.equal(r.stdout, '20000');
  // (how long they take is a figure, not a check: work that holds the server is caught by
  // finishCase's event-loop check; a listing that never ends, by notHung)
  let t0 = performance.now();
  const many = await notHung(listFiles(S.server, a.id, 'many'), 'listing of 20,000 files');
  assert.equal(many.status, 200);
  assert.ok(many.body.files.length > 0 && many.body.files.length <= 100_000, `listing of 20,000 files is capped: ${many.body.files.length}`);
  t.diagnostic(`listing 20,000 files: ${Math.round(performance.now() - t0)} ms`);
  t0 = performance.now();
  const deep = await notHung(listFiles(S.server, a.id, 'deep', true), 'recursive listing of a 10,000-level chain');
  assert.equal(deep.status, 200);
  assert.ok(deep.body.files.length < 1000, `recursive listing is depth-capped: ${deep.body.files.length}`);
  const tree = await notHung(editor(S.server, a.id, { command: 'view', path: 'deep' }), 'editor view of a 10,000-level chain');
  assert.equal(tree.return_code, 0);
  t.diagnostic(`deep listing and view: ${Math.round(performance.now() - t0)} ms`);
  const longPath = `deep/${'d/'.repeat(2100)}x`;
  const d = await download(S.server, a.id, longPath);
  assert.ok(d.status >= 400 && d.status < 500, `a path of ${longPath.length} chars: ${d.status}`);
  const n = await download(S.server, a.id, 'n'.repeat(255));
  assert.equal(n.status, 200);
  const tooLong = await download(S.server, a.id, 'n'.repeat(256));
  assert.ok(tooLong.status >= 400 && tooLong.status < 500, `a 256-byte name: ${tooLong.status}`);
  await finishCase(S, a);
});

test('#12 chmod -R 000 of everything: the API answers without 5xx and delete still cleans up', async (t) => {
  const a = await attacker(S, t);
  const r = await sh(S.server, a.id, 'cd /workspace && mkdir -p a/b/c && echo hi > a/b/f && echo top > top && find /workspace -mindepth 1 -depth -exec chmod 000 {} + && ls -la');
  assert.equal(r.return_code, 0, r.stderr);
  for (const p of ['.', 'a', 'a/b']) {
    const l = await listFiles(S.server, a.id, p, true);
    assert.ok(l.status < 500, `list ${p}: ${l.status}`);
  }
  for (const p of ['a/b/f', 'top']) {
    const d = await download(S.server, a.id, p);
    assert.ok(d.status < 500, `download ${p}: ${d.status}`);
    const v = await editor(S.server, a.id, { command: 'view', path: p });
    assert.equal(v.status, 200);
  }
  // The workspace root itself made unreadable: the session keeps answering.
  const root = await sh(S.server, a.id, 'chmod 000 /workspace');
  assert.equal(root.status, 200);
  const next = await sh(S.server, a.id, 'echo still');
  assert.equal(next.status, 200, 'bash after chmod 000 /workspace answers');
  const fix = await py(S.server, a.id, "import os; os.chmod('/workspace', 0o700); print('fixed')");
  assert.equal(fix.stdout, 'fixed');
  const again = await sh(S.server, a.id, 'echo again');
  assert.equal(again.stdout, 'again\n');
  await finishCase(S, a);
});

test('#13 rm -rf /workspace/*, rmdir and mv of /workspace: the mount stays, the next command works', async (t) => {
  const a = await attacker(S, t);
  const r = await sh(
    S.server,
    a.id,
    'cd /workspace && mkdir -p x/y && touch x/y/z .hidden && rm -rf /workspace/* /workspace/.[!.]* ; echo rm=$?; rmdir /workspace; echo rmdir=$?; mv /workspace /x; echo mv=$?; ls -A /workspace | wc -l',
  );
  assert.match(r.stdout, /rm=0/);
  assert.match(r.stdout, /rmdir=[1-9]/);
  assert.match(r.stdout, /mv=[1-9]/);
  assert.match(r.stdout, /^0$/m, 'the workspace is empty');
  const next = await sh(S.server, a.id, 'echo ok > /workspace/n && cat n && pwd');
  assert.equal(next.stdout, 'ok\n/workspace\n');
  const p = await py(S.server, a.id, "print(open('/workspace/n').read().strip())");
  assert.equal(p.stdout, 'ok');
  const l = await listFiles(S.server, a.id);
  assert.deepEqual(
    (l.body.files as { path: string }[]).map((f) => f.path),
    ['n'],
  );
  await finishCase(S, a);
});

test('#14 API paths with NUL, U+202E, ..U+2215, CR/LF, 5,000 characters, invalid UTF-8: 4xx, no crash', async (t) => {
  const a = await attacker(S, t);
  const queries = [
    'a%00b',
    '%00',
    '%E2%80%AE',
    '..%E2%88%95..%E2%88%95etc%E2%88%95passwd',
    'a%0d%0ab',
    '%0d%0aSet-Cookie:%20x=1',
    'a'.repeat(5000),
    `${'ab/'.repeat(1700)}x`,
    '%ff%fe',
    '%c0%ae%c0%ae%2fetc%2fpasswd',
    '%',
    '%E0%A4%A',
    '%uff0e%uff0e',
  ];
  for (const q of queries) {
    for (const ep of ['files', 'files/list']) {
      const r = await rawRequest(S.server, { path: `/sessions/${a.id}/${ep}?path=${q}`, timeoutMs: 5000 });
      assert.ok(r.status >= 400 && r.status < 500, `${ep}?path=${q.slice(0, 60)}: ${r.status} ${r.body.toString().slice(0, 200)}`);
      assert.ok(!('set-cookie' in r.headers), 'no header injection');
      assertNoHostData(r.body, q);
    }
  }
  for (const p of ['a\0b', '\0', 'x'.repeat(5000)]) {
    const u = await upload(S.server, a.id, 'x', { path: p });
    assert.ok(u.status >= 400 && u.status < 500, `upload to ${JSON.stringify(p.slice(0, 20))}: ${u.status}`);
    const v = await editor(S.server, a.id, { command: 'create', path: p, file_text: 'x' });
    assert.equal(v.status, 200);
    assert.equal(v.return_code, 1, `editor create ${JSON.stringify(p.slice(0, 20))}`);
  }
  for (const id of ['%00', 'x'.repeat(5000), '..%2f..%2fetc', "sbx_'%20OR%201=1"]) {
    const r = await rawRequest(S.server, { path: `/sessions/${id}/files?path=a`, timeoutMs: 5000 });
    assert.ok(r.status >= 400 && r.status < 500, `session id ${id.slice(0, 30)}: ${r.status}`);
  }
  await finishCase(S, a);
});

test('#15 file names with \\xff, newlines and ANSI escapes are listed as valid JSON and can be deleted', async (t) => {
  const a = await attacker(S, t);
  const code = `names = [b'\\xff\\xfe', b'new\\nline', b'\\x1b[31mred\\x1b[0m', b'\\x1b]0;title\\x07', b'tab\\there', b'cr\\rx', b'-rf', b'q"uo\\'te', 'ünï©ødé'.encode(), b'back\\\\slash', b'semi;colon']
for n in names:
    open(b'/workspace/' + n, 'wb').write(b'x')
print(len(names))`;
  const w = await py(S.server, a.id, code);
  assert.equal(w.stdout, '11', w.stderr);
  const raw = await rawRequest(S.server, { path: `/sessions/${a.id}/files/list?path=.` });
  assert.equal(raw.status, 200);
  assert.ok(![...raw.body].some((b) => b < 0x20), 'control bytes are escaped in the JSON text');
  const listing = JSON.parse(raw.body.toString('utf8')) as { files: { path: string }[] };
  const paths = listing.files.map((f) => f.path);
  assert.equal(paths.length, 11, JSON.stringify(paths));
  for (const n of ['new\nline', '\x1b[31mred\x1b[0m', 'cr\rx', 'ünï©ødé', '-rf']) assert.ok(paths.includes(n), `listed: ${JSON.stringify(n)}`);
  for (const p of paths) {
    const d = await download(S.server, a.id, p);
    assert.ok(d.status < 500, `download ${JSON.stringify(p)}: ${d.status}`);
    if (d.status === 200) {
      assert.equal(d.body.toString(), 'x');
      const cd = d.headers.get('content-disposition') ?? '';
      assert.ok(!/[\r\n]/.test(cd), 'content-disposition is one line');
    }
  }
  const rm = await sh(S.server, a.id, 'rm -f -- /workspace/* && ls -A /workspace | wc -l');
  assert.equal(rm.stdout.trim(), '0');
  await finishCase(S, a);
});

test('#17 oversized bodies: 10 MB JSON, chunked without length, 1 MB of headers, uploads over the cap -> 413/431, RSS flat', async (t) => {
  const a = await attacker(S, t);
  const rss0 = await serverRssKb(S.server);
  const big = Buffer.from(JSON.stringify({ tool: 'bash_code_execution', input: { command: `echo ${'x'.repeat(10 * MiB)}` } }));
  const r1 = await rawRequest(S.server, {
    method: 'POST',
    path: `/sessions/${a.id}/exec`,
    headers: { 'content-type': 'application/json', 'content-length': big.length },
    body: big,
  }).catch((e: Error) => ({ status: -1, error: e.message }));
  // 413, or the connection cut while the client was still sending (the server refused early).
  assert.ok(r1.status === 413 || (r1.status === -1 && /EPIPE|ECONNRESET/.test(String((r1 as { error?: string }).error))), `10 MB JSON body: ${JSON.stringify(r1).slice(0, 200)}`);
  async function* chunks(total: number) {
    const c = Buffer.alloc(64 * 1024, 0x61);
    yield Buffer.from('{"tool":"bash_code_execution","input":{"command":"');
    for (let sent = 0; sent < total; sent += c.length) yield c;
  }
  const r2 = await rawRequest(S.server, {
    method: 'POST',
    path: `/sessions/${a.id}/exec`,
    headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
    chunks: chunks(40 * MiB),
  }).catch((e: Error) => ({ status: -1, error: e.message }));
  assert.ok(
    r2.status === 413 || (r2.status === -1 && /EPIPE|ECONNRESET/.test(String((r2 as { error?: string }).error))),
    `chunked 40 MB body: ${JSON.stringify(r2).slice(0, 200)}`,
  );
  const r3 = await rawRequest(S.server, { path: '/health', headers: { 'x-big': 'y'.repeat(1024 * 1024) } }).catch((e: Error) => ({ status: -1, error: e.message }));
  assert.ok(r3.status === 431 || (r3.status === -1 && /EPIPE|ECONNRESET/.test(String((r3 as { error?: string }).error))), `1 MB of headers: ${JSON.stringify(r3).slice(0, 100)}`);
  for (let i = 0; i < 5; i++) {
    const u = await upload(S.server, a.id, Buffer.alloc(20 * MiB, 0x62), { path: `over-${i}.bin` });
    assert.equal(u.status, 413, `upload over SANDBOX_MAX_UPLOAD_BYTES: ${JSON.stringify(u.body)}`);
  }
  const l = await listFiles(S.server, a.id);
  assert.deepEqual(l.body.files, [], 'no truncated upload is kept');
  assert.deepEqual(await readdir(`${a.box.dir}/staging`).catch(() => []), [], 'no staged leftovers');
  const under = await upload(S.server, a.id, Buffer.alloc(MiB, 0x63), { path: 'ok.bin' });
  assert.equal(under.status, 201);
  if (global.gc) global.gc();
  const rss1 = await serverRssKb(S.server);
  t.diagnostic(`server RSS ${rss0} kB -> ${rss1} kB`);
  assert.ok(rss1 - rss0 < 150 * 1024, `server RSS grew by ${rss1 - rss0} kB`);
  await finishCase(S, a);
});

test('file API and editor still answer for ordinary use after the attacks', async () => {
  await postChecks(S, 'end of file');
  const v = await download(S.server, S.victim, 'secret.txt');
  assert.equal(v.status, 200);
  assert.equal(v.body.toString(), VICTIM_SECRET);
  const h = await api(S.server, 'GET', '/health');
  assert.equal(h.body.session_count, 1, 'only the victim session is left');
});
