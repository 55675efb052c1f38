"""The Slurm relay (slurm_relay.py) on its own, over pipes (no ssh, no Slurm): the step it runs is
the real supervisor on this machine. A session taken over through attach.py after its connection
went, the launcher gone after that, and a lease run out with nobody attached.

Usage: python slurm_relay_test.py SRC_REMOTE_DIR. Prints "ok: ..." per check; raises on failure.
"The connection's sshd" of the relay's first session is a python in between (the relay's
parent): killed, it is a connection gone with the network; alive, a launcher gone.
"""
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from remote_helpers import *  # noqa: F401,F403 (the sources, frames and checks)

RELAY = b"".join(open(os.path.join(src, *path), "rb").read() for path in (("supervisor", "frames.py"), ("slurm", "slurm_relay.py")))
env = dict(os.environ, JUPYTER_RUNTIME_DIR=tempfile.mkdtemp(prefix="sshpyk-relay-test-"), TMPDIR=tempfile.mkdtemp(prefix="sshpyk-relay-tmp-"))
for made in (env["JUPYTER_RUNTIME_DIR"], env["TMPDIR"]):
    atexit.register(shutil.rmtree, made, True)
# Runs argv[1:] and waits for it: stands for sshd above the relay, and for slurmstepd above the
# supervisor.
WAIT_FOR_ARGV = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
# No Slurm here: the cancel of a job nobody comes back to must fail quietly.
JOB = "0"
start = {"op": "start", "key": "k3y", "signature_scheme": "hmac-sha256", "kernel_name": "python3", "ping_interval": 1, "window": WINDOW, "outage_bound": OUTAGE_BOUND}


def start_relay(orphan_timeout):
    """The relay under a python that stands for the connection's sshd; the step is the
    supervisor, started through the relay as the launcher starts it, under a python that stands
    for slurmstepd on the node (which outlives the relay, as the real one does)."""
    between = subprocess.Popen(
        [sys.executable, "-c", WAIT_FOR_ARGV,
         sys.executable, "-S", "-c", RELAY, JOB, sys.executable, "-c", WAIT_FOR_ARGV,
         sys.executable, "-u", "-c", LOADER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    request = dict(start, orphan_timeout=orphan_timeout)
    between.stdin.write(b"%012d" % len(SUPERVISOR) + SUPERVISOR + message(request))
    between.stdin.flush()
    line = between.stdout.readline().decode().split()
    check(line[:2] == ["sshpyk-slurm", "relay"] and line[3] == sys.executable, "the relay names its socket and python first")
    socket_path = line[2]
    skip_to_marker(between.stdout)
    _, _, ready = next_frame(between.stdout)
    check(ready["event"] == "ready", "the supervisor starts through the relay")
    between.stdin.write(message({"op": "arm"}))
    between.stdin.flush()
    return between, socket_path, ready


def ping(session):
    session.stdin.write(notice({"op": "ping"}))
    session.stdin.flush()
    while True:
        stream, kind, pong = next_frame(session.stdout, skip_output=False)
        if stream == 0 and kind == NOTICE and pong.get("event") == "pong":
            return pong


def child(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return int(f.read().split()[0])


def relay_pid(between):
    """The process the session started: it waits for the relay (its child), then removes the
    relay's dir."""
    return child(between.pid)


def lose_connection(between):
    """The connection goes: its "sshd" dies, then the session's pipes close."""
    relay = relay_pid(between)
    between.send_signal(signal.SIGKILL)
    between.wait()
    between.stdin.close()
    between.stdout.close()
    return relay


between, socket_path, ready = start_relay(30)
check(oct(os.stat(os.path.dirname(socket_path)).st_mode & 0o777) == "0o700", "the relay's socket is in a 0700 dir")
check(ping(between) == {"event": "pong"}, "pings pass through the relay")
# A stream to the kernel's heartbeat: our greeting in, the first of the kernel's out.
between.stdin.write(frame(1, OPEN, b"hb") + frame(1, DATA, ZMTP_GREETING))
between.stdin.flush()
got = b""
while not got:
    stream, kind, payload = next_frame(between.stdout)
    if (stream, kind) == (1, DATA):
        got += payload
relay = lose_connection(between)
check(not gone_within(ready["pid"], 2.0), "a connection lost keeps the kernel")

# A new session, handed over by attach.py as after a reconnection.
session = subprocess.Popen([sys.executable, "-S", "-c", ATTACH, socket_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
skip_to_marker(session.stdout)
_, kind, attached = next_frame(session.stdout)
check(kind == NOTICE and attached["event"] == "attached" and attached["pid"] == ready["pid"], "a new session reaches the same supervisor through the relay")
check(attached["received"]["streams"] == [{"id": 1, "received": len(ZMTP_GREETING), "written": len(ZMTP_GREETING)}], "it says how far it received on the stream it kept")
session.stdin.write(notice({"op": "resume", "received": {"messages": 0, "streams": [{"id": 1, "received": len(got), "written": len(got)}]}}))
session.stdin.flush()
while len(got) < 64:
    stream, kind, payload = next_frame(session.stdout)
    if (stream, kind) == (1, DATA):
        got += payload
check(len(got) == 64 and got[12:16] == b"NULL", "the stream resumes through the relay: the kernel's greeting arrives whole, once")
check(ping(session) == {"event": "pong"}, "pings are answered over the new session")

# The launcher gone (its session closes while its connection, this process, lives): the kernel
# ends at once, the relay after it, and its socket's dir goes.
session.stdin.close()
check(gone_within(ready["pid"], 2.0), "a launcher gone after a re-attach ends the kernel within 2 s")
check(gone_within(relay, 5.0) and not os.path.exists(os.path.dirname(socket_path)), "the relay ends with its step and removes its dir")
session.wait(timeout=10)

# Nobody comes back: the supervisor's lease runs out, the kernel ends, so do the step and relay.
between, socket_path, ready = start_relay(1)
relay = lose_connection(between)
check(gone_within(ready["pid"], 10.0), "a lease run out with nobody attached ends the kernel")
check(gone_within(relay, 15.0) and not os.path.exists(os.path.dirname(socket_path)), "and the relay, which removes its dir")

# The relay itself killed: the process waiting for it removes its dir; the step's stdin ends
# with it, so the supervisor ends the kernel.
between, socket_path, ready = start_relay(30)
relay = relay_pid(between)
os.kill(child(relay), signal.SIGKILL)
check(gone_within(relay, 5.0) and not os.path.exists(os.path.dirname(socket_path)), "a relay killed has its dir removed")
check(gone_within(ready["pid"], 5.0), "and the kernel ends with the step's stdin")
between.wait(timeout=10)
check([n for n in os.listdir(env["TMPDIR"]) if n.startswith("sshpyk-relay-")] == [], "no relay dir is left in TMPDIR")
