"""The remote supervisor on its own, over pipes (no ssh): start, a stream relayed to the kernel,
a session handed over by the attach relay with the streams resumed (nothing lost, nothing twice),
a broken launcher, pings, stop, and a launcher gone for good.

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
start = {"op": "start", "key": "k3y", "signature_scheme": "hmac-sha256", "kernel_name": "python3", "orphan_timeout": 30, "ping_interval": 1, "window": WINDOW, "outage_bound": OUTAGE_BOUND}


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

# The heartbeat echoes what it is sent (after the greeting). Bytes sent on the old session that
# never arrived (here: never written) are resent on the new one from where the supervisor says
# it received; what the kernel answered meanwhile arrives once, on the new session.
sent_before = len(ZMTP_GREETING)
ping_frame = b"\x00\x05hello"  # a ZMTP frame the REP heartbeat device will not see whole yet
sup.stdin.write(frame(1, DATA, ping_frame[:3]))
sup.stdin.flush()

# A new session takes over through the attach relay; the old one is let go, the streams stay.
relay = subprocess.Popen([sys.executable, "-S", "-c", ATTACH, os.path.join(ready["run_dir"], "supervisor.sock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
skip_to_marker(relay.stdout)
_, kind, attached = next_frame(relay.stdout)
check(kind == NOTICE and attached["event"] == "attached" and attached["pid"] == ready["pid"], "the attach relay hands a new session to the supervisor")
streams = {s["id"]: s for s in attached["received"]["streams"]}
check(list(streams) == [1] and streams[1]["received"] == sent_before + 3 and attached["last_open"] == 2, "it says how far it received on every stream it keeps")
left = sup.stdout.read()  # what the old session still held, up to its end
kinds = set()
while left:
    stream, kind, length = HEADER.unpack_from(left)
    kinds.add((stream, kind))
    left = left[HEADER.size + length:]
check(kinds <= {(0, ACK), (0, NOTICE)}, "the replaced session is closed, and got no stream bytes after the attach")
# We (the launcher) received the kernel's greeting: resume from there, and send the rest.
relay.stdin.write(notice({"op": "resume", "received": {"messages": 0, "streams": [{"id": 1, "received": len(got), "written": len(got)}]}}))
relay.stdin.write(frame(1, DATA, ping_frame[3:]))
relay.stdin.write(notice({"op": "ping"}))
relay.stdin.flush()
pong, greeting = None, got
while pong is None or len(greeting) < 64:
    stream, kind, payload = next_frame(relay.stdout, skip_output=False)
    if stream == 1 and kind == DATA:
        greeting += payload
    elif stream == 0 and kind == NOTICE and payload.get("event") == "pong":
        pong = payload
check(pong == {"event": "pong"}, "pings are answered over the new session")
check(len(greeting) == 64 and greeting[12:16] == b"NULL", "the kernel's bytes the old session did not deliver arrive on the new one, once")

# A launcher that sends past its window breaks the protocol: its session is dropped (as if
# lost), the kernel kept for the next one.
relay.stdin.write(frame(1, DATA, b"x" * (1 << 20)) * 5)
relay.stdin.flush()
relay.stdout.read()
check(relay.wait(timeout=10) == 0, "a session that sends past the window is dropped")
relay = subprocess.Popen([sys.executable, "-S", "-c", ATTACH, os.path.join(ready["run_dir"], "supervisor.sock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
skip_to_marker(relay.stdout)
_, _, attached = next_frame(relay.stdout)
check(attached["event"] == "attached" and attached["pid"] == ready["pid"], "and the kernel waits for the next session")
relay.stdin.write(notice({"op": "resume", "received": {"messages": 0, "streams": []}}))
relay.stdin.flush()

# Stop: SIGTERM, then SIGKILL; the exit is reported and every file is removed.
relay.stdin.write(message({"op": "stop", "grace": 0.5}))
relay.stdin.flush()
_, _, exited = next_frame(relay.stdout)
while exited.get("event") == "ready":  # resent: we said we received no message
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

# SIGTERM (Slurm's end of a job, a user's kill): the loop wakes, ends the kernel, removes its files.
sup, ready = start_supervisor()
sup.send_signal(15)
check(gone_within(ready["pid"], 5.0) and sup.wait(timeout=10) is not None, "SIGTERM ends the kernel and the supervisor")
check(not os.path.exists(ready["run_dir"]), "and removes its files")
