"""The load driver of `npm run bench`: drives the server as the Otari gateway does.

The gateway is a Python program: it holds one HTTP/1.1 keep-alive connection per client
(here the stdlib http.client), parses every answer as JSON, and pays Python's own costs
on each call (two writes per request, header parsing, json.loads). A Node client hides
those, so the gateway-path figures of bench/bench.ts are taken with this driver.

Contract: run as `/usr/bin/python3 -I bench/client.py JOB`, JOB being one JSON object
with "op" (one of OPS below), "host", "port", "deadline_s" (a wall-clock budget for the
whole job) and the op's own fields. On success it prints one JSON object of raw timings
(milliseconds, from time.perf_counter_ns) on stdout and exits 0; the Node side computes
every figure. On failure it prints the error on stderr and exits 1. Every loop stops at
a count or at the job's deadline, whichever comes first. Parallel clients are processes
(fork), one connection each: with threads the GIL would make a throughput figure measure
the client. Each worker dies with its parent (PR_SET_PDEATHSIG), so a killed driver leaves
nothing behind; sessions it could not delete are deleted when the server stops.

Times are CLOCK_MONOTONIC (perf_counter), which is one clock for every process of the host,
so the Node side can put the workers' start and end times on one axis.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import multiprocessing
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

Job = dict[str, Any]
PRINT1: Job = {"tool": "code_execution", "input": {"code": "print(1)"}}


def now_ms() -> float:
    return time.perf_counter_ns() / 1e6


class BenchError(Exception):
    """The server's answer was not the one expected: the job fails with this message."""


class Api:
    """One keep-alive connection to the server, used as a gateway client uses it."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)
        self.new_connections = 0

    def call(self, method: str, path: str, body: Job | None = None) -> tuple[int, Any]:
        if self.conn.sock is None:
            self.new_connections += 1
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # the next call opens a new connection, as a client would
            raise
        return r.status, (json.loads(raw) if raw else None)

    def create(self) -> str:
        status, body = self.call("POST", "/sessions", {})
        if status != 201:
            raise BenchError(f"POST /sessions: {status} {str(body)[:300]}")
        return str(body["session_id"])

    def exec(self, sid: str, body: Job, expect_stdout: str | None = None) -> None:
        status, out = self.call("POST", f"/sessions/{sid}/exec", body)
        if status != 200:
            raise BenchError(f"exec {body.get('tool')}: {status} {str(out)[:300]}")
        content = out["result_block"]["content"]
        if content.get("return_code") != 0 or (expect_stdout is not None and content.get("stdout") != expect_stdout):
            raise BenchError(f"exec {body.get('tool')} gave an unexpected result: {json.dumps(content)[:400]}")

    def delete(self, sid: str) -> None:
        status, body = self.call("DELETE", f"/sessions/{sid}")
        if status not in (204, 404):
            raise BenchError(f"DELETE /sessions/{sid}: {status} {str(body)[:300]}")

    def close(self) -> None:
        self.conn.close()


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): a worker never outlives the driver."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)


def call_body(job: Job, i: int) -> Job:
    """The exec body of call i: with "vary_path", the editor's path is made unique per call."""
    body: Job = {"tool": job["tool"], "input": dict(job["input"])}
    if job.get("vary_path"):
        body["input"]["path"] = f"bench-{i}.txt"
    return body


# ---------------------------------------------------------------- ops ----------------


def op_exec(job: Job, api: Api, deadline: float) -> Job:
    """`warmup` then `n` sequential calls of one tool on one session (its own, unless
    "session" names one); the session is deleted at the end when it is ours."""
    own = not job.get("session")
    sid = api.create() if own else str(job["session"])
    expect = job.get("expect_stdout")
    try:
        warm: list[float] = []
        xs: list[float] = []
        for i in range(int(job.get("warmup", 0)) + int(job["n"])):
            if now_ms() > deadline:
                break
            body = call_body(job, i)
            t0 = now_ms()
            api.exec(sid, body, expect)
            (warm if i < int(job.get("warmup", 0)) else xs).append(now_ms() - t0)
        return {"ms": xs, "warmup_ms": warm, "new_connections": api.new_connections}
    finally:
        if own:
            api.delete(sid)


def op_noop(job: Job, api: Api, deadline: float) -> Job:
    """GET /health: Node's HTTP no-op as the Python client sees it."""
    xs: list[float] = []
    for i in range(int(job.get("warmup", 0)) + int(job["n"])):
        if now_ms() > deadline:
            break
        t0 = now_ms()
        status, _ = api.call("GET", "/health")
        t1 = now_ms()
        if status != 200:
            raise BenchError(f"GET /health: {status}")
        if i >= int(job.get("warmup", 0)):
            xs.append(t1 - t0)
    return {"ms": xs, "new_connections": api.new_connections}


def op_burst(job: Job, api: Api, deadline: float) -> Job:
    """`n` creates in a row (for up to `creates_budget_s`), each followed by its first
    print(1), with no wait for the warm pool between them; then the sessions are deleted
    one at a time, each timed, for up to `delete_budget_s`; those left are deleted untimed,
    8 at a time."""
    create: list[float] = []
    first: list[float] = []
    ids: list[str] = []
    deletes: list[float] = []
    creates_until = min(deadline, now_ms() + float(job["creates_budget_s"]) * 1000)
    try:
        for _ in range(int(job["n"])):
            if now_ms() > creates_until:
                break
            t0 = now_ms()
            sid = api.create()
            ids.append(sid)
            t1 = now_ms()
            api.exec(sid, PRINT1, "1")
            create.append(t1 - t0)
            first.append(now_ms() - t1)
        delete_until = min(deadline, now_ms() + float(job["delete_budget_s"]) * 1000)
        while ids and now_ms() < delete_until:
            t0 = now_ms()
            api.delete(ids[0])
            deletes.append(now_ms() - t0)
            ids.pop(0)
    finally:
        delete_in_parallel(api, ids)
    return {"create_ms": create, "first_ms": first, "delete_ms": deletes, "new_connections": api.new_connections}


def delete_in_parallel(api: Api, ids: list[str]) -> None:
    """Untimed clean-up: threads are enough here (nothing is measured)."""
    if not ids:
        return
    host, port = api.conn.host, api.conn.port

    def one(sid: str) -> None:
        a = Api(host, port)
        try:
            a.delete(sid)
        finally:
            a.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, ids))


def churn_worker(job: Job, barrier: Barrier) -> Job:
    """One gateway chat request after another: create, one print(1), delete."""
    api = Api(str(job["host"]), int(job["port"]))
    barrier.wait()
    start = now_ms()
    stop = start + float(job["seconds"]) * 1000
    iters: list[list[float]] = []
    while now_ms() < stop:
        t0 = now_ms()
        sid = api.create()
        t1 = now_ms()
        try:
            api.exec(sid, PRINT1, "1")
        finally:
            t2 = now_ms()
            api.delete(sid)
        t3 = now_ms()
        iters.append([t1 - t0, t2 - t1, t3 - t2, t3])
    api.close()
    return {"start_ms": start, "iters": iters, "new_connections": api.new_connections}


def throughput_worker(job: Job, barrier: Barrier) -> Job:
    """One session, print(1) in a loop for `seconds`."""
    api = Api(str(job["host"]), int(job["port"]))
    sid = api.create()
    lat: list[float] = []
    start = last = 0.0
    try:
        for _ in range(int(job.get("warmup", 20))):
            api.exec(sid, PRINT1, "1")
        barrier.wait()
        start = now_ms()
        stop = start + float(job["seconds"]) * 1000
        while now_ms() < stop:
            t0 = now_ms()
            api.exec(sid, PRINT1, "1")
            last = now_ms()
            lat.append(last - t0)
    finally:
        api.delete(sid)
        api.close()
    return {"start_ms": start, "lat_ms": lat, "last_ms": last, "new_connections": api.new_connections}


Worker = Callable[[Job, Barrier], Job]


def worker_main(fn: Worker, job: Job, barrier: Barrier, out: Connection) -> None:
    die_with_parent()
    try:
        out.send({"ok": fn(job, barrier)})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the job
        barrier.abort()
        out.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        out.close()


def run_parallel(fn: Worker, job: Job, deadline: float) -> list[Job]:
    """`clients` processes, released together by a barrier; their results in order."""
    ctx = multiprocessing.get_context("fork")
    n = int(job["clients"])
    barrier = ctx.Barrier(n, timeout=max(1.0, (deadline - now_ms()) / 1000))
    pipes = [ctx.Pipe(duplex=False) for _ in range(n)]
    procs = [ctx.Process(target=worker_main, args=(fn, job, barrier, w), daemon=True) for _, w in pipes]
    for p in procs:
        p.start()
    for _, w in pipes:
        w.close()
    results: list[Job] = []
    errors: list[str] = []
    try:
        for r, _ in pipes:
            left = max(0.0, (deadline - now_ms()) / 1000)
            if not r.poll(left):
                raise BenchError(f"a worker did not answer within the job's deadline ({job['deadline_s']} s)")
            try:
                msg = r.recv()
            except EOFError:
                errors.append("a worker exited without a result")
                continue
            if "error" in msg:
                errors.append(str(msg["error"]))
            else:
                results.append(msg["ok"])
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
    if errors:
        raise BenchError("; ".join(sorted(set(errors)))[:1000])
    return results


def op_churn(job: Job, api: Api, deadline: float) -> Job:
    return {"workers": run_parallel(churn_worker, job, deadline)}


def op_throughput(job: Job, api: Api, deadline: float) -> Job:
    return {"workers": run_parallel(throughput_worker, job, deadline)}


def time_command(argv: list[str], n: int, deadline: float, expect: bytes) -> list[float]:
    xs: list[float] = []
    for _ in range(n):
        if now_ms() > deadline:
            break
        t0 = now_ms()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=HOST_ENV, timeout=30, check=False)
        xs.append(now_ms() - t0)
        if r.returncode != 0 or r.stdout != expect:
            raise BenchError(f"{argv[0]} exited {r.returncode}: {r.stdout[:200]!r} {r.stderr[:300]!r}")
    return xs


HOST_ENV = {"PATH": "/usr/bin:/bin"}
BWRAP = ["/usr/bin/bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "/bin/true"]


def op_floors(job: Job, api: Api, deadline: float) -> Job:
    """Host floors, no server: fork+exec of `bash -c 'echo hi'` and a bare bubblewrap start."""
    warm = int(job.get("warmup", 5))
    time_command(["/bin/bash", "-c", "echo hi"], warm, deadline, b"hi\n")
    bash = time_command(["/bin/bash", "-c", "echo hi"], int(job["n_bash"]), deadline, b"hi\n")
    time_command(BWRAP, warm, deadline, b"")
    bwrap = time_command(BWRAP, int(job["n_bwrap"]), deadline, b"")
    return {"bash_ms": bash, "bwrap_ms": bwrap}


OPS: dict[str, Callable[[Job, Api, float], Job]] = {
    "exec": op_exec,
    "noop": op_noop,
    "burst": op_burst,
    "churn": op_churn,
    "throughput": op_throughput,
    "floors": op_floors,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: client.py JOB_JSON", file=sys.stderr)
        return 2
    job: Job = json.loads(argv[1])
    op = OPS.get(str(job.get("op")))
    if op is None:
        print(f"unknown op {job.get('op')!r}; known: {', '.join(OPS)}", file=sys.stderr)
        return 2
    deadline = now_ms() + float(job["deadline_s"]) * 1000
    api = Api(str(job.get("host", "127.0.0.1")), int(job.get("port", 0)))
    try:
        result = op(job, api, deadline)
    except (BenchError, OSError, http.client.HTTPException, KeyError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        api.close()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
