"""The session interpreter's driver: runs inside the sandbox, one per session.

Wire format (control channel, see src/runner/frame-codec.ts for the other side):
  every frame is  u32 big-endian body length | u8 kind | body
  server -> driver on fd 3, driver -> server on fd 4. The kinds are FrameKind below (the
  server's table, FrameKind in frame-codec.ts, is checked to agree by
  test/unit/frame-kinds.test.ts); the JSON bodies are the TypedDicts after it.

Invariants:
  - Code never arrives on stdin (which is /dev/null) or any stream a program's output
    shares: stdout/stderr of a cell are fresh pipes made for that cell and read only by
    the driver, which frames them on fd 4: by the main thread when the code returns
    within ENGAGE_AFTER (one write carries output and answer), by the relay thread as
    the output comes once a cell runs longer. A program that prints a sentinel or fake
    JSON only produces bytes in its own O/R frames.
  - Output written after a cell ended (a background child of that cell) never reaches a
    later cell: the cell's pipes are drained and closed at the cell's end, so late
    writers get EPIPE.
  - Per stream, at most max_output_bytes are forwarded, then, when the cell ends, the last
    tail_bytes of the rest (the tail the result keeps); what is between is counted, not
    sent. The driver holds at most tail_bytes per stream for this.
  - Matplotlib figures (the backend is Agg, set by the server's environment): plt.show()
    and the end of a cell save every open figure as /workspace/figures/figure_<n>.png and
    close it, so a plot comes back as an artifact without the code naming a file.
  - The control fds are moved to high, close-on-exec descriptors, so processes the code
    starts never inherit them.
Known limit: user code runs in this very process, so with deliberate effort (gc,
/proc/self/fd) it can reach the driver's own objects and descriptors. That lets a
session lie to the server about its own results, nothing more: the sandbox, not the
driver, is the security boundary, and the server validates every frame it receives.
"""

import json
import os
import select
import signal
import struct
import sys
import threading
import traceback
from enum import IntEnum, unique

# Bound now: session code that replaces json.dumps or struct.pack in those modules
# must not break the driver's own framing.
_dumps, _loads, _pack, _unpack = json.dumps, json.loads, struct.pack, struct.unpack

CONTROL_IN, CONTROL_OUT = 3, 4
MAX_FRAME = 64 << 20  # frames from the server: code (<= 16 MiB) and tool replies
CHUNK = 64 * 1024
TOOL_CALL_MAX = 1 << 20  # the server accepts frames up to 2 MiB from us
ENGAGE_AFTER = 0.003  # seconds a cell runs before its output is streamed as it comes


@unique
class FrameKind(IntEnum):
    """The u8 kind of a frame. The server's table is FrameKind in src/runner/frame-codec.ts,
    and test/unit/frame-kinds.test.ts checks that the two agree: one `NAME = ord(...)`
    line per kind (that test reads them from this source)."""

    EXEC = ord("E")  # server -> driver: run a cell; JSON {"id", "code", "max_output_bytes", "tail_bytes"}
    INTERRUPT = ord("I")  # server -> driver: KeyboardInterrupt in the running cell; JSON {"id"}
    TOOL_REPLY = ord("U")  # server -> driver: a tool call's answer; JSON {"call_id", "ok", "content" | "error"}
    HELLO = ord("H")  # driver -> server: ready, pre-imports done; JSON {}
    STDOUT = ord("O")  # driver -> server: raw stdout bytes of the running cell
    STDERR = ord("R")  # driver -> server: raw stderr bytes of the running cell
    TOOL_CALL = ord("T")  # driver -> server: a programmatic tool call; JSON {"call_id", "name", "input"}
    DONE = ord("D")  # driver -> server: the cell ended; JSON {"id", "return_code", "limit", ...}
    SETUP_FAILED = ord("X")  # template child (zygote.py) -> server, instead of a hello; JSON {"error"}


# The JSON bodies of the frames, checked by pyright. They exist for the type checker only:
# at run time the driver never imports typing (milliseconds at every interpreter start),
# and the annotations that name them are strings or inside functions, so never evaluated.
# (No `from __future__ import annotations`: compile() would pass it on to session code.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, NotRequired, TypedDict

    class ExecRequest(TypedDict):
        """FrameKind.EXEC: run `code` as cell `id`, forwarding at most max_output_bytes per
        stream, then the last tail_bytes of the rest."""

        id: int
        code: str
        max_output_bytes: int
        tail_bytes: NotRequired[int]

    class InterruptRequest(TypedDict):
        """FrameKind.INTERRUPT: stop cell `id` (ignored if another cell runs by then)."""

        id: int

    class ToolReply(TypedDict):
        """FrameKind.TOOL_REPLY, and what call_tool returns: `content` when ok, else `error`."""

        call_id: str
        ok: bool
        content: NotRequired[object]
        error: NotRequired[str]

    class Hello(TypedDict):
        """FrameKind.HELLO: no fields; its arrival is the message."""

    class ToolCall(TypedDict):
        """FrameKind.TOOL_CALL. call_id comes first on the wire: the server refuses a call
        (too many in flight, too large) from the frame's first bytes, without parsing it."""

        call_id: str
        name: str
        input: object

    class Done(TypedDict):
        """FrameKind.DONE: cell `id` ended. limit: "memory" (MemoryError) or "interrupted";
        *_dropped: bytes past max_output_bytes and not in the tail, counted, not sent;
        note: a line for stderr."""

        id: int
        return_code: int
        limit: Literal["memory", "interrupted"] | None
        stdout_dropped: int
        stderr_dropped: int
        note: str | None

    class SetupFailed(TypedDict):
        """FrameKind.SETUP_FAILED, written by zygote.py's child when its sandbox fails."""

        error: str


def _move_fd_high(fd, at):
    """Moves a driver fd out of the low numbers programs commonly use, close-on-exec,
    staying under RLIMIT_NOFILE."""
    import fcntl
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        at = max(5, min(at, soft - 16))
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, at)
    os.close(fd)
    return new


class EngageTimer:
    """A timerfd: arming and disarming it are plain syscalls, so a cell that ends in
    time costs the relay thread nothing; when it fires, the relay wakes up."""

    def __init__(self, seconds):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        class Timespec(ctypes.Structure):
            _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("interval", Timespec), ("value", Timespec)]

        clock_monotonic, tfd_cloexec, tfd_nonblock = 1, os.O_CLOEXEC, os.O_NONBLOCK
        self.fd = libc.timerfd_create(clock_monotonic, tfd_cloexec | tfd_nonblock)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._settime = libc.timerfd_settime
        self._on = ctypes.byref(Itimerspec(Timespec(0, 0), Timespec(int(seconds), int(seconds % 1 * 1e9))))
        self._off = ctypes.byref(Itimerspec(Timespec(0, 0), Timespec(0, 0)))

    def arm(self):
        self._settime(self.fd, 0, self._on, None)

    def disarm(self):
        self._settime(self.fd, 0, self._off, None)

    def consume(self):
        """True if the timer had fired (a re-arm since then clears it)."""
        try:
            return len(os.read(self.fd, 8)) == 8
        except BlockingIOError:
            return False


def frame(kind, body):
    if isinstance(body, (dict, list)):
        body = _dumps(body, separators=(",", ":")).encode()
    return _pack(">IB", len(body), kind) + body


class Channel:
    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd
        self.wlock = threading.Lock()

    def send(self, kind, body):
        self.send_raw(frame(kind, body))

    def send_raw(self, data):
        # A timeout interrupt must never cut a frame in half (the channel would be lost
        # and the interpreter with it): SIGINT waits until the frame is out.
        masked = threading.current_thread() is threading.main_thread()
        if masked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with self.wlock:
                view = memoryview(data)
                while view:
                    n = os.write(self.wfd, view)
                    view = view[n:]
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def recv(self):
        head = self._read_exact(5)
        length, kind = _unpack(">IB", head)
        if length > MAX_FRAME:
            raise ValueError("frame too large")
        return kind, self._read_exact(length)


class Cell:
    """One running exec: its output pipes and byte accounting."""

    def __init__(self, cell_id, max_output_bytes, tail_bytes=0):
        self.id = cell_id
        self.max = max_output_bytes
        self.tail_max = tail_bytes
        self.sent = {1: 0, 2: 0}
        self.dropped = {1: 0, 2: 0}
        # The last tail_max bytes past max of each stream, sent when the cell ends.
        self.tail = {1: bytearray(), 2: bytearray()}
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (self.out_r, self.err_r):
            os.set_blocking(fd, False)
        self.finished = threading.Event()
        self.interrupted = False
        # "main": the main thread drains the pipes when the code returns (a quick cell);
        # "relay": the relay streams them (claimed after ENGAGE_AFTER); "done".
        self.owner = "main"
        self.lock = threading.Lock()


class Driver:
    def __init__(self):
        self.chan = Channel(_move_fd_high(CONTROL_IN, 200), _move_fd_high(CONTROL_OUT, 200))
        self.null_fd = _move_fd_high(os.open(os.devnull, os.O_RDWR), 200)
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        self.timer = EngageTimer(ENGAGE_AFTER)
        self.timer.fd = _move_fd_high(self.timer.fd, 200)
        self.requests: list[ExecRequest] = []
        self.tool_replies: dict[str, ToolReply] = {}
        self.tool_cv = threading.Condition()
        self.cell = None
        self.fd_reserve = []
        self.fill_fd_reserve()
        self.pid = os.getpid()
        self.in_user_code = False
        signal.signal(signal.SIGINT, self.on_sigint)
        self.stdout_obj = sys.stdout
        self.stderr_obj = sys.stderr
        # User code gets a module of its own as __main__ (pickle and multiprocessing look
        # functions up there); the driver stays reachable as _sandbox_driver.
        import types
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main
        self.namespace = main.__dict__
        os.dup2(self.null_fd, 0)
        os.dup2(self.null_fd, 1)
        os.dup2(self.null_fd, 2)

    def on_sigint(self, signum, frame):
        # A late interrupt (the cell already returned) must not hit the driver itself.
        if self.in_user_code:
            raise KeyboardInterrupt

    # ---- relay thread: takes over a cell that runs longer than ENGAGE_AFTER ----
    def relay(self):
        """A quick cell never wakes this thread: the main thread reads the request,
        runs the code and drains the cell's pipes itself. A timer (armed per cell, no
        thread hand-off) wakes the relay when a cell runs longer; it then streams the
        cell's output as it comes and reads the control channel (interrupts, tool
        replies) until the code returns."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        polled, poller = None, None
        while True:
            cell = self.cell
            fds = (self.wake_r, self.timer.fd)
            if cell is not None and cell.owner == "relay":
                fds += (self.chan.rfd, cell.out_r, cell.err_r)
            if fds != polled:
                # poll, not select: user code may hold descriptors past FD_SETSIZE (1024).
                poller, polled = select.poll(), fds
                for fd in fds:
                    poller.register(fd, select.POLLIN)
            assert poller is not None  # for the type checker: the first pass (polled None) made it
            try:
                ready = [fd for fd, _ in poller.poll()]
            except (InterruptedError, OSError):
                continue
            if self.timer.fd in ready and self.timer.consume():
                self.claim(self.cell)
            if self.wake_r in ready:
                # b"c": a cell was claimed for us (poll its pipes); b"f": its code returned.
                if b"f" in os.read(self.wake_r, 64) and self.cell is not None and self.cell.owner == "relay":
                    self.finish_cell(self.cell)
                    continue
            if cell is None or cell.owner != "relay" or self.cell is not cell:
                continue
            if self.chan.rfd in ready:
                try:
                    kind, body = self.chan.recv()
                except (EOFError, OSError, ValueError):
                    os._exit(0)  # the server went away or spoke garbage: nothing to serve
                self.dispatch(kind, body)
            if cell.out_r in ready:
                self.pump(cell, cell.out_r, 1)
            if cell.err_r in ready:
                self.pump(cell, cell.err_r, 2)

    def claim(self, cell):
        """Hands a running cell to the relay (from then on it owns the pipes and the
        control channel until the code returns). False if the cell is already over."""
        if cell is None:
            return False
        with cell.lock:
            if cell.owner == "main":
                cell.owner = "relay"
            return cell.owner == "relay"

    def dispatch(self, kind: int, body: bytes) -> None:
        if kind == FrameKind.EXEC:
            req: ExecRequest = _loads(body)
            self.requests.append(req)  # the server sends one at a time; read between cells
        elif kind == FrameKind.INTERRUPT:
            stop: InterruptRequest = _loads(body)
            cell = self.cell
            if cell is not None and cell.id == stop.get("id"):
                cell.interrupted = True  # also stop what the timed-out code started
                os.kill(os.getpid(), signal.SIGINT)
        elif kind == FrameKind.TOOL_REPLY:
            reply: ToolReply = _loads(body)
            with self.tool_cv:
                self.tool_replies[reply["call_id"]] = reply
                self.tool_cv.notify_all()

    def pump(self, cell, fd, stream, max_reads=16, frames=None):
        """Forward what the pipe holds now, at most max_reads chunks, so that a flood
        never keeps the relay from reading the control channel (interrupts). With
        `frames`, the frames are collected there instead of sent."""
        for _ in range(max_reads):
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return True
            if not data:
                return False
            room = cell.max - cell.sent[stream]
            if room > 0:
                part = data[:room]
                cell.sent[stream] += len(part)
                kind = FrameKind.STDOUT if stream == 1 else FrameKind.STDERR
                if frames is None:
                    self.chan.send(kind, part)
                else:
                    frames.append(frame(kind, part))
                data = data[room:]
            if data:
                tail = cell.tail[stream]
                tail += data
                excess = len(tail) - cell.tail_max
                if excess > 0:
                    del tail[:excess]
                    cell.dropped[stream] += excess
        return True

    def flush_tails(self, cell, frames=None):
        """Sends what each stream's tail holds (after its first max bytes)."""
        for stream, kind in ((1, FrameKind.STDOUT), (2, FrameKind.STDERR)):
            tail = bytes(cell.tail[stream])
            cell.tail[stream] = bytearray()
            for off in range(0, len(tail), CHUNK):
                if frames is None:
                    self.chan.send(kind, tail[off:off + CHUNK])
                else:
                    frames.append(frame(kind, tail[off:off + CHUNK]))

    def drain_and_close(self, cell, frames=None):
        # The cell's code has returned and the main thread has pointed fds 1/2 back at
        # /dev/null and closed its write ends; whatever is in the pipes now belongs to
        # this cell. Late writers (background children) find the pipes closed.
        # Bounded: a background child that keeps writing must not hold the cell open.
        self.pump(cell, cell.out_r, 1, 256, frames)
        self.pump(cell, cell.err_r, 2, 256, frames)
        os.close(cell.out_r)
        os.close(cell.err_r)
        self.flush_tails(cell, frames)

    def finish_cell(self, cell):
        self.drain_and_close(cell)
        self.cell = None
        cell.finished.set()

    # ---- main thread: runs the code ----
    def next_request(self) -> "ExecRequest":
        """Between cells the main thread reads the control channel itself."""
        while not self.requests:
            try:
                kind, body = self.chan.recv()
            except (EOFError, OSError, ValueError):
                os._exit(0)
            self.dispatch(kind, body)
        return self.requests.pop(0)

    def new_cell(self, req: "ExecRequest"):
        """The cell's pipes; at the open-files limit, the reserve pays for them."""
        try:
            return Cell(req["id"], int(req.get("max_output_bytes", 1 << 20)), int(req.get("tail_bytes", 0))), None
        except OSError:
            # The code holds RLIMIT_NOFILE descriptors: spend the reserve on this call's
            # pipes, so it can still run (and close some files); state is kept.
            self.release_fd_reserve()
            return Cell(req["id"], int(req.get("max_output_bytes", 1 << 20)), int(req.get("tail_bytes", 0))), (
                "runner: the interpreter is at its open-files limit (SANDBOX_RUNNER_NOFILE); "
                "close some files; interpreter state was kept")

    def run_forever(self):
        # Where the server's spec (src/sandbox/spec.ts) put the session's generated modules.
        self.session_lib = os.environ.pop("SANDBOX_SESSION_LIB", "")
        if self.session_lib:
            sys.path.insert(0, self.session_lib)
        threading.Thread(target=self.relay, name="relay", daemon=True).start()
        sys.meta_path.insert(0, PyplotHook)
        preload()
        # One silent cell through the whole path, so the first real call does not pay for
        # cold code (its frames carry id 0, which the server never waits for).
        self.execute({"id": 0, "code": "print(end='')", "max_output_bytes": 0})
        hello: Hello = {}
        self.chan.send(FrameKind.HELLO, hello)
        while True:
            req = self.next_request()
            try:
                self.execute(req)
            except Exception:  # noqa: BLE001 - any failure to answer ends the driver
                # The frame could not be answered (e.g. the channel broke): the server
                # sees the death and restarts us; never run on in an unknown state.
                os._exit(70)

    def forget_stale_tools(self):
        """A new programmatic-tools registration rewrites the stub: drop the old module so
        the next import sees the new set."""
        try:
            mtime = os.stat(os.path.join(self.session_lib, "_platform_tools.py")).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != getattr(self, "tools_mtime", None):
            self.tools_mtime = mtime
            sys.modules.pop("_platform_tools", None)

    def execute(self, req: "ExecRequest") -> None:
        """Runs one cell and always answers with a D frame, whatever the code did to
        its streams or descriptors."""
        self.forget_stale_tools()
        cell, note = self.new_cell(req)
        self.cell = cell
        self.timer.arm()  # past ENGAGE_AFTER, the relay takes the cell over
        _flush(sys.stdout)
        os.dup2(cell.out_w, 1)  # works even if the previous cell closed fd 1 or 2
        os.dup2(cell.err_w, 2)
        os.close(cell.out_w)
        os.close(cell.err_w)
        if self.stdout_obj.closed or self.stderr_obj.closed:
            self.stdout_obj, self.stderr_obj = _text_stream(1), _text_stream(2)
        sys.stdout, sys.stderr = self.stdout_obj, self.stderr_obj
        return_code, limit = 1, None
        try:
            patch_pyplot()
            return_code, limit = self.run_code(req["code"])
            if not cell.interrupted:
                save_figures()
        except BaseException:  # noqa: BLE001 - a D frame is sent whatever happened
            pass  # the driver's own reporting failed (e.g. stderr closed): still answer
        finally:
            for stream in (sys.stdout, sys.stderr, self.stdout_obj, self.stderr_obj):
                _flush(stream)
            os.dup2(self.null_fd, 1)
            os.dup2(self.null_fd, 2)
            if cell.interrupted:
                kill_other_processes()
            self.timer.disarm()
            with cell.lock:
                quick = cell.owner == "main"
                if quick:
                    cell.owner = "done"
            frames = []
            if quick:
                # The relay never touched this cell's pipes: drain them here and send
                # output and answer in one write.
                self.drain_and_close(cell, frames)
                self.cell = None
            else:
                os.write(self.wake_w, b"f")  # the relay drains and closes the cell's pipes
                cell.finished.wait()
            self.fill_fd_reserve()
            done: Done = {
                "id": cell.id, "return_code": return_code, "limit": limit,
                "stdout_dropped": cell.dropped[1], "stderr_dropped": cell.dropped[2], "note": note,
            }
            frames.append(frame(FrameKind.DONE, done))
            self.chan.send_raw(b"".join(frames))

    def fill_fd_reserve(self):
        """Keeps four spare descriptors (enough for one call's two pipes)."""
        try:
            while len(self.fd_reserve) < 4:
                self.fd_reserve.append(_move_fd_high(os.open(os.devnull, os.O_RDONLY), 200))
        except OSError:
            pass

    def release_fd_reserve(self):
        for fd in self.fd_reserve:
            os.close(fd)
        self.fd_reserve = []

    def run_code(self, code):
        """Returns (return_code, limit). Mirrors the reference REPL: exec in one
        persistent namespace; the value of a trailing expression is not echoed."""
        try:
            compiled = compile(code, "<cell>", "exec")
        except (SyntaxError, ValueError, OverflowError):
            print_user_traceback(*sys.exc_info())
            return 1, None
        try:
            self.in_user_code = True
            try:
                exec(compiled, self.namespace)
            except BaseException as e:
                self.in_user_code = False
                if os.getpid() != self.pid:
                    exit_forked_child(e)
                raise
            self.in_user_code = False
            if os.getpid() != self.pid:
                exit_forked_child(None)
            return 0, None
        except SystemExit as e:
            code_ = e.code
            if code_ is None:
                return 0, None
            if isinstance(code_, int):
                return code_ & 0xFF if code_ >= 0 else 1, None
            print(code_, file=sys.stderr)
            return 1, None
        except KeyboardInterrupt:
            print_user_traceback(*sys.exc_info())
            return 130, "interrupted"
        except MemoryError:
            print_user_traceback(*sys.exc_info())
            return 1, "memory"
        except BaseException:  # noqa: BLE001 - whatever the user code raised is its result
            print_user_traceback(*sys.exc_info())
            return 1, None
        finally:
            _flush(sys.stdout)

    # ---- programmatic tools: called from _platform_tools in the main thread ----
    def call_tool(self, name: str, payload: object, timeout_seconds: float) -> "ToolReply":
        import uuid
        call_id = uuid.uuid4().hex
        call: ToolCall = {"call_id": call_id, "name": name, "input": payload}
        body = _dumps(call, separators=(",", ":")).encode()
        if len(body) > TOOL_CALL_MAX:
            error = f"tool {name!r}: arguments of {len(body)} bytes exceed the {TOOL_CALL_MAX}-byte limit"
            return {"call_id": call_id, "ok": False, "error": error}
        cell = self.cell
        if cell is not None and self.claim(cell) and cell.owner == "relay":
            os.write(self.wake_w, b"c")  # the reply comes on the channel: the relay reads it
        self.chan.send(FrameKind.TOOL_CALL, body)
        with self.tool_cv:
            ok = self.tool_cv.wait_for(lambda: call_id in self.tool_replies, timeout=timeout_seconds)
            if not ok:
                return {"call_id": call_id, "ok": False, "error": f"tool {name!r} timed out after {timeout_seconds}s"}
            return self.tool_replies.pop(call_id)


def print_user_traceback(etype, value, tb):
    """The traceback without the driver's own frames: the user sees their code only.
    Written to fd 2 directly when sys.stderr is gone or closed; never raises."""
    try:
        te = traceback.TracebackException(etype, value, tb, compact=True)
        te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != __file__])
        text = "".join(te.format())
    except Exception:  # noqa: BLE001 - never raises: fall back to a one-line message
        text = f"{etype.__name__}: {value}\n"
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - user code may have replaced or broken sys.stderr
        try:
            os.write(2, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass


def _flush(stream):
    try:
        if stream is not None:
            stream.flush()
    except Exception:  # noqa: BLE001 - a stream the user code broke must not stop the driver
        pass


def exit_forked_child(exc):
    """A process forked by user code (os.fork) came back out of the cell into the
    driver: it must never act as the driver (send frames, read requests). It ends here,
    with the status its code would have given."""
    status = 0
    if isinstance(exc, SystemExit):
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    elif exc is not None:
        print_user_traceback(type(exc), exc, exc.__traceback__)
        status = 1
    _flush(sys.stdout)
    _flush(sys.stderr)
    os._exit(status & 0xFF)


def _text_stream(fd):
    import io
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                            errors="backslashreplace", write_through=True)


def kill_other_processes():
    """SIGKILL every process of this sandbox but init (pid 1) and ourselves: what a
    timed-out cell left running. kill(-1) skips both by definition.
    Never as root: in its sandbox the driver is uid 1000 in its own pid namespace; run by
    hand as root outside one, kill(-1) would reach every process of the host."""
    if os.geteuid() == 0:
        return
    for _ in range(50):
        others = [p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", str(os.getpid()))]
        if not others:
            break
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


FIGURES_DIR = "/workspace/figures"
_figure_next = [1]


def save_figures():
    """Saves every open matplotlib figure as a PNG in FIGURES_DIR and closes it. Only if
    the code imported pyplot; a figure that cannot be saved gets one line in stderr."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        numbers = plt.get_fignums()
    except Exception:  # noqa: BLE001 - user code may have broken pyplot: nothing to save
        return
    for num in numbers:
        try:
            os.makedirs(FIGURES_DIR, exist_ok=True)
            while os.path.lexists(f"{FIGURES_DIR}/figure_{_figure_next[0]}.png"):
                _figure_next[0] += 1
            path = f"{FIGURES_DIR}/figure_{_figure_next[0]}.png"
            _figure_next[0] += 1
            fig = plt.figure(num)
            fig.savefig(path, format="png")
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 - reported, never fatal to the cell
            print(f"figure {num} could not be saved: {type(e).__name__}: {e}", file=sys.stderr)
            try:
                plt.close(num)
            except Exception:  # noqa: BLE001 - best effort
                pass


def _show(*args, **kwargs):
    """plt.show() under Agg: what a notebook would display is saved (save_figures)."""
    save_figures()


class PyplotHook:
    """A meta-path finder that patches pyplot.show the moment pyplot is imported, so a
    cell that imports pyplot and calls show() in one go gets its figures saved (and no
    "non-GUI backend" warning). Every other import is left to the usual finders."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        import importlib.machinery
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if spec is None or exec_module is None:
            return spec

        def exec_and_patch(module):
            exec_module(module)
            setattr(module, "show", _show)  # noqa: B010 - see patch_pyplot

        setattr(loader, "exec_module", exec_and_patch)  # noqa: B010 - this spec's loader only
        return spec


def patch_pyplot():
    """Points pyplot.show at _show once pyplot is imported (by the preload, or by the
    previous cell: a cell that imports pyplot itself gets its figures saved at its end)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and getattr(plt, "show", None) is not _show:
        setattr(plt, "show", _show)  # noqa: B010 - a module attribute the type checker does not know


def preload():
    """Imports the SANDBOX_PRELOAD modules; one that fails is skipped (the template, where
    there is one, has imported them already and reported its failures)."""
    for name in os.environ.get("SANDBOX_PRELOAD", "").split(","):
        if not name.strip():
            continue
        try:
            __import__(name.strip())
        except BaseException:  # noqa: BLE001 - a missing module must not stop the session
            pass
    os.environ.pop("SANDBOX_PRELOAD", None)


DRIVER = None

if __name__ == "__main__":
    sys.modules["_sandbox_driver"] = sys.modules[__name__]
    DRIVER = Driver()
    DRIVER.run_forever()
