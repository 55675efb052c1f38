"""The remote supervisor on its own, over pipes (no ssh): start, a stream relayed to the kernel,
a session handed over by the attach relay, pings, stop, and a launcher gone for good.

Usage: python supervisor_test.py SRC_REMOTE_DIR. Prints "ok: ..." per check; raises on failure.
The kernel is the python3 (ipykernel) of the running interpreter; its runtime dir is a temp dir.
"""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

from remote_helpers import *  # noqa: F401,F403 (the sources, frames and checks)

env = dict(os.environ, JUPYTER_RUNTIME_DIR=tempfile.mkdtemp(prefix="sshpyk-sup-test-"))
atexit.register(shutil.rmtree, env["JUPYTER_RUNTIME_DIR"], True)
start = {"op": "start", "key": "k3y", "signature_scheme": "hmac-sha256", "kernel_name": "python3", "orphan_timeout": 30, "ping_interval": 1}


def start_supervisor():
    sup = subprocess.Popen([sys.executable, "-u", "-c", LOADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    sup.stdin.write(b"%012d" % len(SUPERVISOR) + SUPERVISOR + message(start))
    sup.stdin.flush()
    skip_to_marker(sup.stdout)
    _, _, ready = next_frame(sup.stdout)
    check(ready["event"] == "ready" and ready["transport"] == "ipc", "the supervisor starts the kernel in one round trip")
    return sup, ready


sup, ready = start_supervisor()
connection = json.load(open(os.path.join(ready["run_dir"], "kernel.json")))
check(connection["key"] == "k3y" and oct(os.stat(os.path.join(ready["run_dir"], "kernel.json")).st_mode & 0o777) == "0o600", "the kernel's connection file holds the key, mode 0600")

# A stream to the heartbeat socket: our greeting goes in, the kernel's comes back.
sup.stdin.write(frame(1, OPEN, b"hb") + frame(1, DATA, ZMTP_GREETING))
sup.stdin.flush()
got = b""
while len(got) < len(ZMTP_GREETING):
    stream, kind, payload = next_frame(sup.stdout)
    if stream == 1 and kind == DATA:
        got += payload
    elif stream == 1 and kind == CLOSE:
        raise AssertionError("the kernel closed the stream")
check(got[:1] == b"\xff" and got[9:10] == b"\x7f", "bytes flow both ways between a stream and the kernel's socket")
sup.stdin.write(frame(2, OPEN, b"nosuchchannel"))
sup.stdin.flush()
stream, kind, _ = next_frame(sup.stdout)
while stream == 1:
    stream, kind, _ = next_frame(sup.stdout)
check((stream, kind) == (2, CLOSE), "a stream to an unknown channel is closed at once")
sup.stdin.write(message({"op": "arm"}))
sup.stdin.flush()

# A new session takes over through the attach relay; the old one is let go.
relay = subprocess.Popen([sys.executable, "-S", "-c", ATTACH, os.path.join(ready["run_dir"], "supervisor.sock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
skip_to_marker(relay.stdout)
_, _, attached = next_frame(relay.stdout)
check(attached == {"event": "attached", "pid": ready["pid"]}, "the attach relay hands a new session to the supervisor")
relay.stdin.write(message({"op": "ping"}))
relay.stdin.flush()
_, _, pong = next_frame(relay.stdout, skip_output=False)
while pong.get("event") == "output":
    _, _, pong = next_frame(relay.stdout, skip_output=False)
check(pong == {"event": "pong"}, "pings are answered over the new session")
check(sup.stdout.read() == b"", "the replaced session is closed")

# Stop: SIGTERM, then SIGKILL; the exit is reported and every file is removed.
relay.stdin.write(message({"op": "stop", "grace": 0.5}))
relay.stdin.flush()
_, _, exited = next_frame(relay.stdout)
check(exited["event"] == "exited" and exited["reason"] == "stopped", "a stop is reported with its reason")
check(relay.wait(timeout=10) == 0 and sup.wait(timeout=10) is not None, "the relay and the supervisor exit")
check(not os.path.exists(ready["run_dir"]), "the run dir is removed")

# The launcher gone while its connection lives (here: the session's stdin closes while this
# process, the session's parent, lives): the kernel ends at once, not after the orphan timeout.
sup, ready = start_supervisor()
sup.stdin.write(message({"op": "arm"}))
sup.stdin.flush()
sup.stdin.close()
check(gone_within(ready["pid"], 2.0), "a launcher gone while its connection lives ends the kernel within 2 s")
sup.wait(timeout=10)
check(not os.path.exists(ready["run_dir"]), "and its files")
