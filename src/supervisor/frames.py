# sshpyk remote supervisor, its session: the frames to and from the launcher over the ssh
# session's stdio. Sent ahead of supervisor.py in one source (see src/supervisor/session.rs), so
# it shares supervisor.py's namespace (`Fatal`); ahead of slurm_relay.py too (src/slurm/mod.rs).
# The launcher's side is src/supervisor/protocol.rs, which documents the frames.
import array
import collections
import json
import os
import select
import socket
import struct
import time

MARKER = b"\nsshpyk-frames-2\n"
HEADER = struct.Struct(">IBI")
OFFSET = struct.Struct(">Q")
# MESSAGE: sequenced JSON on stream 0; NOTICE: JSON never resent (pings, output, handshake).
MESSAGE, OPEN, DATA, CLOSE, ACK, NOTICE = range(6)
MAX_PAYLOAD = 1 << 20
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
# How long a closed session's sshd process is watched before we conclude the launcher is gone.
SSHD_WATCH = 0.5


def process_alive(pid):
    """Whether `pid` exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sshd_ancestor(pid):
    """The sshd process of the ssh connection that runs `pid`: the nearest ancestor named sshd
    (login shells usually exec their command, but not all do), else `pid` itself."""
    current = pid
    for _ in range(8):
        try:
            with open("/proc/%d/stat" % current, "rb") as f:
                stat = f.read()
        except OSError:
            return pid
        name = stat[stat.index(b"(") + 1:stat.rindex(b")")]
        if name.startswith(b"sshd"):
            return current
        current = int(stat.rsplit(b")", 1)[1].split()[1])
        if current <= 1:
            return pid
    return pid


def connection_lives(sshd_pid):
    """After a session ended: whether the ssh connection that carried it lives on. Its sshd
    process outliving the session means the master closed only the channel: the launcher is gone.
    When the connection died instead (the network), sshd goes with it."""
    end = time.monotonic() + SSHD_WATCH
    while time.monotonic() < end:
        if not process_alive(sshd_pid):
            return False
        time.sleep(0.05)
    return True



def receive_session(listener):
    """Accepts a session handed over by attach.py on `listener`: (connection, stdin and stdout
    descriptors, the pid its sshd is found from), or None when the hand-over failed. The
    connection stays open while the session is in use: attach.py waits for it to close."""
    conn, _ = listener.accept()
    try:
        fds = array.array("i")
        msg, ancdata, _, _ = conn.recvmsg(64, socket.CMSG_LEN(2 * fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if len(fds) != 2:
            raise OSError("no descriptors")
        return conn, (fds[0], fds[1]), int(msg)
    except (OSError, ValueError):
        conn.close()
        return None


class Link:
    """One launcher session: frames in from `rfd`, frames out to `wfd`, never blocking.

    `sshd_pid` is the sshd process of the ssh connection that carries the session: alive after
    the session closed means only our channel was closed (the launcher is gone)."""

    def __init__(self, rfd, wfd, sshd_pid, closer=None):
        self.rfd, self.wfd, self.sshd_pid, self.closer = rfd, wfd, sshd_pid, closer
        for fd in (rfd, wfd):
            # Bigger pipes to sshd: fewer wake-ups per MB (Linux; best effort).
            try:
                import fcntl

                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except (ImportError, OSError):
                pass
        self.inbuf = bytearray()
        self.read_buffer = memoryview(bytearray(1 << 20))
        self.out = collections.deque()
        self.out_len = 0
        self.dead = False
        # Whether the main loop waits for `wfd` to take more.
        self.watching_out = False

    def fileno(self):
        return self.rfd

    def queue(self, data):
        self.out.append(data)
        self.out_len += len(data)

    def send(self, stream, kind, payload=b""):
        self.queue(HEADER.pack(stream, kind, len(payload)))
        if payload:
            self.queue(payload)

    def notice(self, **msg):
        self.send(0, NOTICE, json.dumps(msg).encode())

    def flush(self):
        """Writes what the pipe takes now."""
        while self.out and not self.dead:
            try:
                n = os.writev(self.wfd, list(self.out)[:64])
            except BlockingIOError:
                return
            except OSError:
                self.dead = True
                return
            self.out_len -= n
            while n:
                head = self.out[0]
                if n >= len(head):
                    n -= len(head)
                    self.out.popleft()
                else:
                    self.out[0] = head[n:]
                    n = 0

    def flush_blocking(self, timeout):
        end = time.monotonic() + timeout
        while self.out and not self.dead and time.monotonic() < end:
            self.flush()
            if self.out:
                select.select([], [self.wfd], [], max(0.0, end - time.monotonic()))

    def read_frames(self):
        """Frames now available as (stream, kind, payload), or None at the end of the session."""
        # Into a buffer kept for it (see `Supervisor.from_kernel`).
        try:
            n = os.readv(self.rfd, [self.read_buffer])
        except BlockingIOError:
            return []
        except OSError:
            n = 0
        if not n:
            return None
        self.inbuf += self.read_buffer[:n]
        return self.buffered_frames()

    def buffered_frames(self):
        """The whole frames in what was read so far, or None for one too big to be ours."""
        frames = []
        while len(self.inbuf) >= HEADER.size:
            stream, kind, length = HEADER.unpack_from(self.inbuf)
            if length > MAX_PAYLOAD:
                return None
            if len(self.inbuf) < HEADER.size + length:
                break
            frames.append((stream, kind, bytes(self.inbuf[HEADER.size:HEADER.size + length])))
            del self.inbuf[:HEADER.size + length]
        return frames

    def close(self):
        for fd in {self.rfd, self.wfd}:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.closer:
            self.closer()


class Violation(Exception):
    """The other side broke the protocol (acked what was never sent, sent past the window)."""


class Outbox:
    """What one side sent on one stream and the other has not acknowledged: the bytes from
    offset `acked` to `sent`, kept to be resent after a lost session (protocol.rs, Outbox)."""

    def __init__(self):
        self.acked = 0
        self.sent = 0
        self.chunks = collections.deque()

    def in_flight(self):
        return self.sent - self.acked

    def push(self, chunk):
        self.chunks.append(chunk)
        self.sent += len(chunk)

    def ack(self, offset):
        if offset < self.acked or offset > self.sent:
            raise Violation("an ack for offset %d of a stream acknowledged to %d and sent to %d" % (offset, self.acked, self.sent))
        drop = offset - self.acked
        while drop:
            head = self.chunks[0]
            if len(head) <= drop:
                drop -= len(head)
                self.chunks.popleft()
            else:
                self.chunks[0] = head[drop:]
                drop = 0
        self.acked = offset

    def since(self, offset):
        """The chunks the other side lacks when it received up to `offset`."""
        if offset < self.acked or offset > self.sent:
            raise Violation("a resume from offset %d of a stream acknowledged to %d and sent to %d" % (offset, self.acked, self.sent))
        skip, out = offset - self.acked, []
        for chunk in self.chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
            else:
                out.append(chunk[skip:])
                skip = 0
        return out


class Stream:
    """One client connection, relayed to a kernel socket; it outlives sessions."""

    def __init__(self, sid, sock, channel):
        self.sid, self.sock, self.channel = sid, sock, channel
        # Read from the kernel and not sent yet (no session, or past the window).
        self.pending = bytearray()
        self.out = Outbox()
        # From the launcher, not written to the kernel yet.
        self.to_kernel = bytearray()
        self.received = 0
        self.written = 0
        # The `written` the launcher was last told of.
        self.ack_sent = 0
        # The kernel closed its end: CLOSE follows the pending bytes; then we wait for the echo.
        self.kernel_closed = False
        self.close_sent = False
        self.mask = 0

    def buffered(self):
        return len(self.pending) + self.out.in_flight()


def read_exactly(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_start(fd):
    """The first frame, read blocking: the start request, and its length (it counts as
    received on stream 0)."""
    stream, kind, length = HEADER.unpack(read_exactly(fd, HEADER.size))
    if stream != 0 or kind != MESSAGE or length > MAX_PAYLOAD:
        raise Fatal("protocol", "the launcher did not start with a start request")
    request = json.loads(read_exactly(fd, length))
    if request.get("op") != "start":
        raise Fatal("protocol", "the launcher did not start with a start request")
    return request, length
