/**
 * Helpers of the templates (sandbox-python/zygote.py) that need no sandbox, run in a plain
 * python3 that loads the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const zygote = fileURLToPath(new URL('../../../sandbox-python/zygote.py', import.meta.url));

test('the templates wait on descriptors past 1023: a template serving hundreds of boxes holds them (select() refused them and ended the command template)', () => {
  const out = execFileSync(
    '/usr/bin/python3',
    [
      '-I',
      '-c',
      [
        'import importlib.util, os, sys',
        's = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)',
        'pid = os.fork()',
        'if pid == 0:',
        '    os.read(os.open("/dev/zero", os.O_RDONLY), 1); os.pause()',
        'os.dup2(os.pidfd_open(pid), 1500)',
        'alive = z.readable(1500, 0)',
        'os.kill(pid, 9); os.waitpid(pid, 0)',
        'print(alive, z.readable(1500, 0), z.readable(1500))',
      ].join('\n'),
      zygote,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(out, 'False True True\n');
});

test("a spawner's report read only when its spawn is finished is still its own (it was dropped as nobody's: 'the spawner did not answer', several times a test run)", () => {
  const out = execFileSync(
    '/usr/bin/python3',
    [
      '-I',
      '-c',
      [
        'import importlib.util, os, sys',
        's = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)',
        'r, w = os.pipe()',
        'os.set_blocking(r, False)',
        'zy = z.Zygote.__new__(z.Zygote)',
        'zy.reports, zy.report_buf, zy.spawns, zy.reported = r, b"", {}, {}',
        // (the spawn was taken out of `spawns` before its report was read, as spawn_died does)
        'os.write(w, b\'{"id":7,"ok":true,"token":"t7"}\\n{"id":8,"ok":true,"token":"t8"}\\n\')',
        'zy.drain_reports(z.Start({"id": 7, "token": "t7"}, 0))',
        'print(sorted(zy.reported), zy.reported[7]["ok"])',
      ].join('\n'),
      zygote,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(out, '[7] True\n', 'the finished spawn gets its report; a report of no spawn under way is dropped');
});

test("a report counts only with its spawn's token, and no line on the report pipe stops the template (red team: one line of a process of a box's uid did, and forged failures broke other boxes' starts)", () => {
  const out = execFileSync(
    '/usr/bin/python3',
    [
      '-I',
      '-c',
      [
        'import importlib.util, os, sys',
        's = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)',
        'r, w = os.pipe()',
        'os.set_blocking(r, False)',
        'zy = z.Zygote.__new__(z.Zygote)',
        'zy.reports, zy.report_buf, zy.reported = r, b"", {}',
        'zy.spawns = {101: z.Start({"id": 1, "token": "secret-1"}, 0), 102: z.Start({"id": 2, "token": "secret-2"}, 0)}',
        'lines = [b\'{"id":[1],"ok":true}\', b"[" * 4000, b\'{"id":{"a":1}}\', b"[1]", b"null", b\'{"id":1,"error":"FORGED"}\',',
        '         b\'{"id":1,"error":"FORGED","token":"secret-2"}\', b\'{"id":1,"error":"FORGED","token":["secret-1"]}\', b\'{"id":2,"ok":true,"token":"secret-2"}\']',
        'for line in lines:',
        '    os.write(w, line + b"\\n")',
        '    zy.drain_reports()',
        'print(sorted(zy.reported), zy.reported.get(2))',
      ].join('\n'),
      zygote,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(out, "[2] {'id': 2, 'ok': True, 'token': 'secret-2'}\n", 'only the report with its own token is taken; the forged ones and the garbage are dropped');
});

test("a command is handed to its slot without ever blocking the command template, whoever else holds the slot's socket (red team: a process of the box's uid that shared it cleared O_NONBLOCK and filled it, and the template stopped in a send: every session's commands stalled)", () => {
  const out = execFileSync(
    '/usr/bin/python3',
    [
      '-I',
      '-c',
      [
        'import fcntl, importlib.util, json, os, select, signal, socket, sys, tempfile',
        's = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)',
        'zy = z.Zygote()',
        'zy.send = lambda msg: print(msg["t"], msg.get("error", "")[:40])',
        'pid = os.fork()',
        'if pid == 0:',
        '    os.closerange(0, 3)',
        '    signal.pause()',
        'pidfd = os.pidfd_open(pid)',
        'mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)',
        'mine.setblocking(False)',
        // (the other holder of Zc's socket: the same open file description, blocking again)
        'other = os.dup(mine.fileno())',
        'fcntl.fcntl(other, fcntl.F_SETFL, fcntl.fcntl(other, fcntl.F_GETFL) & ~os.O_NONBLOCK)',
        'while True:',
        '    try:',
        '        mine.send(b"x", socket.MSG_DONTWAIT)',
        '    except BlockingIOError:',
        '        break',
        'd = tempfile.mkdtemp()',
        'paths = [f"{d}/out", f"{d}/err"]',
        'readers = []',
        'for p in paths:',
        '    os.mkfifo(p)',
        '    readers.append(os.open(p, os.O_RDONLY | os.O_NONBLOCK))',
        'status, _ = z.pipe_for_peer()',
        'zy.slots["box"] = slot = z.Slot(mine, status, ("init",), pidfd)',
        'slot.pid = pid',
        'zy.poller.register(pidfd, select.POLLIN)',
        // (a send that blocks never returns: the alarm then ends this process, and the test fails)
        'signal.alarm(30)',
        'zy.hand_off("box", {"id": 1, "box": "box", "argv": ["/bin/true"], "script": None, "spec": {}, "stdout": paths[0], "stderr": paths[1]})',
        'signal.alarm(0)',
        'print("returned", "box" in zy.busy)',
        'os.kill(pid, signal.SIGKILL)',
        'os.waitpid(pid, 0)',
      ].join('\n'),
      zygote,
    ],
    { encoding: 'utf8' },
  );
  assert.match(out, /^failed BlockingIOError.*\nreturned False\n$/, out);
});

test("the command template's channels to a box's processes: a socket it writes to takes no message from the other end (so no descriptor: third red team, a lingering TCP socket passed to the template blocked its close), and a report pipe is read line by line, never past a line's length", () => {
  const out = execFileSync(
    '/usr/bin/python3',
    [
      '-I',
      '-c',
      [
        'import importlib.util, os, socket, sys',
        's = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)',
        'mine, theirs = z.send_only_pair()',
        'for what in ("message", "descriptor"):',
        '    try:',
        '        socket.send_fds(theirs, [b"x"], [0] if what == "descriptor" else [])',
        '        print(what, "taken")',
        '    except BrokenPipeError:',
        '        print(what, "refused")',
        'z.send_rights(mine, b"c", [0])',
        'print("unread", z.unread(mine) > 0)',
        'data, fds, _, _ = socket.recv_fds(theirs, 16, 4)',
        'print("read", data, len(fds), z.unread(mine))',
        'r, w = z.pipe_for_peer()',
        'slot = z.Slot(None, r, None, -1)',
        'print(slot.line())',
        'os.write(w, b"started\\nexit 0\\nex")',
        'print(slot.line(), slot.line(), slot.line())',
        'os.write(w, b"it 3\\n")',
        'print(slot.line())',
        'os.write(w, b"x" * (z.STATUS_LINE_MAX + 1))',
        'print(slot.line(), slot.buf)',
        'os.write(w, b"exit 1")',
        'os.close(w)',
        'print(slot.line())',
      ].join('\n'),
      zygote,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(out, ['message refused', 'descriptor refused', 'unread True', "read b'c' 1 0", 'None', "b'started' b'exit 0' None", "b'exit 3'", "b'' b''", "b''", ''].join('\n'));
});
