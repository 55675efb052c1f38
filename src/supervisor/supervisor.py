# sshpyk remote supervisor: starts one Jupyter kernel on this host, carries every client
# connection to it, and guards it.
#
# Run by the remote python from the ssh session's stdin (never a command line), after the files
# that define what it uses (src/supervisor/session.rs): cloud.py (cloud mounts), frames.py (the
# session's frames, `Link`, `Stream`) and kernel.py (the kernel's start). The launcher's
# side is src/supervisor/protocol.rs, which documents the frames. In short: after MARKER, both
# directions are frames `u32 stream | u8 kind | u32 length | payload`; stream 0 carries JSON
# requests ({"op": ...}) and reports ({"event": ...}); other streams are ZMQ connections that
# the launcher opens and this loop relays to the kernel's sockets, each direction bounded by a
# window of unacknowledged bytes.
#
# Streams outlive sessions: each side keeps what it sent until the other acknowledges it, and a
# new session resumes every stream where it stopped (protocol.rs documents the handshake).
# While no session is up, the kernel's sockets are still read (the kernel never blocks, and ZMQ
# never drops at its high-water mark), up to the outage bound per kernel; past it, the stream
# that holds the most is closed and the launcher told ("dropped").
#
# Lifetime. The session is the lease, renewed by every frame (the launcher pings). When the
# session ends:
#   - before "arm" (the launcher gave up while starting): end the kernel at once;
#   - while the ssh connection that carried it lives (its sshd process is still there): the
#     master closed only our channel, so the launcher is gone (SIGKILL, crash): end the kernel;
#   - with the connection gone (network): wait `orphan_timeout` for the launcher to come back
#     through supervisor.sock in the run dir (a relay hands over its session's stdio).
# On a Slurm node our session is the job step's stdio, held by slurm_relay.py on the login node:
# it closes it when the launcher is gone, keeps it through a network loss, and sends
# "relayed_attach" when a new session takes over.
# Ending the kernel ends its process group and every process it started, including those that
# left the group (we are a child subreaper, so orphans come back to us); then every file we made
# is removed and the exit is reported.
import collections
import json
import os
import select
import selectors
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time

CHUNK = 256 << 10
# Past this much queued for the session's pipe, stop framing the kernel's bytes until it drains.
OUT_LIMIT = 8 << 20
# How often orphans that came back to us and exited are collected.
REAP_EVERY = 5.0
# After SIGTERM, how long a kernel the launcher has left gets before SIGKILL.
GONE_GRACE = 0.5
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class Fatal(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def prctl(option, value):
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except Exception:
        return False


def parent_map():
    """pid -> ppid for every process we can see (Linux /proc; empty elsewhere)."""
    parents = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return parents
    for name in names:
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    parents[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def descendants(root):
    children = collections.defaultdict(list)
    for pid, ppid in parent_map().items():
        children[ppid].append(pid)
    found, todo = [], list(children[root])
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children[pid])
    return found


def launcher_gave_up(wait=0.01):
    """Whether stdin became readable (EOF: nothing else is sent before "ready") within `wait`."""
    return bool(select.select([0], [], [], wait)[0])


def connect(endpoint):
    """A non-blocking socket connected to a Unix socket path or a loopback TCP port, or None."""
    family, address = (socket.AF_UNIX, endpoint) if isinstance(endpoint, str) else (socket.AF_INET, ("127.0.0.1", endpoint))
    sock = socket.socket(family)
    sock.settimeout(2)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def listening(endpoint):
    sock = connect(endpoint)
    if sock:
        sock.close()
    return sock is not None


class Supervisor:
    def __init__(self, start, start_length, link):
        self.start_request = start
        self.orphan_timeout = float(start["orphan_timeout"])
        self.ping_interval = float(start["ping_interval"])
        global UPLOAD_WAIT  # cloud.py's, in this same source
        UPLOAD_WAIT = float(start.get("upload_wait", UPLOAD_WAIT))
        self.window = int(start["window"])
        self.ack_batch = self.window // 8
        self.outage_bound = int(start["outage_bound"])
        self.link = link
        # Until the launcher's "resume" after an attach, nothing sequenced is sent.
        self.resumed = True
        # Stream 0: request bytes received (the start request first), reports kept until acked.
        self.requests_received = start_length
        self.reports = Outbox()
        self.last_open = 0
        self.run_dir = None
        self.kernel = None
        self.endpoints = {}
        self.armed = False
        # Why we ended the kernel, if we did: "orphaned", "launcher_gone" or "stopped".
        self.reason = None
        self.kill_at = None
        self.expires = None
        self.next_reap = 0.0
        self.tail = []
        self.partial_line = b""
        self.streams = {}
        self.recv_buffer = memoryview(bytearray(CHUNK))
        self.sel = selectors.DefaultSelector()
        self.exit_r, self.exit_w = os.pipe()
        # Cloud mounts (cloud.py, sent ahead of this file); made once the run dir exists.
        self.cloud = None

    # ------------------------------------------------------------------ start

    def start(self):
        if not have_module("jupyter_client"):
            raise Fatal("no_jupyter_client", "remote python %s cannot import jupyter_client; install it there (pip install jupyter_client ipykernel)" % sys.executable)
        spec = find_kernelspec(self.start_request["kernel_name"])
        cwd = kernel_cwd(self.start_request.get("cwd"))
        self.run_dir = make_run_dir()
        self.cloud = CloudMounts(self.run_dir)
        # Before the kernel, so that its first cell sees them.
        for mount in self.start_request.get("cloud_mounts", []):
            try:
                self.cloud.mount(mount)
            except CloudError as e:
                raise Fatal("cloud_" + e.kind, "cannot mount %s at %s: %s" % (mount.get("label", mount["source"]), mount["remote"], e))
        transport = pick_transport(kernel_argv(spec, ""))
        connection_file, self.endpoints = write_connection_file(self.run_dir, self.start_request, transport)
        argv = kernel_argv(spec, connection_file)
        env = dict(os.environ)
        env.update({k: string.Template(v).safe_substitute(os.environ) for k, v in spec.get("env", {}).items()})
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        # The user's variables win over everything but our own (taken literally: no expansion).
        env.update(self.start_request.get("env") or {})
        # ipykernel then watches its parent (us) and exits if we vanish.
        env["JPY_PARENT_PID"] = str(os.getpid())
        # Orphans of the kernel's tree (double-forked daemons) come back to us, so that we can
        # end them with the kernel.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            self.kernel = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=cwd, preexec_fn=prepare_kernel,
            )
        except OSError as e:
            raise Fatal("kernel_start", "cannot start remote kernel %s: %s" % (argv[0], e.strerror))
        os.set_blocking(self.kernel.stdout.fileno(), False)
        threading.Thread(target=self.wait_kernel, daemon=True).start()
        self.wait_listening(self.endpoints.values())
        return {
            "pid": self.kernel.pid, "hostname": socket.gethostname(), "transport": transport,
            "endpoints": self.endpoints, "run_dir": self.run_dir, "python": sys.executable,
            "interrupt_mode": "message" if spec.get("interrupt_mode") == "message" else "signal",
            "language": spec.get("language", ""),
        }

    def wait_kernel(self):
        self.kernel.wait()
        os.write(self.exit_w, b"x")

    def wait_listening(self, endpoints):
        # Report ready only once the kernel listens: a stream to a closed endpoint would fail.
        # The launcher sends nothing before "ready", so a readable stdin means it gave up.
        pending = set(endpoints)
        while pending and self.kernel.poll() is None:
            self.pump_output()
            pending = {e for e in pending if not listening(e)}
            if pending and launcher_gave_up():
                raise Fatal("abandoned", "the launcher gave up before the kernel listened")

    # ------------------------------------------------------------------ the kernel's end

    def signal_all(self, sig):
        """`sig` to the kernel's process group and every process it started (not our rclone
        mounts: they are unmounted in order once the kernel is gone)."""
        if not self.kernel:
            return
        try:
            os.killpg(self.kernel.pid, sig)
        except OSError:
            pass
        spared = self.cloud.pids() if self.cloud else set()
        for root in list(spared):
            spared.update(descendants(root))
        for pid in descendants(os.getpid()):
            if pid in spared:
                continue
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def stop_kernel(self, reason, grace):
        """SIGTERM now, SIGKILL after `grace` seconds (the main loop keeps that appointment)."""
        if self.kernel is None or self.kernel.poll() is not None:
            return
        self.reason = self.reason or reason
        self.signal_all(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    def reap_adopted(self):
        """Collects orphans that came back to us and exited (never the kernel: its waiter does)."""
        ours = self.cloud.pids() if self.cloud else set()
        for pid, ppid in parent_map().items():
            if ppid == os.getpid() and pid != self.kernel.pid and pid not in ours and not process_alive(pid):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except OSError:
                    pass

    def cleanup(self):
        if self.kernel:
            # Whatever the kernel started goes with it.
            self.signal_all(signal.SIGKILL)
            if self.kernel.poll() is None:
                self.kernel.wait()
            self.reap_adopted()
        if self.cloud:
            self.cloud.unmount_all()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def exit_report(self):
        code = self.kernel.returncode
        return {"event": "exited", "status": code if code >= 0 else None, "signal": -code if code < 0 else None, "tail": self.tail[-5:], "reason": self.reason}

    # ------------------------------------------------------------------ the kernel's output

    def pump_output(self):
        """Forwards what the kernel printed, line by line (best effort: dropped, never queued
        without bound, while the launcher is slow or away); keeps the last lines for the exit
        report. Returns False at the end of its output."""
        while True:
            try:
                data = os.read(self.kernel.stdout.fileno(), 65536)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                if self.partial_line:
                    self.output_line(self.partial_line)
                    self.partial_line = b""
                return False
            *lines, self.partial_line = (self.partial_line + data).split(b"\n")
            for line in lines:
                self.output_line(line + b"\n")
            if len(self.partial_line) > 3000:
                self.output_line(self.partial_line)
                self.partial_line = b""

    def output_line(self, line):
        text = line.decode(errors="replace")
        self.tail = (self.tail + [text.rstrip()])[-20:]
        if self.can_send():
            self.link.notice(event="output", text=text[:3000])

    # ------------------------------------------------------------------ stream 0

    def can_send(self):
        return self.link is not None and self.resumed and self.link.out_len < OUT_LIMIT

    def message(self, **msg):
        """A report the launcher must get: kept until acknowledged, resent after a lost session."""
        payload = json.dumps(msg).encode()
        self.reports.push(payload)
        if self.link and self.resumed:
            self.link.send(0, MESSAGE, payload)

    def notice(self, **msg):
        if self.link:
            self.link.notice(**msg)

    # ------------------------------------------------------------------ streams

    def open_stream(self, sid, channel):
        self.last_open = max(self.last_open, sid)
        endpoint = self.endpoints.get(channel)
        sock = connect(endpoint) if endpoint is not None else None
        if sock is None:
            # Told now, or (not listed at the next resume) then.
            if self.link and self.resumed:
                self.link.send(sid, CLOSE)
            return
        self.streams[sid] = Stream(sid, sock, channel)

    def close_stream(self, stream):
        """Forgets the stream and closes its kernel socket."""
        self.streams.pop(stream.sid, None)
        self.close_socket(stream)

    def close_socket(self, stream):
        if stream.sock is None:
            return
        if stream.mask:
            self.sel.unregister(stream.sock)
            stream.mask = 0
        stream.sock.close()
        stream.sock = None

    def close_all_streams(self):
        for stream in list(self.streams.values()):
            self.close_stream(stream)

    def buffered(self):
        return sum(stream.buffered() for stream in self.streams.values())

    def from_kernel(self, stream):
        # Into a buffer kept for it: a fresh 256 KiB one per call would cost an mmap, an mremap
        # and a munmap for every message.
        try:
            n = stream.sock.recv_into(self.recv_buffer, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            stream.kernel_closed = True
            self.close_socket(stream)
        else:
            stream.pending += self.recv_buffer[:n]
        self.pump(stream)

    def pump(self, stream):
        """Sends what the window and the session's pipe take of what the kernel sent; then the
        CLOSE, once the kernel's end closed and everything before it went."""
        while stream.pending and self.can_send() and stream.out.in_flight() < self.window:
            n = min(len(stream.pending), self.window - stream.out.in_flight(), MAX_PAYLOAD)
            chunk = bytes(stream.pending[:n])
            del stream.pending[:n]
            stream.out.push(chunk)
            self.link.send(stream.sid, DATA, chunk)
        if stream.kernel_closed and not stream.pending and not stream.close_sent and self.link and self.resumed:
            stream.close_sent = True
            self.link.send(stream.sid, CLOSE)

    def to_kernel(self, stream):
        try:
            n = stream.sock.send(stream.to_kernel)
        except BlockingIOError:
            return
        except OSError:
            stream.to_kernel.clear()
            stream.kernel_closed = True
            self.close_socket(stream)
            self.pump(stream)
            return
        del stream.to_kernel[:n]
        stream.written += n
        # Acks go in batches, not per message: a frame back over ssh for every small message
        # would double the packets (and wake-ups) of a request/reply exchange.
        if stream.written - stream.ack_sent >= self.ack_batch and self.link and self.resumed:
            self.link.send(stream.sid, ACK, OFFSET.pack(stream.written))
            stream.ack_sent = stream.written

    def update_interest(self):
        """Registers each stream for what it can do now: read while the kernel's bytes kept
        stay under the outage bound, write while it has bytes for the kernel."""
        room = self.buffered() < self.outage_bound
        for stream in self.streams.values():
            if stream.sock is None:
                continue
            mask = (selectors.EVENT_READ if room else 0) | (selectors.EVENT_WRITE if stream.to_kernel else 0)
            if mask == stream.mask:
                continue
            if not mask:
                self.sel.unregister(stream.sock)
            elif not stream.mask:
                self.sel.register(stream.sock, mask, stream)
            else:
                self.sel.modify(stream.sock, mask, stream)
            stream.mask = mask

    def enforce_outage_bound(self):
        """While no session takes the kernel's bytes, past the bound the stream that holds the
        most is closed (its client reconnects) and the launcher is told how much was lost."""
        if (self.link and self.resumed) or self.buffered() < self.outage_bound:
            return
        biggest = max(self.streams.values(), key=Stream.buffered)
        dropped = biggest.buffered()
        self.close_stream(biggest)
        self.message(event="dropped", channel=biggest.channel, bytes=dropped)

    # ------------------------------------------------------------------ the launcher

    def handle_frame(self, sid, kind, payload):
        if kind == MESSAGE:
            self.requests_received += len(payload)
            self.link.send(0, ACK, OFFSET.pack(self.requests_received))
            self.handle_request(json.loads(payload))
            return
        if kind == NOTICE:
            self.handle_notice(json.loads(payload))
            return
        if sid == 0 and kind == ACK:
            self.reports.ack(OFFSET.unpack(payload)[0])
            return
        stream = self.streams.get(sid)
        if kind == OPEN:
            if stream:
                self.close_stream(stream)
            self.open_stream(sid, payload.decode())
        elif stream is None:
            return  # a stream we forgot; nothing is owed
        elif kind == DATA:
            stream.received += len(payload)
            if stream.received > stream.ack_sent + self.window:
                raise Violation("data past the window on stream %d" % sid)
            if stream.sock is None:
                return  # the kernel's end closed: nowhere to write
            stream.to_kernel += payload
            # Straight on: waiting for the next turn of the loop would cost a select per message.
            self.to_kernel(stream)
        elif kind == CLOSE:
            # Our own CLOSE answered, or the launcher's client gone: answer it, forget it.
            if not stream.close_sent:
                self.link.send(sid, CLOSE)
            self.close_stream(stream)
        elif kind == ACK:
            stream.out.ack(OFFSET.unpack(payload)[0])
            self.pump(stream)

    def handle_notice(self, notice):
        op = notice.get("op")
        if op == "ping":
            self.notice(event="pong")
        elif op == "resume":
            self.resume(notice["received"])
        elif op == "relayed_attach":
            # The Slurm relay on the login node took a new session in place of a lost one, on
            # the same pipes: what we sent since is discarded by the relay until "attached".
            self.announce_attached()

    def handle_request(self, request):
        op = request.get("op")
        if op == "arm":
            self.armed = True
        elif op == "signal":
            try:
                os.killpg(self.kernel.pid, getattr(signal, request["signal"]))
            except (OSError, AttributeError, KeyError):
                pass
        elif op == "stop":
            self.stop_kernel("stopped", float(request.get("grace", 0)))
        elif op == "mount_cloud":
            self.cloud.submit(request["id"], "mount", request["mount"])
        elif op == "unmount_cloud":
            self.cloud.submit(request["id"], "unmount", request["remote"])
        elif op == "cloud_status":
            self.report_cloud(request["id"], None)

    def report_cloud(self, request_id, error):
        self.message(event="cloud", id=request_id, error=error, mounts=self.cloud.states())

    def attach(self, listener):
        """A relay hands over the stdio of a new session (after a reconnection)."""
        received = receive_session(listener)
        if received is None:
            return
        conn, fds, sshd_pid = received
        self.drop_link()
        for fd in fds:
            os.set_blocking(fd, False)
        self.link = Link(fds[0], fds[1], sshd_ancestor(sshd_pid), closer=conn.close)
        self.link.queue(MARKER)
        self.announce_attached()
        self.sel.register(self.link, selectors.EVENT_READ, "link")
        self.expires = time.monotonic() + self.orphan_timeout + self.ping_interval

    def announce_attached(self):
        """Our half of the resume handshake: how far we received on every stream. Nothing
        sequenced goes out until the launcher's half ("resume") says how far it did."""
        self.resumed = False
        streams = [{"id": s.sid, "received": s.received, "written": s.written} for s in self.streams.values()]
        self.notice(event="attached", pid=self.kernel.pid, last_open=self.last_open, received={"messages": self.requests_received, "streams": streams})

    def resume(self, theirs):
        """The launcher's half: forget what it wrote out, resend what it lacks."""
        self.reports.ack(theirs["messages"])
        for payload in self.reports.since(theirs["messages"]):
            self.link.send(0, MESSAGE, payload)
        known = {s["id"]: s for s in theirs["streams"]}
        for stream in list(self.streams.values()):
            at = known.get(stream.sid)
            if at is None:
                # It forgot the stream: it heard our CLOSE, or its client is gone and it heard
                # our answer.
                self.close_stream(stream)
                continue
            stream.out.ack(at["written"])
            for chunk in stream.out.since(at["received"]):
                self.link.send(stream.sid, DATA, chunk)
            # Our "attached" told it how far we wrote out: that is an ack.
            stream.ack_sent = stream.written
            if stream.close_sent:
                self.link.send(stream.sid, CLOSE)
        self.resumed = True
        for stream in list(self.streams.values()):
            self.pump(stream)

    def drop_link(self):
        """The current session is over; the streams stay for the next one."""
        if self.link:
            self.sel.unregister(self.link)
            if self.link.watching_out:
                self.sel.unregister(self.link.wfd)
            self.link.close()
            self.link = None

    def link_closed(self):
        sshd_pid = self.link.sshd_pid
        self.drop_link()
        if not self.armed:
            self.stop_kernel("launcher_gone", 0)
            return
        if connection_lives(sshd_pid):
            self.stop_kernel("launcher_gone", GONE_GRACE)
        # Else the network: the lease keeps the kernel for the launcher to return.

    # ------------------------------------------------------------------ the loop

    def serve(self):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(os.path.join(self.run_dir, "supervisor.sock"))
        listener.listen(4)
        self.sel.register(listener, selectors.EVENT_READ, "attach")
        self.sel.register(self.exit_r, selectors.EVENT_READ, "exit")
        self.sel.register(self.kernel.stdout, selectors.EVENT_READ, "output")
        self.sel.register(self.link, selectors.EVENT_READ, "link")
        self.sel.register(self.cloud.wake_r, selectors.EVENT_READ, "cloud")
        self.sel.register(self.term_r, selectors.EVENT_READ, "term")
        # The launcher pings every `ping_interval`; a silent or closed session is a lost launcher
        # (a dead link never shows as EOF here). One interval of grace, so that a drop shorter
        # than the orphan timeout never ends the kernel.
        lease = self.orphan_timeout + self.ping_interval
        self.expires = time.monotonic() + lease
        while True:
            self.update_interest()
            link = self.link
            if link and bool(link.out) != link.watching_out:
                if link.out:
                    self.sel.register(link.wfd, selectors.EVENT_WRITE, "link-out")
                else:
                    self.sel.unregister(link.wfd)
                link.watching_out = bool(link.out)
            now = time.monotonic()
            deadlines = [d for d in (self.kill_at, self.expires if self.armed else None) if d is not None]
            timeout = max(0.0, min(deadlines) - now) if deadlines else REAP_EVERY
            for key, events in self.sel.select(min(timeout, REAP_EVERY)):
                what = key.data
                if what == "exit":
                    self.finish()
                    return
                if what == "term":
                    return
                if what == "output":
                    if not self.pump_output():
                        self.sel.unregister(self.kernel.stdout)
                elif what == "attach":
                    self.attach(listener)
                elif what == "cloud":
                    for request_id, error in self.cloud.results():
                        self.report_cloud(request_id, error)
                    if self.link:
                        self.link.flush()
                elif what == "link-out":
                    if self.link:
                        self.link.flush()
                elif what == "link":
                    frames = self.link.read_frames() if self.link else []
                    if frames is None:
                        self.link_closed()
                        continue
                    self.expires = time.monotonic() + lease
                    try:
                        for frame in frames:
                            self.handle_frame(*frame)
                    except (Violation, ValueError, KeyError, TypeError) as e:
                        # A launcher that breaks the protocol: as if its session were lost.
                        print("sshpyk supervisor: the launcher broke the protocol (%s); dropping its session" % e, file=sys.stderr, flush=True)
                        self.drop_link()
                        continue
                    if self.link:
                        self.link.flush()
                elif isinstance(what, Stream) and self.streams.get(what.sid) is what and what.sock:
                    if events & selectors.EVENT_WRITE:
                        self.to_kernel(what)
                    if events & selectors.EVENT_READ and what.sock:
                        self.from_kernel(what)
                    if self.link:
                        self.link.flush()
            self.enforce_outage_bound()
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                self.signal_all(signal.SIGKILL)
            if now >= self.next_reap:
                # A /proc walk: not on every turn of a loop that relays every message.
                self.next_reap = now + REAP_EVERY
                self.reap_adopted()
            if self.armed and now >= self.expires:
                # Silent for the whole lease (a dead link shows no end of file): orphaned.
                self.expires = float("inf")
                self.drop_link()
                self.stop_kernel("orphaned", 0)

    def finish(self):
        """The kernel exited: its last words, cleanup, the report. Cleanup may wait for cloud
        uploads (cloud.py, UPLOAD_WAIT): meanwhile pings are answered, so that the launcher
        does not take the wait for a lost connection."""
        self.kernel.wait()
        self.pump_output()
        self.close_all_streams()
        done = threading.Event()
        threading.Thread(target=lambda: (self.cleanup(), done.set()), daemon=True).start()
        while not done.wait(0.1):
            self.answer_pings()
        self.message(**self.exit_report())
        if self.link:
            self.link.flush_blocking(2.0)

    def answer_pings(self):
        """While finishing: the session's pings are answered, everything else is left."""
        if not self.link or not select.select([self.link.rfd], [], [], 0)[0]:
            return
        frames = self.link.read_frames()
        if frames is None:
            self.drop_link()
            return
        for _, kind, payload in frames:
            if kind == NOTICE and json.loads(payload).get("op") == "ping":
                self.notice(event="pong")
        self.link.flush()


def main():
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    link = Link(0, 1, sshd_ancestor(os.getppid()))
    os.write(1, MARKER)
    try:
        start, start_length = read_start(0)
    except (EOFError, ValueError, Fatal):
        return
    sup = Supervisor(start, start_length, link)
    # SIGTERM only wakes the loop (which then returns, and cleanup follows): the handler runs
    # between two bytecodes of the main thread, which may hold a lock that cleanup takes (the
    # cloud mounts' lock, around a Popen). Before the loop runs, the byte waits for it.
    sup.term_r, term_w = os.pipe()
    os.set_blocking(term_w, False)
    signal.signal(signal.SIGTERM, lambda *_: os.write(term_w, b"x"))
    try:
        ready = sup.start()
    except Exception as e:
        # Whatever went wrong, nothing stays behind (the run dir holds the key).
        sup.cleanup()
        kind, message = (e.kind, str(e)) if isinstance(e, Fatal) else ("internal", "remote supervisor failed: %s: %s" % (type(e).__name__, e))
        sup.message(event="error", kind=kind, message=message)
        link.flush_blocking(2.0)
        return
    if sup.kernel.poll() is not None:
        sup.finish()
        return
    sup.message(event="ready", **ready)
    os.set_blocking(0, False)
    os.set_blocking(1, False)
    link.flush()
    try:
        sup.serve()
    finally:
        sup.cleanup()


main()
