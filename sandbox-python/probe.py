"""Start-up self-test, run inside a freshly launched sandbox: reports what it can see
and do as JSON on stdout, so the server can check every protection before it serves.
argv[1]: a host path that must not be visible (the sessions root)."""
import json
import os
import socket
import sys

report = {}
status = {}
with open("/proc/self/status") as f:
    for line in f:
        k, _, v = line.partition(":")
        status[k] = v.strip()
report["uid"] = os.getuid()
report["cap_eff"] = status.get("CapEff")
report["no_new_privs"] = status.get("NoNewPrivs")
report["seccomp"] = status.get("Seccomp")
try:
    report["init_environ"] = sorted(k.split("=", 1)[0] for k in open("/proc/1/environ").read().split("\0") if k)
except OSError as e:
    report["init_environ"] = f"unreadable: {e.strerror}"
report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
report["host_path_visible"] = os.path.exists(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1)
try:
    s.connect(("1.1.1.1", 443))
    report["network"] = "connected"
except OSError as e:
    report["network"] = f"blocked: {e.strerror}"
finally:
    s.close()
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    report["netlink"] = "allowed"
except OSError as e:
    report["netlink"] = f"blocked: {e.strerror}"
try:
    import ctypes
    r = ctypes.CDLL(None, use_errno=True).unshare(0x10000000)  # CLONE_NEWUSER
    report["unshare_user"] = "allowed" if r == 0 else f"blocked: {os.strerror(ctypes.get_errno())}"
except Exception as e:  # noqa: BLE001 - any failure (no libc symbol, denied) is a result to report
    report["unshare_user"] = f"blocked: {e}"
for path in ("/", "/usr", "/etc"):
    try:
        open(os.path.join(path, ".probe"), "w").close()
        report[f"writable:{path}"] = True
    except OSError:
        report[f"writable:{path}"] = False
report["workspace_writable"] = os.access("/workspace", os.W_OK)
print(json.dumps(report))
