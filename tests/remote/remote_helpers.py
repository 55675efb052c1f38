"""What the tests of the remote side share: the sources as the launcher sends them, the frames,
checks. `src` is the src dir given as the test's first argument."""
import json
import os
import struct
import sys
import time

src = sys.argv[1]
# As the launcher sends it (src/supervisor/session.rs): the definitions ahead of the supervisor.
SUPERVISOR = b"".join(open(os.path.join(src, "supervisor", name), "rb").read() for name in ("cloud.py", "frames.py", "kernel.py", "supervisor.py"))
LOADER = open(os.path.join(src, "supervisor", "loader.py")).read()
ATTACH = open(os.path.join(src, "supervisor", "attach.py")).read()
MARKER = b"sshpyk-frames-2\n"
HEADER = struct.Struct(">IBI")
OFFSET = struct.Struct(">Q")
MESSAGE, OPEN, DATA, CLOSE, ACK, NOTICE = range(6)
# What the launcher sends in its start request (src/supervisor/protocol.rs).
WINDOW = 4 << 20
OUTAGE_BOUND = 64 << 20
# The first bytes a ZMTP 3 peer sends: signature, then the major version.
ZMTP_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def frame(stream, kind, payload=b""):
    return HEADER.pack(stream, kind, len(payload)) + payload


def message(obj):
    return frame(0, MESSAGE, json.dumps(obj).encode())


def notice(obj):
    return frame(0, NOTICE, json.dumps(obj).encode())


def read_exactly(f, n):
    data = f.read(n)
    if len(data) != n:
        raise AssertionError("the supervisor closed its stdout")
    return data


def skip_to_marker(f):
    seen = b""
    while not seen.endswith(MARKER):
        seen += read_exactly(f, 1)


def next_frame(f, skip_output=True):
    """The next frame, JSON decoded on stream 0; by default without the kernel's output, pongs
    and acks of stream 0."""
    while True:
        stream, kind, length = HEADER.unpack(read_exactly(f, HEADER.size))
        payload = read_exactly(f, length)
        if stream == 0 and kind in (MESSAGE, NOTICE):
            msg = json.loads(payload)
            if skip_output and msg.get("event") in ("output", "pong"):
                continue
            return stream, kind, msg
        if skip_output and stream == 0 and kind == ACK:
            continue
        return stream, kind, payload


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def gone_within(pid, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False
